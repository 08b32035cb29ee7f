"""`python -m sglang_dspark.profile_sps`: measure SPS(B), target forward steps per second at B flat tokens.

B tokens are laid out as verification rounds: ceil(B / tokens_per_request) requests, each extending its
own cached prefix of --context tokens. Writes the JSON that `--speculative-dspark-sps-table-path` reads.

    python -m sglang_dspark.profile_sps --sizes 1 2 4 8 16 32 64 --output runs/sps_smollm2.json
"""

from __future__ import annotations

import argparse
import logging
import math

import torch

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.model_executor.sequence_forward import SequenceRunner
from sglang_dspark.speculative.planner import profile_sps


def verify_forward_fn(
    model, max_tokens: int, context: int, per_request: int, pool_attention: PoolAttentionFn | None = None
):
    """-> forward_fn(B): one forward of B tokens spread over requests with `context`-token prefixes.
    pool_attention: the native attention kernel when the runtime uses it (ModelRunner.cpu_ops)."""
    rows = math.ceil(max_tokens / per_request)
    runner = SequenceRunner(model, rows, rows * (context + per_request), context + per_request, pool_attention)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    runner.extend({r: torch.randint(0, vocab, (context,), generator=g).tolist() for r in range(rows)})
    prefix_slots = runner.next_slot

    def forward_fn(batch_tokens: int) -> None:
        chunks, left = {}, batch_tokens
        for r in range(math.ceil(batch_tokens / per_request)):
            chunks[r] = [1] * min(per_request, left)
            left -= len(chunks[r])
        runner.extend(chunks, logits_positions={r: list(range(len(c))) for r, c in chunks.items()})
        for r in chunks:  # rewind so every call measures the same shape
            runner.lens[r] = context
        runner.next_slot = prefix_slots

    return forward_fn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--context", type=int, default=256, help="cached prefix tokens per request")
    parser.add_argument("--tokens-per-request", type=int, default=8, help="verified tokens per request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from sglang_dspark.entrypoints.engine import Engine

    engine = Engine(
        args.model_path, dtype=args.dtype, max_total_tokens=64, num_threads=args.num_threads, log_level="warning"
    )
    runner = engine.scheduler.runner
    attention = runner.cpu_ops.pool_attention if runner.cpu_ops else None
    fn = verify_forward_fn(runner.model, max(args.sizes), args.context, args.tokens_per_request, attention)
    table = profile_sps(fn, args.sizes, repeats=args.repeats)
    table.save(args.output)
    for b, s in zip(table.batch_tokens, table.steps_per_sec, strict=True):
        print(f"SPS({b}) = {s:.2f} steps/s")


if __name__ == "__main__":
    main()
