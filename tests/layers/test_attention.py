import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_ops import load_cpu_ops
from sglang_dspark.layers.attention import (
    SHORT_EXTEND_MAX,
    PaddedShortGroup,
    PoolShortGroup,
    build_attention_metadata,
    paged_attention,
)
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.forward_batch import ForwardBatch

HQ, HKV, D = 6, 2, 16
LONG = SHORT_EXTEND_MAX + 4
# (cached prefix, new tokens) per request: decode, verify chain, short extend with and without a prefix,
# long extend with and without a prefix
MIXED = [(9, 1), (5, 4), (0, 3), (2, 1), (7, LONG), (0, LONG)]
NATIVE = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _batch(reqs: list[tuple[int, int]], dtype: torch.dtype):
    """A pool holding random prefixes at scattered slots and a ForwardBatch of the new tokens."""
    gen = torch.Generator().manual_seed(len(reqs))
    total = sum(p + e for p, e in reqs)
    pool = KVPool(total + 8, 1, HKV, D, dtype)
    req_to_token = torch.zeros(len(reqs) + 2, 64, dtype=torch.int64)
    slots = (torch.randperm(total + 8, generator=gen) + 1)[:total]
    k_all = torch.randn(total, HKV, D, generator=gen).to(dtype)
    v_all = torch.randn(total, HKV, D, generator=gen).to(dtype)
    q = torch.randn(sum(e for _, e in reqs), HQ, D, generator=gen).to(dtype)
    new_locs, new_rows, at = [], [], 0
    for i, (p, e) in enumerate(reqs):
        row = i + 1  # not the request index, so row lookups are exercised
        req_to_token[row, : p + e] = slots[at : at + p + e]
        pool.set_kv(0, slots[at : at + p], k_all[at : at + p], v_all[at : at + p])
        new_locs.append(slots[at + p : at + p + e])
        new_rows.append(torch.arange(at + p, at + p + e))
        at += p + e
    new_rows = torch.cat(new_rows)
    fb = ForwardBatch(
        input_ids=torch.zeros(len(q), dtype=torch.int64),
        positions=torch.zeros(len(q), dtype=torch.int64),
        out_cache_loc=torch.cat(new_locs),
        req_pool_indices=torch.arange(1, len(reqs) + 1),
        seq_lens=[p + e for p, e in reqs],
        extend_lens=[e for _, e in reqs],
        logits_indices=torch.zeros(0, dtype=torch.int64),
        kv_pool=pool,
        req_to_token=req_to_token,
    )
    return fb, q, k_all[new_rows], v_all[new_rows], (k_all, v_all)


def _reference(reqs, q, kv_all) -> torch.Tensor:
    """Causal attention of each request's new tokens over its whole K/V, fp32."""
    out, qa, at = [], 0, 0
    for p, e in reqs:
        k, v = (t[at : at + p + e].float().transpose(0, 1) for t in kv_all)  # [Hkv, S, D]
        mask = torch.arange(p + e)[None, :] <= (p + torch.arange(e))[:, None]  # [e, S]
        qq = q[qa : qa + e].float().transpose(0, 1)  # [Hq, e, D]
        o = F.scaled_dot_product_attention(qq, k, v, attn_mask=mask, scale=D**-0.5, enable_gqa=True)
        out.append(o.transpose(0, 1).reshape(e, HQ * D))
        qa += e
        at += p + e
    return torch.cat(out)


def _run(reqs, dtype, pool_attention):
    fb, q, k, v, kv_all = _batch(reqs, dtype)
    fb.attn_metadata = build_attention_metadata(fb, pool_attention)
    return fb.attn_metadata, paged_attention(q, k, v, 0, fb, D**-0.5), _reference(reqs, q, kv_all)


@pytest.mark.parametrize("reqs", [MIXED, [(9, 1), (3, 1), (0, 1)], [(5, 4), (4, 1)], [(0, LONG)]])
def test_padded_sdpa_path_matches_reference(reqs):
    meta, got, want = _run(reqs, torch.float32, None)
    assert meta.short is None or isinstance(meta.short, PaddedShortGroup)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not NATIVE, reason="native kernels need AVX2 + FMA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reqs", [MIXED, [(9, 1), (3, 1), (0, 1)], [(5, 4), (4, 1)], [(3, 2), (0, LONG)]])
def test_native_pool_path_matches_reference(reqs, dtype):
    meta, got, want = _run(reqs, dtype, load_cpu_ops().pool_attention)
    assert isinstance(meta.short, PoolShortGroup)
    short_tokens = sum(e for _, e in reqs if e <= SHORT_EXTEND_MAX)
    assert len(meta.short.q_rows) == short_tokens
    assert (meta.short.q_index is None) == all(e <= SHORT_EXTEND_MAX for _, e in reqs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_pool_group_query_lengths_are_causal():
    fb, *_ = _batch([(5, 4), (9, 1)], torch.float32)
    meta = build_attention_metadata(fb, load_cpu_ops().pool_attention if NATIVE else lambda *a: None)
    assert meta.short.q_rows.tolist() == [0, 0, 0, 0, 1]
    assert meta.short.kv_lens.tolist() == [6, 7, 8, 9, 10]
