"""Triton kernels for speculative verification, one program per request row.

Same contracts, inputs and (bit-exact) outputs as the torch references in ``spec_verify``. Triton needs a
GPU, or ``TRITON_INTERPRET=1`` on CPU (orders of magnitude slower than torch: use the references there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sglang_dspark.kernels.spec_verify import check_ragged, check_rejection_inputs


@triton.jit
def _first_failure(ok, k, n):
    """ok, k [BLOCK_K] (slot flags, slot ids), n (#drafts) -> length of the accepted prefix."""
    return tl.min(tl.where(ok, n, k), axis=0)


@triton.jit
def _greedy_kernel(draft_ptr, lens_ptr, target_ptr, accept_ptr, next_ptr, K, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lens_ptr + b)
    k = tl.arange(0, BLOCK_K)
    in_draft = k < n
    draft = tl.load(draft_ptr + b * K + k, mask=in_draft, other=0)
    target = tl.load(target_ptr + b * (K + 1) + k, mask=in_draft, other=0)
    accept = _first_failure(in_draft & (draft == target), k, n)
    tl.store(accept_ptr + b, accept)
    tl.store(next_ptr + b, tl.load(target_ptr + b * (K + 1) + accept))


@triton.jit
def _rejection_kernel(
    draft_ptr,
    lens_ptr,
    dprobs_ptr,
    tprobs_ptr,
    unif_ptr,
    expo_ptr,
    accept_ptr,
    next_ptr,
    K,
    V,
    ONE_HOT_DRAFT: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(lens_ptr + b)
    k = tl.arange(0, BLOCK_K)
    in_draft = k < n
    x = tl.load(draft_ptr + b * K + k, mask=in_draft, other=0)
    p_t = tl.load(tprobs_ptr + (b * (K + 1) + k) * V + x, mask=in_draft, other=0.0)
    if ONE_HOT_DRAFT:
        p_d = tl.full([BLOCK_K], 1.0, tl.float32)
    else:
        p_d = tl.load(dprobs_ptr + (b * K + k) * V + x, mask=in_draft, other=1.0)
    u = tl.load(unif_ptr + b * K + k, mask=in_draft, other=1.0)
    accept = _first_failure(in_draft & (u * p_d < p_t), k, n)
    rejected = accept < n

    t_row = tprobs_ptr + (b * (K + 1) + accept) * V
    d_row = dprobs_ptr + (b * K + accept) * V
    x_rejected = tl.load(draft_ptr + b * K + accept, mask=rejected, other=-1)
    # Running argmax of q / E (residual) and of p_t / E (fallback when the residual is empty).
    best_q = tl.full([], -1.0, tl.float32)
    best_q_idx = tl.full([], 0, tl.int64)
    best_t = tl.full([], -1.0, tl.float32)
    best_t_idx = tl.full([], 0, tl.int64)
    for v0 in range(0, V, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        in_vocab = v < V
        pt = tl.load(t_row + v, mask=in_vocab, other=0.0)
        e = tl.load(expo_ptr + b * V + v, mask=in_vocab, other=1.0)
        if ONE_HOT_DRAFT:
            pd = tl.where(v == x_rejected, 1.0, 0.0)
        else:
            pd = tl.load(d_row + v, mask=tl.where(rejected, in_vocab, False), other=0.0)
        q = tl.maximum(pt - pd, 0.0)
        score_q = tl.where(in_vocab, tl.div_rn(q, e), -1.0)
        score_t = tl.where(in_vocab, tl.div_rn(pt, e), -1.0)
        block_q = tl.max(score_q, axis=0)
        block_t = tl.max(score_t, axis=0)
        best_q_idx = tl.where(block_q > best_q, tl.argmax(score_q, axis=0).to(tl.int64) + v0, best_q_idx)
        best_t_idx = tl.where(block_t > best_t, tl.argmax(score_t, axis=0).to(tl.int64) + v0, best_t_idx)
        best_q = tl.maximum(best_q, block_q)
        best_t = tl.maximum(best_t, block_t)
    tl.store(accept_ptr + b, accept)
    tl.store(next_ptr + b, tl.where(best_q > 0.0, best_q_idx, best_t_idx))


def _block_k(K: int) -> int:
    return triton.next_power_of_2(max(K, 1))


def greedy_accept_lengths_triton(
    draft_tokens: Tensor, draft_lens: Tensor, target_argmax: Tensor
) -> tuple[Tensor, Tensor]:
    """Triton ``greedy_accept_lengths``: [B, K], [B], [B, K + 1] int64 -> (accept_lens [B], next_tokens [B])."""
    check_ragged(draft_tokens, draft_lens, target_argmax)
    B, K = draft_tokens.shape
    accept_lens = torch.empty(B, dtype=torch.int64, device=draft_tokens.device)
    next_tokens = torch.empty_like(accept_lens)
    if B:
        _greedy_kernel[(B,)](
            draft_tokens.long().contiguous(),
            draft_lens.long().contiguous(),
            target_argmax.long().contiguous(),
            accept_lens,
            next_tokens,
            K,
            BLOCK_K=_block_k(K),
        )
    return accept_lens, next_tokens


def rejection_sample_triton(
    draft_tokens: Tensor,
    draft_lens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    uniforms: Tensor,
    exponentials: Tensor,
    block_v: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Triton ``rejection_sample`` (same arguments; ``block_v`` = vocabulary tile, a power of two)."""
    check_rejection_inputs(draft_tokens, draft_lens, draft_probs, target_probs, uniforms, exponentials)
    B, K = draft_tokens.shape
    V = target_probs.shape[2]
    accept_lens = torch.empty(B, dtype=torch.int64, device=draft_tokens.device)
    next_tokens = torch.empty_like(accept_lens)
    if B:
        target_probs = target_probs.float().contiguous()
        _rejection_kernel[(B,)](
            draft_tokens.long().contiguous(),
            draft_lens.long().contiguous(),
            target_probs if draft_probs is None else draft_probs.float().contiguous(),  # unread when one-hot
            target_probs,
            uniforms.float().contiguous(),
            exponentials.float().contiguous(),
            accept_lens,
            next_tokens,
            K,
            V,
            ONE_HOT_DRAFT=draft_probs is None,
            BLOCK_K=_block_k(K),
            BLOCK_V=min(block_v, triton.next_power_of_2(V)),
        )
    return accept_lens, next_tokens
