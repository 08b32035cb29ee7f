"""Attention over the token-level KV pool in Triton: the GPU's ``pool_attention`` (page size 1).

The contract of the native CPU kernel (kernels/cpu_ops.py, ``PoolAttentionFn``), so the attention metadata that
sends every query through the pool (``build_attention_metadata(..., all_in_pool=True)``) serves decode, verify
chains and prefill chunks alike: query n attends to the first ``kv_lens[n]`` slots of ``slots[q_rows[n]]``,
keys and values read in place from the pool. One program per (query, head) streams its keys in blocks with an
online softmax in fp32 (FlashDecoding without the split: the rows here are short); grouped-query heads share
their KV head's loads through the cache.

Triton needs a GPU, or ``TRITON_INTERPRET=1`` on CPU (how tests/kernels/test_pool_attention_triton.py checks it
against gathering the keys for torch's SDPA; orders of magnitude slower than the native kernel there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _pool_attention_kernel(
    q_ptr,  # [N, Hq, D]
    k_ptr,  # [T, Hkv, D]
    v_ptr,
    slots_ptr,  # [B, S] int64
    rows_ptr,  # [N] int64
    lens_ptr,  # [N] int64
    out_ptr,  # [N, Hq, D]
    scale,
    S,
    Hq: tl.constexpr,
    Hkv: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    kv_head = h // (Hq // Hkv)
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    q = tl.load(q_ptr + (n * Hq + h) * D + d, mask=in_d, other=0.0).to(tl.float32)
    row = tl.load(rows_ptr + n)
    length = tl.load(lens_ptr + n)
    m = tl.full((), float("-inf"), tl.float32)  # running max of the scores
    total = tl.full((), 0.0, tl.float32)  # running sum of exp(score - m)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, length, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        in_j = j < length
        slot = tl.load(slots_ptr + row * S + j, mask=in_j, other=0)
        offsets = (slot[:, None] * Hkv + kv_head) * D + d[None, :]  # [BLOCK_N, BLOCK_D]
        valid = in_j[:, None] & in_d[None, :]
        k = tl.load(k_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        scores = tl.where(in_j, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))  # [BLOCK_N]
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        v = tl.load(v_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        total = total * alpha + tl.sum(p, axis=0)
        m = m_new
    tl.store(out_ptr + (n * Hq + h) * D + d, (acc / total).to(out_ptr.dtype.element_ty), mask=in_d)


def pool_attention_triton(
    q: Tensor, k_buf: Tensor, v_buf: Tensor, slots: Tensor, q_rows: Tensor, kv_lens: Tensor, scale: float
) -> Tensor:
    """q [N, Hq, D], k_buf/v_buf [T, Hkv, D], slots [B, S], q_rows/kv_lens [N] -> [N, Hq, D] in q's dtype."""
    n, hq, d = q.shape
    hkv = k_buf.shape[1]
    if hq % hkv or k_buf.shape != v_buf.shape or k_buf.shape[2] != d:
        raise ValueError(f"q [N, {hq}, {d}] needs K/V buffers [T, Hkv, {d}] with Hkv dividing {hq}")
    if q_rows.shape != (n,) or kv_lens.shape != (n,):
        raise ValueError("q_rows and kv_lens need one entry per query")
    capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()  # a CUDA graph: no host reads
    if n and not capturing and int(kv_lens.min()) < 1:
        raise ValueError("every query attends to at least one key (kv_lens >= 1)")
    out = torch.empty_like(q)
    if n == 0:
        return out
    _pool_attention_kernel[(n, hq)](
        q.contiguous(),
        k_buf,
        v_buf,
        slots.contiguous(),
        q_rows.contiguous(),
        kv_lens.contiguous(),
        out,
        scale,
        slots.shape[1],
        Hq=hq,
        Hkv=hkv,
        D=d,
        BLOCK_D=triton.next_power_of_2(d),
        BLOCK_N=32,
    )
    return out
