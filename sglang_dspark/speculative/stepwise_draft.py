"""Drafting token by token with a language model: the loop the draft-model proposers share.

A proposer that drafts with a model (STANDALONE's separate draft model, SELF's truncated target) hands
``draft_stepwise`` a function that extends each request's sequence by a chunk of tokens and returns the
logits after each chunk (``extend_rows``: one forward over a ModelRunner's request rows). The first chunk
of a request ends at its anchor (the last committed token); every later one is the token drafted from the
step before. Greedy and grammar requests draft greedily (deterministic drafts: the scheduler may cut them
at the grammar); sampling requests sample at their temperature and hand the draft distributions to
rejection sampling. The confidence of a draft is the model's probability of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sglang_dspark.layers.sampler import greedy_ids
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.speculative.draft import Draft

# chunks: request index -> tokens appended to its sequence; returns the logits after each chunk's last token
# [R', V] in chunks' order, or None when the model cannot hold them (drafting stops, keeping the drafts so far)
ExtendFn = Callable[[dict[int, list[int]]], "torch.Tensor | None"]


def draft_stepwise(
    extend: ExtendFn,
    first: dict[int, list[int]],
    num_tokens: dict[int, int],
    temperatures: dict[int, float],
    generator: torch.Generator,
    source: str,
) -> dict[int, Draft]:
    """first[i]: request i's tokens up to its anchor not yet in the model's sequence (at least the anchor);
    num_tokens[i] >= 1: drafts to make; temperatures[i]: 0 = greedy. Returns each request's Draft, its
    source ``source`` (greedy) or ``source/sampled`` (with the distributions q)."""
    tokens: dict[int, list[int]] = {i: [] for i in first}
    confs: dict[int, list[float]] = {i: [] for i in first}
    probs: dict[int, list[torch.Tensor]] = {i: [] for i in first}
    chunks = dict(first)
    while chunks:
        logits = extend(chunks)
        if logits is None:
            break
        rows = list(chunks)
        tok, p = choose_tokens(logits, torch.tensor([temperatures[i] for i in rows], device=logits.device), generator)
        chunks = {}
        for j, i in enumerate(rows):
            tokens[i].append(int(tok[j]))
            confs[i].append(float(p[j, tok[j]]))
            probs[i].append(p[j])
            if len(tokens[i]) < num_tokens[i]:
                chunks[i] = [int(tok[j])]
    drafts = {}
    for i in first:
        sampled = temperatures[i] > 0 and probs[i]
        q = torch.stack(probs[i]) if sampled else None
        drafts[i] = Draft(tokens[i], confs[i], q, source if q is None else f"{source}/sampled")
    return drafts


def choose_tokens(
    logits: torch.Tensor, temps: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V], temps [R] (0 = greedy) -> (tokens [R], draft distributions [R, V]). Greedy rows draw
    no random numbers; their distribution is the softmax at temperature 1 (its argmax prob = the confidence)."""
    greedy = temps <= 0
    probs = torch.softmax(logits / torch.where(greedy, 1.0, temps)[:, None], dim=-1)
    tokens = greedy_ids(logits)
    if not greedy.all():
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tokens = torch.where(greedy, tokens, sampled)
    return tokens, probs


@dataclass
class RowExtension:
    slots: torch.Tensor  # [N] int64, the KV slots the chunks' tokens were written to, in order
    logits: torch.Tensor  # [R, V] float32, after each chunk's last token


def extend_rows(
    runner: ModelRunner,
    rows: list[int],
    starts: list[int],
    chunks: list[list[int]],
    num_layers: int | None = None,
) -> RowExtension | None:
    """One forward of ``runner`` appending chunks[j] at position starts[j] of its request-table row rows[j]
    (on top of the KV of the positions before it), through its first ``num_layers`` decoder layers (None =
    all). The slots come from the runner's allocator and are recorded in the rows; None, allocating
    nothing, when the allocator cannot hold them."""
    table = runner.req_to_token_pool.req_to_token
    slots = runner.token_allocator.alloc(sum(len(c) for c in chunks))
    if slots is None:
        return None
    ids, positions, seq_lens, last, at = [], [], [], [], 0
    for row, start, chunk in zip(rows, starts, chunks, strict=True):
        n = len(chunk)
        table[row, start : start + n] = slots[at : at + n]
        ids += chunk
        positions += range(start, start + n)
        seq_lens.append(start + n)
        at += n
        last.append(at - 1)
    dev = {"dtype": torch.int64, "device": table.device}
    fb = ForwardBatch(
        input_ids=torch.tensor(ids, **dev),
        positions=torch.tensor(positions, **dev),
        out_cache_loc=slots.to(table.device),
        req_pool_indices=torch.tensor(rows, **dev),
        seq_lens=seq_lens,
        extend_lens=[len(c) for c in chunks],
        logits_indices=torch.tensor(last, **dev),
        kv_pool=runner.kv_pool,
        req_to_token=table,
        num_layers=num_layers,
    )
    return RowExtension(slots, runner.forward(fb).logits.float())
