"""Speculative decoding vs plain decoding, in one run: tokens/s, tau, conditional acceptance, verify budget.

    python benchmarks/bench_spec.py                                  # NGRAM and DSPARK vs none: code, chat, json
    python benchmarks/bench_spec.py --algorithms NGRAM --workloads json --concurrency 1,4
    python benchmarks/bench_spec.py --algorithms NGRAM,NGRAM:fixed,NGRAM:threshold   # verify modes
    python benchmarks/bench_spec.py --algorithms NGRAM,NGRAM:raw   # without the online calibration
    python benchmarks/bench_spec.py --algorithms DSPARK,DSPARK:fullvocab   # with / without the draft vocabulary
    python benchmarks/bench_spec.py --algorithms DSPARK,DSPARK:drafter=runs/x/dspark/drafter   # two drafters
    python benchmarks/bench_spec.py --algorithms DSPARK,DSPARK:off=gate,DSPARK:set=verify_mode=fixed   # SpecConfig
    python benchmarks/bench_spec.py --algorithms SELF,SELF:layers=20,SELF:layers=20:alone   # self-drafting
    python benchmarks/bench_spec.py --logprobs 5   # every request returns its logprobs and the top 5
    python benchmarks/bench_spec.py --workloads multiturn,longctx   # per turn and per context length
    python benchmarks/bench_spec.py --model qwen-coder --workloads code,json   # another target (benchmarks/targets.py)

Workloads (the first --num-prompts of each, at least --min-waves groups of c at concurrency c (48 prompts at
16 by default: one group of 16 decays as its requests finish, too short a level to measure),
chat-formatted, greedy, --max-new-tokens): ``code`` = mbpp,
``chat`` = arena-hard-v2 (prompts up to 3000 characters), ``json`` = JSON-schema tasks from the
JSONSchemaBench subset (the prompt asks for an object following the schema, and the request carries it
as ``json_schema``); these three run by default. ``multiturn`` = two user turns per prompt (its rows
``multiturn turn 1`` and ``multiturn turn 2``): the repository's prompt sets hold one turn, so the first comes from
mbpp, gsm8k and arena-hard-v2 in turn and the second is a fixed instruction to shorten the answer
(benchmarks/workload_prompts.py); turn 2's chat carries the model's own turn-1 answer and runs right after it, on
top of its cached KV (no flush between the turns). ``longctx`` = the start of a Python standard-library module's
source with an instruction to explain it, one row per prompt length (``longctx 2k``, ``4k``, ``6k``: at most
2048, 4096, 6144 tokens, chat template included; 16 prompts at most); their progress lines also give the mean
prompt tokens per request and the share of them the radix cache held. Each concurrency level c sends the
prompts in groups of c requests that run together (c in flight); `--repeats N` runs every level N times, the
engines taking turns each time, and pools them.
Every algorithm runs on its own Engine over the same prompts; the engines stay alive together and take
turns level by level, so that drift of a busy machine hits each alike. The speed-up column divides by plain
decoding at the same workload and level. The radix cache is flushed before every level (the levels repeat the same
prompts, and NGRAM would draft the earlier level's cached outputs). Entries that differ only in SpecConfig
(``off=`` / ``set=``) share the engine of the first of them, each with its own speculative worker (the same SPS
table) swapped in for its turns: one model in memory, the same machine state for every variant.

``--model`` picks the target (default SmolLM2-135M-Instruct, qwen-coder, gemma3: benchmarks/targets.py). DSPARK
needs a drafter for the target: the default --algorithms skip it, with a note, on a target that ships none; a
DSPARK entry named in --algorithms is an error there unless it names its drafter (DSPARK:drafter=DIR).

Columns: tok/s = generated tokens / wall time of the level (prefill included: the JSON prompts carry the
schema); TPOT = mean time per output token after the first (e2e latency - first-token latency, per request),
decode speed-up = plain decoding's TPOT / this one (what speculation changes); tau = tokens committed per
verify round (bonus included); cond. acceptance@k = P(draft k accepted | drafts 1..k-1 accepted, draft k
verified); verify budget = mean drafts verified per request per round (what the confidence scheduler chose).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from llama_cpp_baseline import LlamaCppBaseline
from targets import TARGETS, target_gguf
from workload_prompts import (
    CONTEXT_BUCKETS,
    Conversation,
    bucket_label,
    load_conversations,
    load_long_messages,
)

from sglang_dspark import Engine
from sglang_dspark.grammar import Constraint, GrammarError
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.speculative.dspark.checkpoint import packaged_drafter
from sglang_dspark.speculative.metrics import conditional_acceptance, tau
from sglang_dspark.speculative.setup import build_spec_worker
from sglang_dspark.speculative.spec_worker import SpecWorker
from sglang_dspark.training.data import chat_prompt_ids

DATA = Path(__file__).resolve().parents[1] / "data"
DEFAULT_WORKLOADS = ("code", "chat", "json")
WORKLOADS = (*DEFAULT_WORKLOADS, "multiturn", "longctx")
TURNS = ("multiturn turn 1", "multiturn turn 2")  # the multiturn workload's rows
SHOWN_POSITIONS = 4
CPP = "llama.cpp"  # the --llamacpp entry
MAX_PROMPT_CHARS = 3000  # longer chat prompts are skipped: their prefill would dominate on a CPU


def load_workload(name: str, n: int) -> list[tuple[str, dict]]:
    """(user message, extra sampling params) for the first n items of a workload."""
    if name == "json":
        path = DATA / "json_schemas" / "jsonschemabench_subset.jsonl"
        with open(path) as f:  # by "\n" only: prompts contain other Unicode line separators
            rows = [json.loads(line) for line in f if line.strip()][:n]
        return [
            (
                f"Generate a JSON object that follows this JSON schema:\n{json.dumps(r['schema'])}",
                {"json_schema": json.dumps(r["schema"])},
            )
            for r in rows
        ]
    path = DATA / "prompts" / {"code": "mbpp.jsonl", "chat": "arena-hard-v2.jsonl"}[name]
    with open(path) as f:
        turns = [json.loads(line)["turns"][0] for line in f if line.strip()]
    return [(t, {}) for t in turns if len(t) <= MAX_PROMPT_CHARS][:n]


def load_rows(name: str, n: int, tokenizer) -> dict[str, list]:
    """A workload's prompts by the table row they are measured in: multiturn's Conversations in one entry (its
    turns become rows when it runs), longctx's prompts per length bucket, the others' load_workload items."""
    if name == "multiturn":
        return {name: load_conversations(DATA / "prompts", n, MAX_PROMPT_CHARS)}
    if name == "longctx":
        return {
            f"{name} {bucket_label(b)}": [(m, {}) for m in load_long_messages(tokenizer, b, n)] for b in CONTEXT_BUCKETS
        }
    return {name: load_workload(name, n)}


@dataclass
class LevelRun:
    """What one pass over a level's prompts measured."""

    tokens: int = 0
    seconds: float = 0.0
    tpots: list[float] = field(default_factory=list)  # seconds per output token after the first, per request
    draft_lens: list[int] = field(default_factory=list)  # per verify round
    accept_lens: list[int] = field(default_factory=list)
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those the radix cache held


def chat_ids(tokenizer, items: list[tuple[str, dict]]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": m}]) for m, _ in items]


def generate_into(
    run: LevelRun, engine: Engine, ids: list[list[int]], params: list[dict], logprobs: int | None
) -> list[dict]:
    """One group of requests run together, its time and outputs added to run; returns the outputs.
    logprobs: every request returns its output tokens' logprobs and the top `logprobs` alternatives (None: off)."""
    t = time.perf_counter()
    outs = engine.generate(
        input_ids=ids, sampling_params=params, return_logprob=logprobs is not None, top_logprobs_num=logprobs
    )
    run.seconds += time.perf_counter() - t
    for out in outs:
        meta = out["meta_info"]
        run.tokens += meta["completion_tokens"]
        if meta["completion_tokens"] > 1:
            decode_s = meta["e2e_latency"] - meta["first_token_latency"]
            run.tpots.append(decode_s / (meta["completion_tokens"] - 1))
        run.draft_lens += meta.get("spec_draft_lens", [])
        run.accept_lens += meta.get("spec_accept_lens", [])
        run.requests += 1
        run.prompt_tokens += meta["prompt_tokens"]
        run.cached_tokens += meta["cached_tokens"]
    return outs


def run_level(
    engine: Engine, items: list[tuple[str, dict]], concurrency: int, max_new_tokens: int, logprobs: int | None
) -> LevelRun:
    """The items in groups of `concurrency` requests."""
    ids = chat_ids(engine.tokenizer, items)
    params = [{"temperature": 0, "max_new_tokens": max_new_tokens, **extra} for _, extra in items]
    run = LevelRun()
    for start in range(0, len(items), concurrency):
        group = slice(start, start + concurrency)
        generate_into(run, engine, ids[group], params[group], logprobs)
    return run


def run_turns(
    engine: Engine, convs: list[Conversation], concurrency: int, max_new_tokens: int, logprobs: int | None
) -> list[LevelRun]:
    """Groups of `concurrency` conversations, each group's turn 2 right after its turn 1 (its chat ends in the
    model's own turn-1 answer, still in the radix cache) -> [turn 1's run, turn 2's run]."""
    turns = [LevelRun(), LevelRun()]
    for start in range(0, len(convs), concurrency):
        group = convs[start : start + concurrency]
        params = [{"temperature": 0, "max_new_tokens": max_new_tokens} for _ in group]
        first = [chat_prompt_ids(engine.tokenizer, conv.messages()) for conv in group]
        answers = [out["text"] for out in generate_into(turns[0], engine, first, params, logprobs)]
        second = [chat_prompt_ids(engine.tokenizer, conv.messages(a)) for conv, a in zip(group, answers)]
        generate_into(turns[1], engine, second, params, logprobs)
    return turns


def run_workload(
    engine: Engine, workload: str, items: list, concurrency: int, max_new_tokens: int, logprobs: int | None
) -> dict[str, LevelRun]:
    """One pass over a level of a load_rows entry -> its table rows' runs (multiturn: one per turn)."""
    if workload == "multiturn":
        return dict(zip(TURNS, run_turns(engine, items, concurrency, max_new_tokens, logprobs)))
    return {workload: run_level(engine, items, concurrency, max_new_tokens, logprobs)}


def run_cpp_level(cpp: LlamaCppBaseline, tokenizer, items: list[tuple[str, dict]], max_new_tokens: int) -> LevelRun:
    """llama.cpp on the same prompts, one at a time (concurrency 1)."""
    run = LevelRun()
    for ids, (_, extra) in zip(chat_ids(tokenizer, items), items):
        req = cpp.generate(ids, max_new_tokens, extra.get("json_schema"))
        run.tokens += req.tokens
        run.seconds += req.seconds
        if req.tokens > 1:
            run.tpots.append((req.seconds - req.first_token_seconds) / (req.tokens - 1))
    return run


def summarize(runs: list[LevelRun]) -> dict:
    """Passes over the same level -> tok/s (all tokens / all seconds), TPOT, tau, cond. acceptance, budget."""
    tokens, seconds = sum(r.tokens for r in runs), sum(r.seconds for r in runs)
    tpots = [t for r in runs for t in r.tpots]
    row = {"tok_s": tokens / seconds, "tokens": tokens, "tpot_ms": 1000 * sum(tpots) / max(len(tpots), 1)}
    draft_lens = [n for r in runs for n in r.draft_lens]
    if draft_lens:
        d, a = torch.tensor(draft_lens), torch.tensor([n for r in runs for n in r.accept_lens])
        row["tau"] = tau(a)
        row["cond"] = conditional_acceptance(a, d, SHOWN_POSITIONS).tolist()
        row["budget"] = float(d.double().mean())
    requests, prompt = sum(r.requests for r in runs), sum(r.prompt_tokens for r in runs)
    if requests:
        row["prompt_tokens"] = prompt / requests
        row["cached_share"] = sum(r.cached_tokens for r in runs) / max(prompt, 1)
    return row


def prompt_note(row: dict) -> str:
    """', N prompt tokens (P% cached)' for a row with prompt statistics (not llama.cpp's)."""
    if "prompt_tokens" not in row:
        return ""
    return f", {row['prompt_tokens']:.0f} prompt tokens ({row['cached_share']:.0%} cached)"


def compiles(engine: Engine, schema: str) -> bool:
    try:
        engine.scheduler.grammars.compiler.compile(Constraint.from_fields(json_schema=schema))
    except GrammarError:
        return False
    return True


def engine_args(name: str) -> tuple[dict, dict]:
    """An --algorithms entry -> (its Engine's speculative flags but --speculative-config, its SpecConfig overrides)."""
    algo, *options = name.split(":")
    drafter = [o.removeprefix("drafter=") for o in options if o.startswith("drafter=")]
    draft_n = [int(o.removeprefix("draft")) for o in options if o.startswith("draft") and not o.startswith("drafter=")]
    config = {o.removeprefix("off="): False for o in options if o.startswith("off=")}
    for key, _, value in (o.removeprefix("set=").partition("=") for o in options if o.startswith("set=")):
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    layers = [int(o.removeprefix("layers=")) for o in options if o.startswith("layers=")]
    flags = ("raw", "fullvocab", "alone")
    modes = [o for o in options if o not in flags and not o.startswith(("draft", "off=", "set=", "layers="))]
    spec = {
        "speculative_algorithm": algo,
        "speculative_dspark_verify_mode": modes[0] if modes else "adaptive",
        "speculative_dspark_disable_online_calibration": "raw" in options,
        "speculative_dspark_draft_vocab_size": 0 if "fullvocab" in options else None,
        "speculative_num_draft_tokens": draft_n[0] if draft_n else None,
        "speculative_draft_model_path": drafter[0] if drafter else None,
        "speculative_dspark_disable_ngram": "alone" in options,
        "speculative_self_draft_layers": layers[0] if layers else None,
    }
    return spec, config


def missing_drafter(name: str, model_dir: Path) -> bool:
    """An --algorithms entry that drafts with the drafter shipped for the target (DSPARK without drafter=) where
    none ships."""
    spec, _ = engine_args(name)
    return (
        spec["speculative_algorithm"] == "DSPARK"
        and spec["speculative_draft_model_path"] is None
        and packaged_drafter(model_dir.name) is None
    )


def variant_worker(engine: Engine, base: SpecWorker, config: dict) -> SpecWorker:
    """A speculative worker for engine's model with SpecConfig overrides, planning on base's SPS table."""
    overrides = {"speculative_config": json.dumps(config)}
    if base.sps is not None:
        path = Path(tempfile.mkdtemp()) / "sps.json"
        base.sps.save(path)
        overrides["speculative_dspark_sps_table_path"] = str(path)
    sched = engine.scheduler
    args = dataclasses.replace(engine.server_args, **overrides)
    return build_spec_worker(args, sched.runner, engine.model_dir, sched.cache.tree)


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def versus(row: dict, reference: dict | None) -> str:
    """row's tok/s as a multiple of reference's ("-" without one)."""
    return "-" if reference is None else f"{row['tok_s'] / reference['tok_s']:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--algorithms",
        default="NGRAM,DSPARK",
        help="compared with plain decoding; ALGO:MODE sets --speculative-dspark-verify-mode (default adaptive), "
        "ALGO[:MODE]:raw also --speculative-dspark-disable-online-calibration, DSPARK[...]:fullvocab drafts over "
        "the whole vocabulary (--speculative-dspark-draft-vocab-size 0), ALGO[...]:draftN proposes up to N tokens "
        "(--speculative-num-draft-tokens N), ALGO[...]:drafter=DIR drafts with the drafter in DIR "
        "(--speculative-draft-model-path DIR), DSPARK|SELF[...]:alone drafts without the n-gram proposer "
        "(--speculative-dspark-disable-ngram), SELF[...]:layers=K drafts with the target's first K layers "
        "(--speculative-self-draft-layers K), ALGO[...]:off=NAME turns the SpecConfig switch NAME off and "
        "ALGO[...]:set=NAME=VALUE sets a SpecConfig field (--speculative-config, speculative/spec_config.py; "
        "repeatable; VALUE is JSON or a string)",
    )
    ap.add_argument(
        "--workloads", default=",".join(DEFAULT_WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}"
    )
    ap.add_argument("--model", choices=TARGETS, default="default", help="the target (benchmarks/targets.py)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument(
        "--min-waves", type=int, default=3, help="a level at concurrency c runs at least this many groups of c"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="passes over every level, the engines taking turns each pass; rates and tau pool all passes",
    )
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the engines run")
    ap.add_argument(
        "--llamacpp",
        action="store_true",
        help="add llama.cpp on the same GGUF file (concurrency 1; needs llama-cpp-python) and each row's ratio to it",
    )
    ap.add_argument(
        "--logprobs",
        type=int,
        default=None,
        metavar="N",
        help="every request returns its output logprobs and the top N alternatives (return_logprob, top_logprobs_num)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = args.workloads.split(",")
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    prompts = {c: max(args.num_prompts, args.min_waves * c) for c in levels}  # per level
    most = max(prompts.values())
    gguf = target_gguf(args.model)
    model_dir = resolve_model_path(gguf)
    algorithms = args.algorithms.split(",")
    no_drafter = [a for a in algorithms if missing_drafter(a, model_dir)]
    if no_drafter and args.algorithms != ap.get_default("algorithms"):
        raise SystemExit(
            f"no DSpark drafter ships for {model_dir.name}: {', '.join(no_drafter)} needs one "
            "(DSPARK:drafter=DIR; train one with python -m sglang_dspark.train)"
        )
    for name in no_drafter:
        print(f"{name} skipped: no DSpark drafter ships for {model_dir.name} (DSPARK:drafter=DIR names one)")
    longest = max(CONTEXT_BUCKETS) + args.max_new_tokens if "longctx" in workloads else 0  # tokens per request
    results: dict[str, dict[str, dict[int, dict]]] = {}
    engines: dict[str, Engine] = {}  # all alive at once: levels run interleaved, so drift hits each alike
    workers: dict[str, SpecWorker] = {}  # SpecConfig variants: their own worker on a shared engine
    for name in ["none", *[a for a in algorithms if a not in no_drafter]]:
        spec, config = engine_args(name)
        same = [n for n in engines if n in workers and engine_args(n)[0] == spec]
        base = same[0] if same and config else None
        if base is not None:
            engines[name] = engines[base]
            workers[name] = variant_worker(engines[base], workers[base], config)
            continue
        engine = Engine(
            model_path=str(gguf),
            dtype=args.dtype,
            device=args.device,
            max_total_tokens=max(32768, max(levels) * longest),
            log_level="warning",
            **(spec if name != "none" else {}),
        )
        engine.generate("warm-up", {"max_new_tokens": 4})
        engines[name] = engine
        if engine.scheduler.spec is not None:
            workers[name] = engine.scheduler.spec.worker
            if config:
                workers[name] = variant_worker(engine, workers[name], config)
    items: dict[str, list] = {}
    for w in workloads:
        items.update(load_rows(w, most * 2 if w == "json" else most, engines["none"].tokenizer))
    cpp = LlamaCppBaseline(gguf, torch.get_num_threads(), n_ctx=max(4096, longest)) if args.llamacpp else None
    if cpp is not None and "multiturn" in items:
        print("llama.cpp runs the single-turn workloads only: multiturn has no llama.cpp rows", flush=True)
    if "json" in items:  # schemas the grammar backend refuses (a 400) are left out; every engine compiles
        # (and caches) the rest now, so no level of one engine pays for compiles the others do not
        items["json"] = [
            it
            for it in items["json"]
            if all([compiles(e, it[1]["json_schema"]) for e in set(engines.values())])
            and (cpp is None or cpp.prepare(it[1]["json_schema"]))
        ]
        items["json"] = items["json"][:most]
    for w, its in items.items():
        if len(its) < most:
            print(f"{w}: only {len(its)} prompts, levels that want more run those", flush=True)
    for w in items:
        for c in levels:
            runs: dict[str, dict[str, list[LevelRun]]] = {}  # table row -> engine -> passes
            for _ in range(args.repeats):
                for name, engine in engines.items():
                    if name in workers:
                        engine.scheduler.spec.worker = workers[name]
                    engine.flush_cache()  # cold radix cache: no level reuses the prompts or outputs of another
                    level = items[w][: prompts[c]]
                    for label, run in run_workload(engine, w, level, c, args.max_new_tokens, args.logprobs).items():
                        runs.setdefault(label, {}).setdefault(name, []).append(run)
                if cpp is not None and c == 1 and w != "multiturn":
                    tok = engines["none"].tokenizer
                    cpp_run = run_cpp_level(cpp, tok, items[w][: prompts[c]], args.max_new_tokens)
                    runs[w].setdefault(CPP, []).append(cpp_run)
            for label, by_name in runs.items():
                for name, passes in by_name.items():
                    row = summarize(passes)
                    results.setdefault(label, {}).setdefault(name, {})[c] = row
                    note = "" if w in DEFAULT_WORKLOADS else prompt_note(row)
                    rate = f"{fmt(row['tok_s'], '.1f')} tok/s tau {fmt(row.get('tau'))}"
                    print(f"{label:5} {name:15} c={c:<3} {rate}{note}", flush=True)
    for engine in set(engines.values()):
        engine.shutdown()

    counts = ", ".join(f"{prompts[c]} at concurrency {c}" for c in levels)
    logprobs = "" if args.logprobs is None else f", logprobs with the top {args.logprobs}"
    print(
        f"\nprompts per workload: {counts}; {args.repeats} pass(es) per level; greedy, {args.max_new_tokens} new "
        f"tokens{logprobs}, {torch.get_num_threads()} threads\n"
    )
    cond_cols = " | ".join(f"cond@{k + 1}" for k in range(SHOWN_POSITIONS))
    print(
        f"| workload | algorithm | concurrency | tok/s | speed-up | TPOT ms | decode speed-up | tau | {cond_cols} "
        f"| verify budget |{' vs llama.cpp |' if cpp else ''}"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * SHOWN_POSITIONS + "---:|" + ("---:|" if cpp else ""))
    for w, by_algo in results.items():
        for name, by_level in by_algo.items():
            for c, row in by_level.items():
                base = by_algo["none"][c]
                cond = row.get("cond", [None] * SHOWN_POSITIONS)
                print(
                    f"| {w} | {name} | {c} | {row['tok_s']:.1f} | {row['tok_s'] / base['tok_s']:.2f}x | "
                    f"{row['tpot_ms']:.1f} | {base['tpot_ms'] / row['tpot_ms']:.2f}x | {fmt(row.get('tau'))} | "
                    + " | ".join(fmt(x) for x in cond)
                    + f" | {fmt(row.get('budget'), '.1f')} |"
                    + (f" {versus(row, by_algo.get(CPP, {}).get(c))} |" if cpp else "")
                )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
