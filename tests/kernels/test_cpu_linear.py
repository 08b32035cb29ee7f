import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.kernels.cpu_linear import load_bf16_linear, select_linear_fn
from sglang_dspark.layers.linear import QKVParallelLinear, RowParallelLinear, use_linear_fn

needs_avx2 = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="native kernel needs AVX2 + FMA"
)


@pytest.fixture(scope="module")
def kernel():
    return load_bf16_linear()


@needs_avx2
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 67])  # every row-tile remainder, and more than one row block
@pytest.mark.parametrize("n, k", [(64, 32), (33, 40), (7, 13)])  # odd N (last row alone), K not a multiple of 8
@pytest.mark.parametrize("bias", [False, True])
def test_matches_fp32_reference(kernel, m, n, k, bias):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    want = F.linear(x.float(), w.float(), None if b is None else b.float())  # exact products of bf16 inputs
    got = kernel(x, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    # fp32 accumulation, one bf16 rounding of the output: relative error <= 2^-8
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-5)


@needs_avx2
def test_fp32_input_gives_fp32_output(kernel):
    x, w = torch.randn(3, 16), torch.randn(5, 16).bfloat16()
    got = kernel(x, w, None)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, x @ w.float().t(), rtol=1e-5, atol=1e-5)


@needs_avx2
def test_rejects_bad_weights(kernel):
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernel(torch.randn(2, 4).bfloat16(), torch.randn(3, 4), None)
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernel(torch.randn(2, 4).bfloat16(), torch.randn(4, 3).bfloat16().t(), None)  # not contiguous
    with pytest.raises(RuntimeError, match="K"):
        kernel(torch.randn(2, 5).bfloat16(), torch.randn(3, 4).bfloat16(), None)


def test_selection():
    assert select_linear_fn("torch", "cpu", torch.bfloat16) is F.linear
    assert select_linear_fn("native", "cpu", torch.float32) is F.linear  # the kernel is for bf16 weights only
    assert select_linear_fn("auto", "cuda", torch.bfloat16) is F.linear


@needs_avx2
def test_layers_route_through_the_kernel(kernel):
    torch.manual_seed(0)
    layers = torch.nn.Sequential(QKVParallelLinear(32, 8, 4, 2, bias=True), RowParallelLinear(64, 16))
    for p in layers.parameters():
        torch.nn.init.normal_(p)
    layers = layers.bfloat16()
    x = torch.randn(2, 3, 32).bfloat16()  # leading dims are flattened and restored
    want = layers(x)
    use_linear_fn(layers, kernel)
    assert all(m.linear_fn is kernel for m in layers)
    got = layers(x)
    assert got.shape == want.shape == (2, 3, 16)
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2 * want.float().abs().max().item())
