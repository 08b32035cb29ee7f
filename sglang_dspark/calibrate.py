"""`python -m sglang_dspark.calibrate`: Sequential Temperature Scaling of a drafter's confidence head.

Scores the drafter on held-out target rollouts and fits one temperature and one bias per draft position
(see speculative/sts.py; `--no-bias`: temperatures only, the paper's STS); writes `sts_<mode>.json`, the
file `--speculative-dspark-confidence-sts-path` reads.

    python -m sglang_dspark.calibrate --drafter runs/smollm2/dspark/drafter --data runs/data/calib_t0.jsonl
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from sglang_dspark.evaluation.aggregate import MODES, calibration_inputs
from sglang_dspark.evaluation.cli import add_common_args, load_data, score
from sglang_dspark.speculative.sts import fit_sts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafter", required=True, help="drafter directory (config.json + model.safetensors)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="acceptance model: greedy (argmax match) and/or t1 (speculative sampling at T=1)",
    )
    parser.add_argument("--output-dir", default=None, help="where sts_<mode>.json go (default: the drafter dir)")
    parser.add_argument(
        "--no-bias", action="store_true", help="fit temperatures only (every bias 0), as the paper's STS"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    seqs = load_data(args)
    records = [r["drafter"] for r in score(args, {"drafter": args.drafter}, seqs)]
    if records[0].confidence_logits is None:
        raise SystemExit(f"{args.drafter} has no confidence head: nothing to calibrate")
    out_dir = Path(args.output_dir or args.drafter)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = ",".join(sorted({s.source for s in seqs}))
    for mode in args.modes:
        conf, accept_lens, draft_lens = calibration_inputs(records, mode, args.seed)
        biases = torch.zeros(1) if args.no_bias else None
        cal = fit_sts(conf, accept_lens, draft_lens, biases=biases, dataset=f"{sources} ({mode})")
        path = out_dir / f"sts_{mode}.json"
        cal.save(path)
        logging.info(
            "%s: temperatures %s, biases %s, ECE per position %s -> %s",
            path,
            [round(t, 3) for t in cal.temperatures],
            [round(b, 2) for b in cal.biases],
            [round(e, 4) for e in cal.ece_before],
            [round(e, 4) for e in cal.ece_after],
        )


if __name__ == "__main__":
    main()
