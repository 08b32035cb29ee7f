"""The Triton pool attention (kernels/pool_attention_triton.py) against torch's SDPA over gathered keys, in
Triton's interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU) or on the GPU: decode queries,
verify chains, rows out of order, grouped-query heads, head dims that are not powers of two."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def kernel():
    pytest.importorskip("triton", reason="triton is not installed: Triton kernel tests skipped")
    return importlib.import_module("sglang_dspark.kernels.pool_attention_triton").pool_attention_triton


def reference(q, k_buf, v_buf, slots, rows, lens, scale):
    out = []
    for n in range(len(q)):
        kv_slots = slots[rows[n], : lens[n]]
        kk, vv = k_buf[kv_slots].float().transpose(0, 1), v_buf[kv_slots].float().transpose(0, 1)  # [Hkv, S, D]
        out.append(F.scaled_dot_product_attention(q[n].float()[:, None], kk, vv, scale=scale, enable_gqa=True)[:, 0])
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("hq, hkv, d", [(4, 4, 16), (6, 2, 24), (9, 3, 64)])
def test_matches_sdpa_over_gathered_keys(kernel, triton_device, dtype, hq, hkv, d):
    gen = torch.Generator().manual_seed(hq * 100 + d)
    pool = 120
    k_buf = (3 * torch.randn(pool, hkv, d, generator=gen)).to(dtype)
    v_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    slots = torch.randperm(pool, generator=gen)[: 3 * 40].view(3, 40)  # scattered slots, padding past each length
    rows = torch.tensor([2, 0, 1, 1, 1, 2, 0])  # a verify chain on row 1, rows out of order
    lens = torch.tensor([40, 1, 31, 32, 33, 5, 17])  # around the kernel's 32-key blocks
    q = (3 * torch.randn(len(rows), hq, d, generator=gen)).to(dtype)
    args = [t.to(triton_device) for t in (q, k_buf, v_buf, slots, rows, lens)]
    got = kernel(*args, d**-0.5).cpu()
    assert got.dtype == dtype and got.shape == q.shape
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.float(), reference(q, k_buf, v_buf, slots, rows, lens, d**-0.5), rtol=tol, atol=tol)


def test_rejects_bad_inputs(kernel):
    q, kv, slots = torch.randn(1, 4, 8), torch.randn(4, 3, 8), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="Hkv dividing"):
        kernel(q, kv, kv, slots, torch.tensor([0]), torch.tensor([2]), 1.0)
    kv = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match="one entry per query"):
        kernel(q, kv, kv, slots, torch.tensor([0, 0]), torch.tensor([2]), 1.0)
    with pytest.raises(ValueError, match="kv_lens >= 1"):
        kernel(q, kv, kv, slots, torch.tensor([0]), torch.tensor([0]), 1.0)
