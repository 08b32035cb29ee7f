"""`python -m sglang_dspark.profile_sps`: measure SPS(B), target forward steps per second at B flat tokens.

B tokens are laid out as verification rounds: ceil(B / tokens_per_request) requests, each extending its
own cached prefix of --context tokens (speculative/sps_profile.py, as the runtime profiles at start-up).
Writes the JSON that `--speculative-dspark-sps-table-path` reads.

    python -m sglang_dspark.profile_sps --sizes 1 2 4 8 16 32 64 --output runs/sps_smollm2.json
"""

from __future__ import annotations

import argparse
import logging

from sglang_dspark.entrypoints.engine import Engine
from sglang_dspark.speculative.sps_profile import SPS_PROBE_CONTEXT, SPS_PROBE_SIZES, profile_runner_sps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SPS_PROBE_SIZES))
    parser.add_argument("--context", type=int, default=SPS_PROBE_CONTEXT, help="cached prefix tokens per request")
    parser.add_argument("--tokens-per-request", type=int, default=8, help="verified tokens per request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    engine = Engine(
        args.model_path, dtype=args.dtype, max_total_tokens=64, num_threads=args.num_threads, log_level="warning"
    )
    table = profile_runner_sps(
        engine.scheduler.runner, args.tokens_per_request, tuple(args.sizes), args.context, args.repeats
    )
    table.save(args.output)
    for b, s in zip(table.batch_tokens, table.steps_per_sec, strict=True):
        print(f"SPS({b}) = {s:.2f} steps/s")


if __name__ == "__main__":
    main()
