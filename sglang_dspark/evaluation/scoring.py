"""Score drafters on target-generated sequences: one target forward per sequence, every anchor of the
response teacher-forced through every drafter. Runs in worker processes (one thread each).

A response generated under a JSON schema is scored as the runtime drafts and verifies it: the schema's
grammar mask applies to the target's distribution (p_t is the masked one, docs/design.md "Verification") and to the
drafter's at every draft position (docs/design.md "Grammar-aware drafting"), and a position the grammar forces
(one allowed token) has confidence 1."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang_dspark.grammar.base import Constraint, GrammarBackend, GrammarError, allocate_bitmask
from sglang_dspark.grammar.mask import allowed_from_bitmask
from sglang_dspark.speculative.dspark import DSparkDrafter
from sglang_dspark.speculative.dspark.checkpoint import load_drafter
from sglang_dspark.speculative.dspark.draft_vocab import FREQUENCIES_NAME, TokenFrequencies
from sglang_dspark.training.losses import acceptance_probability
from sglang_dspark.training.regenerate import Sequence
from sglang_dspark.training.trainer import target_view

logger = logging.getLogger(__name__)


@dataclass
class BlockRecords:
    """One drafter on one sequence; row i = anchor at response position i."""

    source: str
    greedy_accept: torch.Tensor  # [A, G] bool, draft argmax == target argmax
    alpha: torch.Tensor  # [A, G] float32, T=1 acceptance probability
    valid: torch.Tensor  # [A, G] bool, draft position inside the sequence
    confidence_logits: torch.Tensor | None  # [A, G] float32


def response_allowed(backend: GrammarBackend, seq: Sequence) -> torch.Tensor | None:
    """-> allowed [R, V] bool, row i = the tokens seq's JSON schema allows as response token i; None if seq
    has no schema, or the backend refuses it, or the response leaves it (each logged: scored unmasked)."""
    if seq.json_schema is None:
        return None
    try:
        grammar = backend.make_grammar(backend.compile(Constraint.from_fields(json_schema=seq.json_schema)))
    except GrammarError as e:
        logger.warning("%s: scored without its grammar mask: %s", seq.id, e)
        return None
    resp = seq.response_ids
    bitmask = allocate_bitmask(len(resp) + 1, backend.vocab_size)  # [R + 1, W]
    if grammar.fill_draft_masks(resp, bitmask, 0) < len(resp) + 1:
        logger.warning("%s: scored without its grammar mask: the response leaves its schema", seq.id)
        return None
    return allowed_from_bitmask(bitmask[: len(resp)], backend.vocab_size)


@torch.no_grad()
def score_sequence(
    target, drafters: dict[str, DSparkDrafter], seq: Sequence, chunk: int = 32, allowed: torch.Tensor | None = None
) -> dict[str, BlockRecords]:
    """allowed [R, V] bool (response_allowed): the grammar mask of each response position, or None."""
    layer_ids = next(iter(drafters.values())).config.target_layer_ids
    view = target_view(target, seq, layer_ids)
    anchors = torch.arange(view.prompt_len, len(view.ids) - 1)
    out = {}
    for name, d in drafters.items():
        parts: dict[str, list[torch.Tensor]] = {"g": [], "a": [], "v": [], "c": []}
        vocab = d.draft_vocab  # [K] ids it drafts among, None: all V
        for lo in range(0, anchors.numel(), chunk):
            a = anchors[lo : lo + chunk]
            tf = d.teacher_forced(view.feats, view.ids, a, vocab)
            d_logits, t_logits = tf.logits, view.aligned_logits(a, d.config.block_size)
            conf = tf.confidence_logits
            if allowed is not None:
                rows = a[:, None] + 1 + torch.arange(d.config.block_size) - view.prompt_len  # [A, G]
                banned = ~allowed[rows.clamp(max=allowed.shape[0] - 1)]  # [A, G, V]
                t_logits = t_logits.masked_fill(banned, -torch.inf)
                d_banned = banned if vocab is None else banned[..., vocab]
                # a position whose mask allows none of the K drafts nothing the target accepts
                d_logits = d_logits.masked_fill(d_banned & ~d_banned.all(-1, keepdim=True), -torch.inf)
                if conf is not None:
                    conf = conf.masked_fill((~banned).sum(-1) == 1, torch.inf)  # forced: confidence 1
            t_probs = t_logits.softmax(-1)
            d_greedy = d_logits.argmax(-1)
            if vocab is not None:
                t_probs, d_greedy = t_probs[..., vocab], vocab[d_greedy]
            parts["g"].append(d_greedy == t_logits.argmax(-1))
            parts["a"].append(acceptance_probability(d_logits, t_probs))
            parts["v"].append(tf.valid)
            if conf is not None:
                parts["c"].append(conf)
        valid = torch.cat(parts["v"])
        out[name] = BlockRecords(
            seq.source,
            torch.cat(parts["g"]) & valid,
            torch.cat(parts["a"]) * valid,
            valid,
            torch.cat(parts["c"]) if parts["c"] else None,
        )
    return out


def scored_vocab(drafter_dir: Path, size: int, vocab_size: int) -> torch.Tensor:
    """The `size` most frequent tokens of the drafter's token_frequencies.json [K], as the runtime drafts with
    --speculative-dspark-draft-vocab-size."""
    path = drafter_dir / FREQUENCIES_NAME
    if not path.is_file():
        raise SystemExit(f"--draft-vocab-size needs {path} (python -m sglang_dspark.train writes it)")
    return TokenFrequencies.load(path).draft_vocab(min(size, vocab_size), vocab_size)


_WORKER: dict = {}


def _init_worker(
    model_path: str | None, drafter_paths: dict[str, str], threads: int, grammar_mask: bool, draft_vocab_size: int
) -> None:
    torch.set_num_threads(threads)
    from sglang_dspark.entrypoints.engine import Engine

    engine = Engine(model_path, dtype="float32", max_total_tokens=64, num_threads=threads, log_level="warning")
    target = engine.scheduler.runner.model
    embed, head = target.embed_tokens.weight, target.lm_head_weight
    _WORKER["target"] = target
    _WORKER["drafters"] = {n: load_drafter(p, embed, head, torch.float32) for n, p in drafter_paths.items()}
    if draft_vocab_size:
        for name, d in _WORKER["drafters"].items():
            d.restrict_vocab(scored_vocab(Path(drafter_paths[name]), draft_vocab_size, d.config.vocab_size))
    _WORKER["grammars"] = engine.scheduler.grammars if grammar_mask else None


def _score(seq: Sequence) -> dict[str, BlockRecords]:
    grammars = _WORKER["grammars"]
    allowed = response_allowed(grammars.compiler.backend, seq) if grammars and seq.json_schema else None
    return score_sequence(_WORKER["target"], _WORKER["drafters"], seq, allowed=allowed)


def score_sequences(
    model_path: str | None,
    drafter_paths: dict[str, str],
    sequences: list[Sequence],
    workers: int,
    progress,
    grammar_mask: bool = True,
    draft_vocab_size: int = 0,
) -> list[dict[str, BlockRecords]]:
    """Score every sequence in `workers` processes; `progress(n)` is called as sequences finish. With
    grammar_mask, sequences carrying a JSON schema are scored under its grammar mask; with draft_vocab_size K,
    every drafter drafts among the K most frequent tokens of its token_frequencies.json (0: all of them)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    init = (model_path, drafter_paths, threads, grammar_mask, draft_vocab_size)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as ex:
        results = []
        for rec in ex.map(_score, sequences):
            results.append(rec)
            progress(1)
    return results
