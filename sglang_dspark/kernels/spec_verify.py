"""Speculative-decoding verification over a ragged batch: greedy prefix acceptance and lossless
rejection sampling (torch references, used on CPU; ``spec_verify_triton`` has kernels with the same
contracts).

Batch layout: row b proposes ``draft_lens[b] <= K`` drafts in ``draft_tokens[b, :draft_lens[b]]``; the
rest of the K slots are padding. The target scored K + 1 positions per row: position k predicts the
token after the anchor and the first k drafts, so position ``draft_lens[b]`` holds the bonus distribution.

Rejection rule: accept draft x_k iff ``u_k * p_d(x_k) < p_t(x_k)``, i.e. with probability
min(1, p_t(x_k) / p_d(x_k)); at the first rejection draw from normalise(max(0, p_t - p_d)); when every
draft is accepted draw the bonus from p_t. The draw is ``argmax(q / E)`` with E ~ Exp(1) per vocabulary
entry, an exact sample from q / sum(q). Randomness is an input (``draw_verify_noise``), so that the
reference and the kernels agree exactly and per-request seeds stay reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_ragged(draft_tokens: Tensor, draft_lens: Tensor, target: Tensor) -> None:
    """Validate draft_tokens [B, K], draft_lens [B] in [0, K], target [B, K + 1, ...]."""
    if draft_tokens.dim() != 2:
        raise ValueError(f"draft_tokens must be [B, K], got {tuple(draft_tokens.shape)}")
    B, K = draft_tokens.shape
    if tuple(draft_lens.shape) != (B,):
        raise ValueError(f"draft_lens must be [{B}], got {tuple(draft_lens.shape)}")
    if tuple(target.shape[:2]) != (B, K + 1):
        raise ValueError(f"target must be [{B}, {K + 1}, ...], got {tuple(target.shape)}")
    if B and bool(((draft_lens < 0) | (draft_lens > K)).any()):
        raise ValueError(f"draft_lens must lie in [0, {K}]")


def check_rejection_inputs(
    draft_tokens: Tensor,
    draft_lens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    uniforms: Tensor,
    exponentials: Tensor,
) -> None:
    """Validate the shapes of ``rejection_sample``'s arguments."""
    check_ragged(draft_tokens, draft_lens, target_probs)
    B, K = draft_tokens.shape
    V = target_probs.shape[-1]
    if target_probs.dim() != 3:
        raise ValueError(f"target_probs must be [B, K + 1, V], got {tuple(target_probs.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (B, K, V):
        raise ValueError(f"draft_probs must be [{B}, {K}, {V}], got {tuple(draft_probs.shape)}")
    if tuple(uniforms.shape) != (B, K):
        raise ValueError(f"uniforms must be [{B}, {K}], got {tuple(uniforms.shape)}")
    if tuple(exponentials.shape) != (B, V):
        raise ValueError(f"exponentials must be [{B}, {V}], got {tuple(exponentials.shape)}")


def _prefix_lengths(ok: Tensor) -> Tensor:
    """ok [B, K] bool -> length of the all-True prefix of each row [B] int64."""
    return ok.long().cumprod(dim=1).sum(dim=1)


def _in_draft(draft_lens: Tensor, K: int) -> Tensor:
    """draft_lens [B] -> [B, K] bool, True on the real (non-padding) draft slots."""
    return torch.arange(K, device=draft_lens.device).unsqueeze(0) < draft_lens.unsqueeze(1)


def greedy_accept_lengths(draft_tokens: Tensor, draft_lens: Tensor, target_argmax: Tensor) -> tuple[Tensor, Tensor]:
    """draft_tokens [B, K], draft_lens [B], target_argmax [B, K + 1] (int64) -> (accept_lens [B],
    next_tokens [B]): drafts are accepted while they equal the target argmax; the next token is the
    target argmax at the first mismatch (or at the bonus position ``draft_lens[b]``)."""
    check_ragged(draft_tokens, draft_lens, target_argmax)
    K = draft_tokens.shape[1]
    ok = (draft_tokens == target_argmax[:, :K]) & _in_draft(draft_lens, K)  # [B, K]
    accept_lens = _prefix_lengths(ok)  # [B]
    next_tokens = target_argmax.gather(1, accept_lens.unsqueeze(1)).squeeze(1)  # [B]
    return accept_lens, next_tokens


def rejection_sample(
    draft_tokens: Tensor,
    draft_lens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    uniforms: Tensor,
    exponentials: Tensor,
) -> tuple[Tensor, Tensor]:
    """Lossless speculative sampling over a ragged batch -> (accept_lens [B], next_tokens [B]) int64.

    draft_tokens [B, K] int64; draft_lens [B] int64; draft_probs [B, K, V] fp32, the distributions the
    drafts were drawn from, or None for deterministic drafts (greedy drafters, n-gram proposals: p_d is
    one-hot, so a draft is accepted with probability p_t(x_k)); target_probs [B, K + 1, V] fp32, the
    processed target distributions plain decoding would sample from; uniforms [B, K] in [0, 1);
    exponentials [B, V] > 0 (Exp(1) noise for the one final draw per row).
    """
    check_rejection_inputs(draft_tokens, draft_lens, draft_probs, target_probs, uniforms, exponentials)
    B, K = draft_tokens.shape
    rows = torch.arange(B, device=draft_tokens.device)  # [B]
    drafts = draft_tokens.unsqueeze(2)  # [B, K, 1]
    p_t = target_probs[:, :K].gather(2, drafts).squeeze(2)  # [B, K]
    p_d = torch.ones_like(p_t) if draft_probs is None else draft_probs.gather(2, drafts).squeeze(2)  # [B, K]
    accept_lens = _prefix_lengths((uniforms * p_d < p_t) & _in_draft(draft_lens, K))  # [B]

    final_t = target_probs[rows, accept_lens]  # [B, V] target distribution at the first unaccepted slot
    q = final_t
    if K > 0:
        slot = accept_lens.clamp(max=K - 1)  # [B]; only rows with a rejection use it
        if draft_probs is None:
            final_d = torch.nn.functional.one_hot(draft_tokens[rows, slot], final_t.shape[1]).to(final_t.dtype)
        else:
            final_d = draft_probs[rows, slot]  # [B, V]
        rejected = (accept_lens < draft_lens).unsqueeze(1)  # [B, 1]
        q = torch.where(rejected, (final_t - final_d).clamp_min(0.0), final_t)  # [B, V]
    scores = q / exponentials  # [B, V]
    # An empty residual (p_t == p_d up to rounding) falls back to p_t itself.
    fallback = (final_t / exponentials).argmax(dim=1)  # [B]
    next_tokens = torch.where(scores.amax(dim=1) > 0, scores.argmax(dim=1), fallback)  # [B]
    return accept_lens, next_tokens


def draw_verify_noise(
    draft_lens: Tensor, num_drafts: int, vocab_size: int, generators: Sequence[torch.Generator | None] | None = None
) -> tuple[Tensor, Tensor]:
    """draft_lens [B] -> (uniforms [B, K] in [0, 1), exponentials [B, V] > 0) for ``rejection_sample``.

    Rows with a generator draw ``draft_lens[b]`` uniforms and then V exponentials from it alone (so a
    seeded request is reproducible whatever else is in the batch); the others use the global RNG.
    """
    B, device = draft_lens.shape[0], draft_lens.device
    if generators is not None and len(generators) != B:
        raise ValueError(f"need {B} generators (or None), got {len(generators)}")
    uniforms = torch.rand(B, num_drafts, device=device)  # [B, K]
    exponentials = torch.empty(B, vocab_size, device=device).exponential_()  # [B, V]
    for b, gen in enumerate(generators or ()):
        if gen is not None:
            n = int(draft_lens[b])
            uniforms[b, :n] = torch.rand(n, generator=gen, device=device)
            exponentials[b] = torch.empty(vocab_size, device=device).exponential_(generator=gen)
    return uniforms, exponentials.clamp_min_(torch.finfo(exponentials.dtype).tiny)
