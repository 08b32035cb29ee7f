"""What --enable-deterministic-inference buys and costs, in one run.

    python benchmarks/bench_deterministic.py                     # default model (GGUF Q4_1 blocks), bf16
    python benchmarks/bench_deterministic.py --quantization none # dense bf16 weights

For each setting (flag off / on) and algorithm (plain, NGRAM, DSPARK): every prompt alone, then all of
them in one batch (continuous batching, chunked prefill of 32 tokens), then all of them again over the
radix cache they left. Prints the requests whose greedy tokens differ from the same request alone in the
plain engine of that setting, and decode tokens/s alone (concurrency 1) and batched.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "prompts"
ALGORITHMS = {"plain": None, "NGRAM": "NGRAM", "DSPARK": "DSPARK"}


def load_prompts(n: int) -> list[str]:
    """n prompts alternating code (mbpp) and chat (arena-hard) first turns."""
    sets = []
    for name in ("mbpp.jsonl", "arena-hard-v2.jsonl"):
        with open(DATA / name) as f:
            sets.append([json.loads(line)["turns"][0][:600] for line in f if line.strip()])
    return [sets[i % 2][i // 2] for i in range(n)]


@dataclass
class Outcome:
    alone: list[list[int]]
    batched: list[list[int]]
    cached: list[list[int]]
    alone_tok_s: float
    batched_tok_s: float


def run(engine, prompts: list[str], new_tokens: int) -> Outcome:
    sp = {"temperature": 0, "max_new_tokens": new_tokens}
    engine.generate(prompts[0], sp)  # warm-up (kernels, allocator)
    alone, tokens, start = [], 0, time.perf_counter()
    for p in prompts:
        engine.flush_cache()
        out = engine.generate(p, sp)
        alone.append(out["output_ids"])
        tokens += len(out["output_ids"])
    alone_rate = tokens / (time.perf_counter() - start)
    engine.flush_cache()
    start = time.perf_counter()
    batched = [o["output_ids"] for o in engine.generate(prompts, [sp] * len(prompts))]
    batched_rate = sum(map(len, batched)) / (time.perf_counter() - start)
    cached = [o["output_ids"] for o in engine.generate(prompts[::-1], [sp] * len(prompts))][::-1]
    return Outcome(alone, batched, cached, alone_rate, batched_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--algorithms", default="plain,NGRAM,DSPARK")
    args = parser.parse_args()

    from sglang_dspark.entrypoints.engine import Engine

    prompts = load_prompts(args.num_prompts)
    header = "| deterministic | algorithm | mismatched alone / batched / cached | tok/s alone"
    print(f"{header} | tok/s batch {len(prompts)} |")
    print("|---|---|---|---|---|")
    for deterministic in (False, True):
        reference = None
        for name in args.algorithms.split(","):
            engine = Engine(
                quantization=args.quantization,
                speculative_algorithm=ALGORITHMS[name],
                enable_deterministic_inference=deterministic,
                chunked_prefill_size=32,
                max_prefill_tokens=64,
                log_level="warning",
            )
            out = run(engine, prompts, args.new_tokens)
            engine.shutdown()
            reference = reference or out.alone
            diff = [sum(a != r for a, r in zip(ids, reference)) for ids in (out.alone, out.batched, out.cached)]
            print(
                f"| {'on' if deterministic else 'off'} | {name} | {diff[0]} / {diff[1]} / {diff[2]} "
                f"| {out.alone_tok_s:.1f} | {out.batched_tok_s:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
