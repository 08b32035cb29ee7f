"""Argument helpers shared by the calibrate and eval CLIs."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from sglang_dspark.evaluation.scoring import BlockRecords, score_sequences
from sglang_dspark.training.regenerate import Sequence, load_sequences


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", default=None, help="target model (default: the bundled SmolLM2)")
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="JSONL files of target-generated sequences (written by python -m sglang_dspark.train)",
    )
    parser.add_argument("--sources", nargs="*", default=None, help="keep only these sources (default: all)")
    parser.add_argument("--per-source", type=int, default=None, help="at most this many sequences per source")
    parser.add_argument("--workers", type=int, default=2, help="scoring processes (one target copy each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the T=1 acceptance draws")
    parser.add_argument(
        "--draft-vocab-size",
        type=int,
        default=0,
        help="score drafting among the K most frequent tokens of each drafter's token_frequencies.json, as "
        "the server's --speculative-dspark-draft-vocab-size does (default 0: the whole vocabulary)",
    )
    parser.add_argument(
        "--no-grammar-mask",
        dest="grammar_mask",
        action="store_false",
        help="score responses generated under a JSON schema without its grammar mask (by default the mask "
        "applies to the target and the drafts, and forced tokens have confidence 1, as in the runtime)",
    )


def parse_named(items: list[str]) -> dict[str, str]:
    """["name=path", ...] -> {name: path}; a bare path is named after its position."""
    out = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        out[name if sep else f"drafter{i}"] = path if sep else item
    return out


def load_data(args: argparse.Namespace) -> list[Sequence]:
    seqs = [s for path in args.data for s in load_sequences(path, min_response=2)]
    if args.sources:
        seqs = [s for s in seqs if s.source in args.sources]
    if args.per_source is not None:
        kept: dict[str, int] = {}
        out = []
        for s in seqs:
            if kept.get(s.source, 0) < args.per_source:
                kept[s.source] = kept.get(s.source, 0) + 1
                out.append(s)
        seqs = out
    if not seqs:
        raise SystemExit("no sequences to evaluate (check --data / --sources)")
    return seqs


def score(args: argparse.Namespace, drafters: dict[str, str], seqs: list[Sequence]) -> list[dict[str, BlockRecords]]:
    with tqdm(total=len(seqs), desc="score") as bar:
        return score_sequences(
            args.model_path, drafters, seqs, args.workers, bar.update, args.grammar_mask, args.draft_vocab_size
        )
