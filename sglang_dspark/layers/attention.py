"""Attention over a flat, ragged token batch backed by the token-level KV pool.

Requests with few new tokens (decode, speculative verification, short extends) form the short
group; long extends (prefill chunks) run one SDPA call each, so a 512-token chunk never pads the
requests next to it. With the native CPU kernels (sglang_dspark/kernels/cpu_ops.py) the short group attends
over K/V read in place from the pool, each query seeing its request's keys up to its own
position; without them it is padded into one batched SDPA call over gathered K/V. Grouped-query
attention folds the query heads of one KV head into the query-length axis, so K/V are never
repeated.

Sliding-window layers (Gemma 3) get metadata of their own (``AttentionMetadata.windowed``): the
query at position p sees the keys at positions p - window + 1 .. p. The pool keeps every key, so a
cached prefix, a chunk boundary or a verify row changes nothing. For the native kernel each short
query gets a slot row of its own starting at its window's first key (the kernel's causal
``kv_lens`` contract, unchanged); the SDPA paths add the window to their masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.layers.flashinfer_attention import FlashInferGroup
from sglang_dspark.model_executor.forward_batch import ForwardBatch

SHORT_EXTEND_MAX = 16  # extends up to this many tokens join the short group


@dataclass
class LongExtend:
    q_start: int
    q_end: int
    kv_slots: torch.Tensor  # [S] int64
    mask: torch.Tensor | None  # [e, S] bool, True = may attend; None = plain causal without prefix


@dataclass
class PaddedShortGroup:
    """Short extends padded to [Bp, E] queries over [Bp, S] gathered keys, for torch's SDPA."""

    q_index: torch.Tensor | None  # [Bp, E] flat-token rows (padding -> row 0); None when every request decodes
    q_valid: torch.Tensor | None  # [Bp, E] bool
    kv_slots: torch.Tensor  # [Bp, S] int64 (padding -> slot 0)
    mask: torch.Tensor | None  # [Bp, 1, E, S] bool, None when every key is visible


@dataclass
class PoolShortGroup:
    """Short-extend queries for the native kernel, which reads K/V in place from the pool."""

    q_index: torch.Tensor | None  # [Ns] flat-token rows of the short queries; None = all tokens, in order
    q_rows: torch.Tensor  # [Ns] int64 row of kv_slots holding each query's request
    kv_lens: torch.Tensor  # [Ns] int64 keys each query sees (causal)
    kv_slots: torch.Tensor  # [Bs, S] int64
    attend: PoolAttentionFn


@dataclass
class AttentionMetadata:
    short: PaddedShortGroup | PoolShortGroup | FlashInferGroup | None  # FlashInfer takes every query
    long: list[LongExtend]
    window: int | None = None  # keys each query sees (itself included); None = all before it
    windowed: AttentionMetadata | None = None  # the same batch for the model's sliding-window layers


def build_attention_metadata(
    fb: ForwardBatch,
    pool_attention: PoolAttentionFn | None = None,
    all_in_pool: bool = False,
    sliding_window: int | None = None,
) -> AttentionMetadata:
    """Groups the batch's requests; ``all_in_pool`` sends every query, prefill chunks included, to
    ``pool_attention`` (batch-invariant: each query's result is independent of chunking and batch).
    ``sliding_window``: the window of the model's sliding layers, if it has any (fills ``windowed``)."""
    meta = _group(fb, pool_attention, all_in_pool, None)
    if sliding_window is not None:
        meta.windowed = _group(fb, pool_attention, all_in_pool, sliding_window)
    return meta


def _group(
    fb: ForwardBatch, pool_attention: PoolAttentionFn | None, all_in_pool: bool, window: int | None
) -> AttentionMetadata:
    if all_in_pool and pool_attention is None:
        raise ValueError("all_in_pool needs the native pool attention kernel")
    starts = [0]
    for e in fb.extend_lens:
        starts.append(starts[-1] + e)
    short_max = max(fb.extend_lens, default=0) if all_in_pool else SHORT_EXTEND_MAX
    short = [i for i, e in enumerate(fb.extend_lens) if e <= short_max]
    long = [_long_extend(fb, i, starts[i], window) for i, e in enumerate(fb.extend_lens) if e > short_max]
    if not short:
        return AttentionMetadata(None, long, window)
    dev = fb.req_to_token.device  # the metadata lives where the pool and the model run
    ext_list, seq_list = [fb.extend_lens[i] for i in short], [fb.seq_lens[i] for i in short]
    kv_slots = fb.req_to_token[:, : max(seq_list)][fb.req_pool_indices[short]]  # [Bs, S]
    elen = torch.tensor(ext_list, device=dev)  # [Bs]
    seq = torch.tensor(seq_list, device=dev)  # [Bs]
    # decided from the host's lists, so that building the metadata never waits for the device
    decode = max(ext_list) == 1
    windowed = window is not None and max(seq_list) > window
    # the short queries' flat rows are needed unless they are the whole batch in order (one per request)
    q_starts = None  # [Bs] first flat row of each request
    if long or (pool_attention is None and not decode):
        q_starts = torch.tensor([starts[i] for i in short], device=dev)
    if pool_attention is not None:
        cut = window if windowed else None  # rows of their own only where some window starts past a first key
        group = _pool_group(q_starts, elen, seq, kv_slots, not long, pool_attention, cut, sum(ext_list), decode)
        return AttentionMetadata(group, long, window)
    need_mask = not decode or len(set(seq_list)) > 1 or windowed
    group = _padded_group(q_starts, elen, seq, kv_slots, not long, window, max(ext_list), need_mask)
    return AttentionMetadata(group, long, window)


def _long_extend(fb: ForwardBatch, i: int, q_start: int, window: int | None) -> LongExtend:
    e, s = fb.extend_lens[i], fb.seq_lens[i]
    prefix = s - e
    first = 0 if window is None else max(0, prefix + 1 - window)  # the first query's first key
    slots = fb.req_to_token[fb.req_pool_indices[i], first:s]
    dev = slots.device
    k_abs = torch.arange(first, s, device=dev)[None, :]  # [1, S]
    q_abs = (prefix + torch.arange(e, device=dev))[:, None]  # [e, 1]
    mask = k_abs <= q_abs
    if window is not None:
        mask &= k_abs > q_abs - window
    plain_causal = prefix == 0 and (window is None or s <= window)
    return LongExtend(q_start, q_start + e, slots, None if plain_causal else mask)


def _pool_group(
    q_starts: torch.Tensor | None,
    elen: torch.Tensor,
    seq: torch.Tensor,
    kv_slots: torch.Tensor,
    all_short: bool,
    attend: PoolAttentionFn,
    window: int | None,
    num_queries: int,
    decode: bool,
) -> PoolShortGroup:
    """``window``: set only when some query's window starts after its request's first key."""
    dev = seq.device
    if decode:  # one new token per request: query b sees all of request b's keys
        q_rows, offset, kv_lens = torch.arange(len(seq), device=dev), torch.zeros_like(elen), seq
    else:
        q_rows = torch.repeat_interleave(torch.arange(len(seq), device=dev), elen, output_size=num_queries)  # [Ns]
        first = torch.cumsum(elen, 0) - elen  # [Bs] offset of each request's first query in the group
        offset = torch.arange(len(q_rows), device=dev) - first[q_rows]  # [Ns] j: position among its new tokens
        kv_lens = (seq - elen)[q_rows] + offset + 1
    q_index = None if all_short else q_starts[q_rows] + offset
    if window is not None:
        # one slot row per query, from its window's first key: [Ns, W]
        key_start = (kv_lens - window).clamp(min=0)  # [Ns]
        cols = (key_start[:, None] + torch.arange(window, device=dev)[None, :]).clamp(max=kv_slots.shape[1] - 1)
        kv_slots = kv_slots[q_rows[:, None], cols]
        q_rows, kv_lens = torch.arange(len(q_rows), device=dev), kv_lens - key_start
    return PoolShortGroup(q_index, q_rows, kv_lens, kv_slots.contiguous(), attend)


def _padded_group(
    q_starts: torch.Tensor | None,
    elen: torch.Tensor,
    seq: torch.Tensor,
    kv_slots: torch.Tensor,
    all_short: bool,
    window: int | None,
    ext: int,
    need_mask: bool,
) -> PaddedShortGroup:
    """ext: the most new tokens of a request; need_mask: whether some query does not see every key;
    q_starts: None when every request decodes and is the whole batch (no query rows to look up)."""
    dev, max_s = seq.device, kv_slots.shape[1]
    kv_pos = torch.arange(max_s, device=dev)
    kv_valid = kv_pos[None, :] < seq[:, None]  # [Bp, S]
    kv_slots = torch.where(kv_valid, kv_slots, torch.zeros_like(kv_slots))
    q_off = torch.arange(ext, device=dev)
    q_valid = q_index = mask = None
    if not (all_short and ext == 1):
        q_valid = q_off[None, :] < elen[:, None]  # [Bp, E]
        q_index = torch.where(q_valid, q_starts[:, None] + q_off[None, :], 0)
    if need_mask:
        # query j of request b sits at absolute position seq - elen + j and sees keys <= that position
        q_abs = (seq - elen)[:, None] + q_off[None, :]  # [Bp, E]
        mask = (kv_pos[None, None, :] <= q_abs[:, :, None]) & kv_valid[:, None, :]  # [Bp, E, S]
        if window is not None:
            mask &= kv_pos[None, None, :] > q_abs[:, :, None] - window
        mask = mask[:, None]
    return PaddedShortGroup(q_index=q_index, q_valid=q_valid, kv_slots=kv_slots, mask=mask)


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
    """buf [T, H, D], slots [...] -> [..., H, D]; index_select copies whole rows (faster than buf[slots])."""
    return buf.index_select(0, slots.reshape(-1)).view(*slots.shape, *buf.shape[1:])


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer_id: int,
    fb: ForwardBatch,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """q [N, Hq, D], k/v [N, Hkv, D] for the new tokens -> [N, Hq * D]. Writes k/v to the pool first.
    ``sliding_window``: this layer's window (the batch's metadata must have been built with it)."""
    meta: AttentionMetadata = fb.attn_metadata  # type: ignore[assignment]
    if sliding_window is not None:
        meta = meta.windowed
        if meta is None or meta.window != sliding_window:
            raise ValueError(f"attention metadata was not built for a sliding window of {sliding_window}")
    pool = fb.kv_pool
    pool.set_kv(layer_id, fb.out_cache_loc, k, v)
    k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
    n, hq, d = q.shape
    short = meta.short

    if isinstance(short, FlashInferGroup):
        return short.attend(q, k_buf, v_buf).view(n, hq * d)
    if isinstance(short, PoolShortGroup) and short.q_index is None:
        out = short.attend(q.contiguous(), k_buf, v_buf, short.kv_slots, short.q_rows, short.kv_lens, scale)
        return out.view(n, hq * d)
    if isinstance(short, PaddedShortGroup) and short.q_index is None:  # pure decode
        kk, vv = _gather(k_buf, short.kv_slots), _gather(v_buf, short.kv_slots)
        return _grouped_sdpa(q[:, None], kk, vv, short.mask, scale).reshape(n, hq * d)

    out = q.new_empty(n, hq, d)
    if isinstance(short, PoolShortGroup):
        qs = q.index_select(0, short.q_index)
        out[short.q_index] = short.attend(qs, k_buf, v_buf, short.kv_slots, short.q_rows, short.kv_lens, scale)
    elif isinstance(short, PaddedShortGroup):
        kk, vv = _gather(k_buf, short.kv_slots), _gather(v_buf, short.kv_slots)
        res = _grouped_sdpa(q[short.q_index], kk, vv, short.mask, scale)
        out[short.q_index[short.q_valid]] = res[short.q_valid]
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
