"""Score drafters on target-generated sequences: one target forward per sequence, every anchor of the
response teacher-forced through every drafter. Runs in worker processes (one thread each)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

from sglang_dspark.speculative.dspark import DSparkDrafter
from sglang_dspark.speculative.dspark.checkpoint import load_drafter
from sglang_dspark.train.losses import acceptance_probability
from sglang_dspark.train.regenerate import Sequence
from sglang_dspark.train.trainer import target_view


@dataclass
class BlockRecords:
    """One drafter on one sequence; row i = anchor at response position i."""

    source: str
    greedy_accept: torch.Tensor  # [A, G] bool, draft argmax == target argmax
    alpha: torch.Tensor  # [A, G] float32, T=1 acceptance probability
    valid: torch.Tensor  # [A, G] bool, draft position inside the sequence
    confidence_logits: torch.Tensor | None  # [A, G] float32


@torch.no_grad()
def score_sequence(
    target, drafters: dict[str, DSparkDrafter], seq: Sequence, chunk: int = 32
) -> dict[str, BlockRecords]:
    layer_ids = next(iter(drafters.values())).config.target_layer_ids
    view = target_view(target, seq, layer_ids)
    anchors = torch.arange(view.prompt_len, len(view.ids) - 1)
    out = {}
    for name, d in drafters.items():
        parts: dict[str, list[torch.Tensor]] = {"g": [], "a": [], "v": [], "c": []}
        for lo in range(0, anchors.numel(), chunk):
            a = anchors[lo : lo + chunk]
            tf = d.teacher_forced(view.feats, view.ids, a)
            t_logits = view.aligned_logits(a, d.config.block_size)
            parts["g"].append(tf.logits.argmax(-1) == t_logits.argmax(-1))
            parts["a"].append(acceptance_probability(tf.logits, t_logits))
            parts["v"].append(tf.valid)
            if tf.confidence_logits is not None:
                parts["c"].append(tf.confidence_logits)
        valid = torch.cat(parts["v"])
        out[name] = BlockRecords(
            seq.source,
            torch.cat(parts["g"]) & valid,
            torch.cat(parts["a"]) * valid,
            valid,
            torch.cat(parts["c"]) if parts["c"] else None,
        )
    return out


_WORKER: dict = {}


def _init_worker(model_path: str | None, drafter_paths: dict[str, str], threads: int) -> None:
    torch.set_num_threads(threads)
    from sglang_dspark.entrypoints.engine import Engine

    engine = Engine(model_path, dtype="float32", max_total_tokens=64, num_threads=threads, log_level="warning")
    target = engine.scheduler.runner.model
    embed, head = target.embed_tokens.weight, target.lm_head_weight
    _WORKER["target"] = target
    _WORKER["drafters"] = {n: load_drafter(p, embed, head, torch.float32) for n, p in drafter_paths.items()}


def _score(seq: Sequence) -> dict[str, BlockRecords]:
    return score_sequence(_WORKER["target"], _WORKER["drafters"], seq)


def score_sequences(
    model_path: str | None, drafter_paths: dict[str, str], sequences: list[Sequence], workers: int, progress
) -> list[dict[str, BlockRecords]]:
    """Score every sequence in `workers` processes; `progress(n)` is called as sequences finish."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(model_path, drafter_paths, threads)) as ex:
        results = []
        for rec in ex.map(_score, sequences):
            results.append(rec)
            progress(1)
    return results
