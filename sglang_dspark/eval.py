"""`python -m sglang_dspark.eval`: offline evaluation of drafters on target-generated responses.

Per data set (source) and mode (greedy, T=1): tau (bonus included), verify_rate, accept_rate@k,
conditional acceptance per position, and ECE / ROC-AUC / Brier of the confidence survival before and
after STS (read from `<sts-dir>/sts_<mode>.json`, default the drafter's directory). Writes results.json,
results.md and PNG plots to --output-dir.

    python -m sglang_dspark.eval --drafters dspark=runs/smollm2/dspark/drafter \
        dflash=runs/smollm2/dflash/drafter --data runs/data/eval_t0.jsonl --output-dir runs/eval
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from sglang_dspark.evaluation.aggregate import MODES, summarize
from sglang_dspark.evaluation.cli import add_common_args, load_data, parse_named, score
from sglang_dspark.evaluation.report import markdown_table, plot_conditional_acceptance, plot_reliability
from sglang_dspark.speculative.sts import STSCalibration


def load_or_score(args: argparse.Namespace, drafters: dict[str, str], seqs: list) -> list:
    ids = [s.id for s in seqs]
    if args.records and Path(args.records).is_file():
        cached = torch.load(args.records, weights_only=False)
        key = (cached["ids"], cached["drafters"], cached.get("grammar_mask"), cached.get("draft_vocab_size", 0))
        if key == (ids, drafters, args.grammar_mask, args.draft_vocab_size):
            return cached["records"]
        logging.warning("%s was scored on other sequences, drafters, masks or vocabularies; rescoring", args.records)
    if args.records:  # before scoring, which takes minutes: a path that cannot be written fails now
        Path(args.records).parent.mkdir(parents=True, exist_ok=True)
    scored = score(args, drafters, seqs)
    if args.records:
        torch.save(
            {
                "ids": ids,
                "drafters": drafters,
                "grammar_mask": args.grammar_mask,
                "draft_vocab_size": args.draft_vocab_size,
                "records": scored,
            },
            args.records,
        )
    return scored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafters", nargs="+", required=True, help="name=dir pairs, e.g. dspark=DIR dflash=DIR")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--sts-dirs", nargs="*", default=[], help="name=dir holding sts_<mode>.json")
    parser.add_argument("--output-dir", default="runs/eval")
    parser.add_argument(
        "--records",
        default=None,
        help="cache of the scored blocks: reused if present (e.g. to re-aggregate with new STS)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    drafters = parse_named(args.drafters)
    sts_dirs = {**drafters, **parse_named(args.sts_dirs)}
    seqs = load_data(args)
    scored = load_or_score(args, drafters, seqs)

    results: dict = {}
    for source in dict.fromkeys(s.source for s in seqs):
        rows = [r for s, r in zip(seqs, scored, strict=True) if s.source == source]
        for mode in args.modes:
            for name in drafters:
                sts_path = Path(sts_dirs[name]) / f"sts_{mode}.json"
                sts = STSCalibration.load(sts_path) if sts_path.is_file() else None
                summary = summarize([r[name] for r in rows], mode, args.seed, sts)
                summary["sequences"] = len(rows)
                results.setdefault(source, {}).setdefault(mode, {})[name] = summary
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = markdown_table(results)
    (out / "results.md").write_text(table, encoding="utf-8")
    plot_conditional_acceptance(results, out / "conditional_acceptance.png")
    for name in drafters:
        if any("reliability_before" in m.get(name, {}) for modes in results.values() for m in modes.values()):
            plot_reliability(results, name, out / f"reliability_{name}.png")
    print(table)


if __name__ == "__main__":
    main()
