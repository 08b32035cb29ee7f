"""Attention over a flat, ragged token batch backed by the token-level KV pool.

Requests with few new tokens (decode, speculative verification) are padded into one batched
SDPA call; long extends (prefill chunks) run one SDPA call each, so a 512-token chunk never
pads the decode requests next to it. Grouped-query attention folds the query heads of one KV
head into the query-length axis, so K/V are never repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_ops import DecodeAttentionFn
from sglang_dspark.model_executor.forward_batch import ForwardBatch

SHORT_EXTEND_MAX = 16  # extends up to this many tokens join the padded group


@dataclass
class LongExtend:
    q_start: int
    q_end: int
    kv_slots: torch.Tensor  # [S] int64
    mask: torch.Tensor | None  # [e, S] bool, True = may attend; None = plain causal without prefix


@dataclass
class AttentionMetadata:
    # Padded group of short extends (Bp requests, E = max new tokens, S = max KV length).
    short_q_index: torch.Tensor | None  # [Bp, E] flat-token rows (padding -> row 0); None if all decode
    short_q_valid: torch.Tensor | None  # [Bp, E] bool
    short_kv_slots: torch.Tensor | None  # [Bp, S] int64 (padding -> slot 0)
    short_mask: torch.Tensor | None  # [Bp, 1, E, S] bool, None when every key is visible
    short_extend: int  # E
    is_pure_decode: bool  # every request extends by exactly one token, in flat order
    long: list[LongExtend]
    short_seq_lens: torch.Tensor | None = None  # [Bp] int64 KV length of each short extend
    native_decode: DecodeAttentionFn | None = None  # pure decode without gathering K/V (kernels/cpu_ops.py)


def build_attention_metadata(fb: ForwardBatch, native_decode: DecodeAttentionFn | None = None) -> AttentionMetadata:
    short = [i for i, e in enumerate(fb.extend_lens) if e <= SHORT_EXTEND_MAX]
    long_ids = [i for i, e in enumerate(fb.extend_lens) if e > SHORT_EXTEND_MAX]
    starts = [0]
    for e in fb.extend_lens:
        starts.append(starts[-1] + e)
    rows = fb.req_pool_indices.tolist()

    long = []
    for i in long_ids:
        e, s = fb.extend_lens[i], fb.seq_lens[i]
        slots = fb.req_to_token[rows[i], :s]
        prefix = s - e
        mask = None
        if prefix > 0:
            mask = torch.arange(s)[None, :] <= (prefix + torch.arange(e))[:, None]
        long.append(LongExtend(starts[i], starts[i + 1], slots, mask))

    is_pure_decode = not long_ids and all(e == 1 for e in fb.extend_lens)
    if not short:
        return AttentionMetadata(None, None, None, None, 0, False, long)

    ext = max(fb.extend_lens[i] for i in short)
    max_s = max(fb.seq_lens[i] for i in short)
    seq = torch.tensor([fb.seq_lens[i] for i in short])  # [Bp]
    elen = torch.tensor([fb.extend_lens[i] for i in short])  # [Bp]
    kv_pos = torch.arange(max_s)
    kv_valid = kv_pos[None, :] < seq[:, None]  # [Bp, S]
    kv_slots = fb.req_to_token[fb.req_pool_indices[short]][:, :max_s]
    kv_slots = torch.where(kv_valid, kv_slots, torch.zeros_like(kv_slots))

    q_off = torch.arange(ext)
    q_valid = q_off[None, :] < elen[:, None]  # [Bp, E]
    q_index = torch.tensor([starts[i] for i in short])[:, None] + q_off[None, :]
    q_index = torch.where(q_valid, q_index, torch.zeros_like(q_index))
    # query j of request b sits at absolute position seq - elen + j and sees keys <= that position
    q_abs = (seq - elen)[:, None] + q_off[None, :]  # [Bp, E]
    mask = (kv_pos[None, None, :] <= q_abs[:, :, None]) & kv_valid[:, None, :]  # [Bp, E, S]
    need_mask = not bool(mask[q_valid].all())
    return AttentionMetadata(
        short_q_index=None if is_pure_decode else q_index,
        short_q_valid=None if is_pure_decode else q_valid,
        short_kv_slots=kv_slots,
        short_mask=mask[:, None] if need_mask else None,
        short_extend=ext,
        is_pure_decode=is_pure_decode,
        long=long,
        short_seq_lens=seq,
        native_decode=native_decode,
    )


def _grouped_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    # q [B, E, Hq, D], k/v [B, S, Hkv, D], mask [B, 1, E, S] | None -> [B, E, Hq, D]
    b, e, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    qg = q.view(b, e, hkv, g, d).permute(0, 2, 1, 3, 4).reshape(b, hkv, e * g, d)
    if mask is not None:
        mask = mask.repeat_interleave(g, dim=2)  # [B, 1, E*G, S]
    out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
    return out.view(b, hkv, e, g, d).permute(0, 2, 1, 3, 4).reshape(b, e, hq, d)


def _gather(buf: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """buf [T, H, D], slots [...] -> [..., H, D]; index_select copies whole rows (2-4x faster than buf[slots])."""
    return buf.index_select(0, slots.reshape(-1)).view(*slots.shape, *buf.shape[1:])


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, fb: ForwardBatch, scale: float
) -> torch.Tensor:
    """q [N, Hq, D], k/v [N, Hkv, D] for the new tokens -> [N, Hq * D]. Writes k/v to the pool first."""
    meta: AttentionMetadata = fb.attn_metadata  # type: ignore[assignment]
    pool = fb.kv_pool
    pool.set_kv(layer_id, fb.out_cache_loc, k, v)
    k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
    n, hq, d = q.shape

    if meta.is_pure_decode and meta.native_decode is not None:
        slots, lens = meta.short_kv_slots, meta.short_seq_lens
        return meta.native_decode(q.contiguous(), k_buf, v_buf, slots, lens, scale).view(n, hq * d)
    if meta.is_pure_decode:
        slots = meta.short_kv_slots
        out = _grouped_sdpa(q[:, None], _gather(k_buf, slots), _gather(v_buf, slots), meta.short_mask, scale)
        return out.reshape(n, hq * d)

    out = q.new_empty(n, hq, d)
    if meta.short_kv_slots is not None:
        slots = meta.short_kv_slots
        res = _grouped_sdpa(q[meta.short_q_index], _gather(k_buf, slots), _gather(v_buf, slots), meta.short_mask, scale)
        out[meta.short_q_index[meta.short_q_valid]] = res[meta.short_q_valid]
    for ext in meta.long:
        kk, vv = _gather(k_buf, ext.kv_slots)[None], _gather(v_buf, ext.kv_slots)[None]
        qq = q[ext.q_start : ext.q_end][None]
        if ext.mask is None:  # no cached prefix: plain causal attention over the new tokens
            res = F.scaled_dot_product_attention(
                qq.transpose(1, 2),
                kk.transpose(1, 2),
                vv.transpose(1, 2),
                is_causal=True,
                scale=scale,
                enable_gqa=hq != kk.shape[2],
            ).transpose(1, 2)
        else:
            res = _grouped_sdpa(qq, kk, vv, ext.mask[None, None], scale)
        out[ext.q_start : ext.q_end] = res[0]
    return out.reshape(n, hq * d)
