"""Where a DSpark drafter call's time goes, timed inside the runtime: the native drafter against its modules.

    python benchmarks/bench_drafter.py                           # default model, shipped drafter, code prompts
    python benchmarks/bench_drafter.py --workload json --num-prompts 16
    python benchmarks/bench_drafter.py --model qwen-coder --drafter runs/qwen_coder/dspark/drafter

One engine drafts in every decode round (``{"backoff": false, "gate": false}``: the drafter is called each round
whatever it gains). Every prompt runs twice in a row, once with the native drafter (kernels/fused_drafter.py,
a quantized target's default) and once with the drafter's PyTorch modules on the same weights (the order
alternates per prompt), so that both see the same rounds and the same machine. Each part of a drafter call is
timed; the table gives the median ms per call of each (greedy output is the same either way: every draft is
verified):

- propose: the whole call (DSparkProposer.propose) = context + draft + calibration + bookkeeping;
- context: the context keys/values of the positions committed since the request's last draft;
- draft: the block through the drafter layer and the draft vocabulary's LM head (``block``), then the Markov
  head's steps and the confidences (``walk`` = draft - block, block input included);
- calibration: STS of the confidences;
- round: the worker's whole drafting step of a round (SpecWorker.draft) = the n-gram proposer, propose, the
  choice between their drafts, ``plan`` (the prefix scheduler's verify lengths) and the backoff's bookkeeping.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from bench_spec import DEFAULT_WORKLOADS, chat_ids, compiles, load_workload
from targets import TARGETS, target_gguf

from sglang_dspark import Engine

PARTS = ("round", "plan", "propose", "context", "draft", "block", "walk", "calibration")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=TARGETS, default="default", help="the target (benchmarks/targets.py)")
    parser.add_argument("--workload", default="code", choices=DEFAULT_WORKLOADS)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--drafter", default=None, help="--speculative-draft-model-path (default: the shipped one)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    engine = Engine(
        model_path=str(target_gguf(args.model)),
        log_level="warning",
        speculative_algorithm="DSPARK",
        speculative_draft_model_path=args.drafter,
        speculative_config='{"backoff": false, "gate": false}',
    )
    calibrated = next(p for p in engine.scheduler.spec.worker.proposer.proposers if p.capture_layers)
    proposer = getattr(calibrated, "proposer", calibrated)  # the DSparkProposer inside its online calibration
    drafter, native = proposer.drafter, proposer.drafter.fused
    if native is None:
        raise SystemExit("this drafter runs its modules only (a dense target, or no draft vocabulary)")
    times = {mode: defaultdict(list) for mode in ("native", "modules")}
    mode = "native"
    worker = engine.scheduler.spec.worker
    for obj, name, part in (
        (worker, "draft", "round"),
        (worker.policy, "lengths", "plan"),
        (proposer, "propose", "propose"),
        (proposer, "_extend_context", "context"),
        (proposer, "calibration", "calibration"),
        (drafter, "draft", "draft"),
        (drafter, "_block", "block"),
    ):
        inner = getattr(obj, name)

        def call(*a, _inner=inner, _part=part, **k):
            start = time.perf_counter()
            out = _inner(*a, **k)
            times[mode][_part].append(time.perf_counter() - start)
            return out

        setattr(obj, name, call)

    items = load_workload(args.workload, 4 * args.num_prompts)
    items = [it for it in items if "json_schema" not in it[1] or compiles(engine, it[1]["json_schema"])]
    items = items[: args.num_prompts]  # as bench_spec.py: schemas the grammar backend refuses are left out
    for i, (ids, (_, extra)) in enumerate(zip(chat_ids(engine.tokenizer, items), items, strict=True)):
        params = {"max_new_tokens": args.max_new_tokens, "temperature": 0, **extra}
        for mode in ("native", "modules") if i % 2 == 0 else ("modules", "native"):
            drafter.fused = native if mode == "native" else None
            engine.flush_cache()
            engine.generate(input_ids=ids, sampling_params=params)
    engine.shutdown()

    for t in times.values():
        t["walk"] = [d - b for d, b in zip(t["draft"], t["block"], strict=True)]
    print(f"\n{args.workload}, {args.num_prompts} prompts, {len(times['native']['propose'])} native calls\n")
    print("| part | native ms | modules ms | modules / native |")
    print("|---|---:|---:|---:|")
    for part in PARTS:
        a, b = (statistics.median(times[m][part]) * 1e3 for m in ("native", "modules"))
        print(f"| {part} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
