import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_ops import cpu_lacks_bf16_gemm, load_cpu_ops, select_cpu_ops
from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.layers.linear import QKVParallelLinear, RowParallelLinear
from sglang_dspark.layers.rotary_embedding import RotaryEmbedding, apply_rotary
from sglang_dspark.model_executor.model_runner import use_cpu_ops

pytestmark = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="native kernels need AVX2 + FMA"
)


@pytest.fixture(scope="module")
def ops():
    return load_cpu_ops()


def _gen(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) % 2**31)


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 67])  # every row-tile remainder, and more than one row block
@pytest.mark.parametrize("n, k", [(64, 32), (33, 40), (7, 13)])  # odd N (last row alone), K not a multiple of 8
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_fp32_reference(ops, m, n, k, bias):
    gen = _gen(m, n, k)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    want = F.linear(x.float(), w.float(), None if b is None else b.float())  # exact products of bf16 inputs
    got = ops.linear(x, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    # fp32 accumulation, one bf16 rounding of the output: relative error <= 2^-8
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-5)


def test_linear_fp32_input_gives_fp32_output(ops):
    x, w = torch.randn(3, 16), torch.randn(5, 16).bfloat16()
    got = ops.linear(x, w, None)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, x @ w.float().t(), rtol=1e-5, atol=1e-5)


def test_linear_rejects_bad_weights(ops):
    with pytest.raises(RuntimeError, match="bfloat16"):
        ops.linear(torch.randn(2, 4).bfloat16(), torch.randn(3, 4), None)
    with pytest.raises(RuntimeError, match="bfloat16"):
        ops.linear(torch.randn(2, 4).bfloat16(), torch.randn(4, 3).bfloat16().t(), None)  # not contiguous
    with pytest.raises(RuntimeError, match="K"):
        ops.linear(torch.randn(2, 5).bfloat16(), torch.randn(3, 4).bfloat16(), None)


# ---------------------------------------------------------------- rms_norm


def _hf_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, written out."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * normed.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_rms_norm_matches_hf(ops, dtype, n):
    gen = _gen(n, 576)
    x = (3 * torch.randn(n, 576, generator=gen)).to(dtype)
    r = torch.randn(n, 576, generator=gen).to(dtype)
    w = torch.randn(576, generator=gen).to(dtype)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), _hf_rms_norm(x, w, 1e-5), **tol)
    normed, total = ops.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(total, x + r)  # the residual sum is rounded to the dtype exactly like torch's add
    torch.testing.assert_close(normed, _hf_rms_norm(x + r, w, 1e-5), **tol)
    assert not torch.equal(r, total)  # inputs are not modified in place


def test_rms_norm_module_routes_through_kernel(ops):
    norm = RMSNorm(64, 1e-6).bfloat16()
    torch.nn.init.normal_(norm.weight)
    x, r = torch.randn(2, 3, 64).bfloat16(), torch.randn(2, 3, 64).bfloat16()
    want_n, want_sum = norm(x, r)
    norm.cpu_ops = ops
    got_n, got_sum = norm(x, r)
    assert got_n.shape == (2, 3, 64) and torch.equal(got_sum, want_sum)
    torch.testing.assert_close(got_n, want_n, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(norm(x), _hf_rms_norm(x, norm.weight, 1e-6), rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- pool attention


# bf16 pools: the CPU's bf16 dot products where it has them (AVX512_BF16), else (and with bf16_dot=False) the fp32
# path of every AVX2 CPU; fp32 pools always take the latter
DTYPES = [
    pytest.param(torch.bfloat16, True, id="bf16"),
    pytest.param(torch.bfloat16, False, id="bf16-fp32-path"),
    pytest.param(torch.float32, False, id="fp32"),
]


@pytest.mark.parametrize("dtype, bf16_dot", DTYPES)
@pytest.mark.parametrize("hq, hkv", [(4, 4), (6, 2), (9, 3), (14, 2), (4, 1)])
def test_pool_attention_matches_sdpa_over_gathered_kv(ops, dtype, bf16_dot, hq, hkv):
    gen = _gen(hq, hkv)
    d, pool = 32, 50
    k_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    v_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    slots = torch.randperm(pool, generator=gen)[: 3 * 13].view(3, 13)  # scattered slots, padding past each length
    # decode queries (one per row), several queries on one row (a verify chain), rows out of order
    rows = torch.tensor([2, 0, 1, 1, 1, 2])
    lens = torch.tensor([13, 1, 5, 6, 7, 4])
    q = torch.randn(6, hq, d, generator=gen).to(dtype)
    got = ops.pool_attention(q, k_buf, v_buf, slots, rows, lens, d**-0.5, bf16_dot=bf16_dot)
    for n in range(6):
        kv_slots = slots[rows[n], : lens[n]]
        kk, vv = k_buf[kv_slots].float().transpose(0, 1), v_buf[kv_slots].float().transpose(0, 1)  # [Hkv, S, D]
        want = F.scaled_dot_product_attention(q[n].float()[:, None], kk, vv, scale=d**-0.5, enable_gqa=True)[:, 0]
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(got[n].float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, bf16_dot", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 72, 256])
def test_pool_attention_over_long_contexts(ops, dtype, bf16_dot, d):
    """Lengths around and past the 8-key blocks and head dims in 64-wide register chunks (72: a partial
    chunk), with scores spread wide enough that the softmax underflows for some keys."""
    gen = _gen(d, 7)
    hq, hkv, pool = 9, 3, 700
    k_buf = (4 * torch.randn(pool, hkv, d, generator=gen)).to(dtype)
    v_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    slots = torch.randperm(pool, generator=gen)[: 2 * 300].view(2, 300)
    lens = torch.tensor([1, 7, 8, 9, 16, 63, 257, 300])
    rows = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    q = (4 * torch.randn(len(lens), hq, d, generator=gen)).to(dtype)
    got = ops.pool_attention(q, k_buf, v_buf, slots, rows, lens, d**-0.5, bf16_dot=bf16_dot)
    for n in range(len(lens)):
        kv_slots = slots[rows[n], : lens[n]]
        kk, vv = k_buf[kv_slots].float().transpose(0, 1), v_buf[kv_slots].float().transpose(0, 1)
        want = F.scaled_dot_product_attention(q[n].float()[:, None], kk, vv, scale=d**-0.5, enable_gqa=True)[:, 0]
        tol = 1e-2 if dtype == torch.bfloat16 else 5e-5  # fp32 sums over up to 300 keys in another order
        torch.testing.assert_close(got[n].float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, bf16_dot", DTYPES)
@pytest.mark.parametrize("hq, hkv, d", [(9, 3, 64), (14, 2, 72), (4, 1, 32), (4, 1, 256)])
def test_pool_attention_heads_do_not_depend_on_their_work_item(ops, dtype, bf16_dot, hq, hkv, d):
    """The query heads of a KV head are scored and weighed together (up to three per work item): each head's
    output is bit for bit what it gets attending alone, so no head's numbers depend on how heads are grouped."""
    gen = _gen(hq, d)
    pool = 400
    k_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    v_buf = torch.randn(pool, hkv, d, generator=gen).to(dtype)
    slots = torch.randperm(pool, generator=gen)[: 2 * 150].view(2, 150)
    rows, lens = torch.tensor([0, 1, 1]), torch.tensor([150, 9, 131])
    q = torch.randn(3, hq, d, generator=gen).to(dtype)
    got = ops.pool_attention(q, k_buf, v_buf, slots, rows, lens, d**-0.5, bf16_dot=bf16_dot)
    g = hq // hkv
    for head in range(hq):
        kv = slice(head // g, head // g + 1)
        q1, k1, v1 = q[:, head : head + 1].contiguous(), k_buf[:, kv].contiguous(), v_buf[:, kv].contiguous()
        alone = ops.pool_attention(q1, k1, v1, slots, rows, lens, d**-0.5, bf16_dot=bf16_dot)
        assert torch.equal(got[:, head], alone[:, 0]), head


@pytest.mark.parametrize("queries", [1, 2, 7])
def test_pool_attention_is_the_same_on_any_number_of_threads(ops, queries):
    """Work items are split among the threads by the keys they read (requests of very different lengths here);
    every query's every head is computed once and alike whatever the split, threads beyond the items included."""
    gen = _gen(queries, 5)
    hq, hkv, d, pool = 6, 2, 32, 600
    k_buf = torch.randn(pool, hkv, d, generator=gen).bfloat16()
    v_buf = torch.randn(pool, hkv, d, generator=gen).bfloat16()
    slots = torch.randperm(pool, generator=gen)[: 7 * 80].view(7, 80)
    lens = torch.tensor([80, 3, 77, 1, 40, 9, 64])[:queries]
    rows = torch.arange(queries)
    q = torch.randn(queries, hq, d, generator=gen).bfloat16()
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            outs.append(ops.pool_attention(q, k_buf, v_buf, slots, rows, lens, d**-0.5))
    finally:
        torch.set_num_threads(before)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    kv_slots = slots[0, : lens[0]]
    kk, vv = k_buf[kv_slots].float().transpose(0, 1), v_buf[kv_slots].float().transpose(0, 1)
    want = F.scaled_dot_product_attention(q[0].float()[:, None], kk, vv, scale=d**-0.5, enable_gqa=True)[:, 0]
    torch.testing.assert_close(outs[0][0].float(), want, rtol=1e-2, atol=1e-2)


def test_pool_attention_takes_the_bf16_dot_products_where_the_cpu_has_them(ops):
    """Both bf16 paths agree to bf16 rounding; they differ in the last bits exactly where AVX512_BF16 exists
    (probabilities rounded to bf16 there, sums in another order), so the dispatch is not dead code."""
    gen = _gen(11)
    k_buf, v_buf = torch.randn(2, 300, 3, 64, generator=gen).bfloat16()
    slots, rows, lens = torch.arange(300).view(1, 300), torch.zeros(4, dtype=torch.long), torch.tensor([300, 5, 77, 1])
    q = torch.randn(4, 9, 64, generator=gen).bfloat16()
    dot, fp32 = (ops.pool_attention(q, k_buf, v_buf, slots, rows, lens, 0.125, bf16_dot=b) for b in (True, False))
    torch.testing.assert_close(dot, fp32, rtol=1e-2, atol=1e-2)
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    assert torch.equal(dot, fp32) == ("avx512_bf16" not in flags)


def test_pool_attention_rejects_bad_inputs(ops):
    q, kv, slots = torch.randn(1, 2, 8), torch.randn(4, 2, 8), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="kv_lens"):
        ops.pool_attention(q, kv, kv, slots, torch.tensor([0]), torch.tensor([4]), 1.0)
    with pytest.raises(RuntimeError, match="q_rows"):
        ops.pool_attention(q, kv, kv, slots, torch.tensor([1]), torch.tensor([2]), 1.0)
    with pytest.raises(RuntimeError, match="q_rows and kv_lens"):
        ops.pool_attention(q, kv, kv, slots, torch.tensor([0, 0]), torch.tensor([2]), 1.0)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        kv6 = torch.randn(4, 2, 6)
        ops.pool_attention(torch.randn(1, 2, 6), kv6, kv6, slots, torch.tensor([0]), torch.tensor([1]), 1.0)


# ---------------------------------------------------------------- rotary


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_matches_torch_bit_for_bit_in_place_on_strided_views(ops, dtype):
    gen = _gen(7)
    n, hq, hkv, d = 5, 6, 2, 64
    qkv = torch.randn(n, (hq + 2 * hkv) * d, generator=gen).to(dtype)  # q and k are views of a fused projection
    q, k, _ = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k = q.view(n, hq, d), k.view(n, hkv, d)
    rope = RotaryEmbedding(d, 64, 10000.0)
    cos, sin = rope.cos_sin(torch.tensor([0, 3, 9, 20, 63]), dtype)
    want_q, want_k = apply_rotary(q, k, cos, sin)
    got_q, got_k = ops.rotary(q, k, cos, sin)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()  # rotated in place
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


def test_rotary_rejects_mismatched_inputs(ops):
    q, k, cos = torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.randn(2, 1, 8)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.rotary(q, k, cos.bfloat16(), cos.bfloat16())
    with pytest.raises(RuntimeError, match="cos/sin"):
        ops.rotary(q, k, torch.randn(3, 1, 8), torch.randn(3, 1, 8))


# ---------------------------------------------------------------- SiLU(gate) * up


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("i", [8, 13, 1536])  # whole 8-wide chunks, a partial last chunk
def test_silu_mul_matches_torch(ops, dtype, i):
    gen = _gen(i)
    gate_up = (6 * torch.randn(5, 2 * i, generator=gen)).to(dtype)
    gate_up[0, :4] = torch.tensor([0.0, -90.0, 90.0, -1e-30])  # zero, far tails, a tiny negative
    got = ops.silu_mul(gate_up)
    want = F.silu(gate_up[:, :i]) * gate_up[:, i:]  # rounded as torch rounds: SiLU, then the product
    assert got.dtype == dtype and got.shape == (5, i)
    if dtype == torch.bfloat16:  # another exp: the rounded SiLU may differ from torch's by one unit (2^-8)
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # each row alone: the same bits as in the batch
    assert all(torch.equal(ops.silu_mul(gate_up[n : n + 1])[0], got[n]) for n in range(5))


def test_silu_mul_rejects_odd_widths(ops):
    with pytest.raises(RuntimeError, match="2 I"):
        ops.silu_mul(torch.randn(2, 7))


# ---------------------------------------------------------------- selection and wiring


def test_selection():
    assert select_cpu_ops("torch", "cpu", torch.bfloat16) is None
    assert select_cpu_ops("native", "cpu", torch.float32) is None  # the kernels are for bf16 weights only
    assert select_cpu_ops("auto", "cuda", torch.bfloat16) is None
    native = select_cpu_ops("native", "cpu", torch.bfloat16)
    assert native is not None and native.linear is not torch.nn.functional.linear
    auto = select_cpu_ops("auto", "cpu", torch.bfloat16)
    # auto: native attention and norms everywhere; the matmul is torch's where the CPU has bf16 GEMM
    assert auto.pool_attention is native.pool_attention and auto.add_rms_norm is native.add_rms_norm
    assert (auto.linear is torch.nn.functional.linear) == (not cpu_lacks_bf16_gemm())
    # torch's SiLU for dense bf16 models (HF's bits); the batch-invariant ops (quantized models) take the native one
    assert native.silu_mul is None and auto.silu_mul is None
    assert select_cpu_ops("auto", "cpu", torch.bfloat16, batch_invariant=True).silu_mul is not None


def test_layers_route_through_the_kernels(ops):
    torch.manual_seed(0)
    layers = torch.nn.Sequential(QKVParallelLinear(32, 8, 4, 2, bias=True), RowParallelLinear(64, 16), RMSNorm(16))
    for p in layers.parameters():
        torch.nn.init.normal_(p)
    layers = layers.bfloat16()
    x = torch.randn(2, 3, 32).bfloat16()  # leading dims are flattened and restored
    want = layers(x)
    use_cpu_ops(layers, ops)
    assert layers[0].linear_fn is ops.linear and layers[1].linear_fn is ops.linear and layers[2].cpu_ops is ops
    got = layers(x)
    assert got.shape == want.shape == (2, 3, 16)
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)
