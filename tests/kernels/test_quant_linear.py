"""The quantized matmul against dequantize-then-matmul, on random blocks of every supported GGML type."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from sglang_dspark.kernels.quant_formats import FORMATS, QuantizedWeight, concat_rows, dequantize, quantize_q8_0
from sglang_dspark.kernels.quant_linear import missing_cpu_flags, quant_linear

needs_avx512 = pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")


def random_weight(name: str, rows: int, cols: int, seed: int) -> QuantizedWeight:
    """Random blocks quantized by gguf-py (GGML's own rounding), so every bit pattern GGML writes occurs."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    data = gguf.quants.quantize(w, gguf.GGMLQuantizationType[name])
    return QuantizedWeight(FORMATS[name], torch.from_numpy(np.array(data)), cols)


def gguf_dequantize(w: QuantizedWeight) -> torch.Tensor:
    """gguf-py's dequantizer: an implementation independent of ours."""
    dense = gguf.quants.dequantize(w.data.numpy(), gguf.GGMLQuantizationType[w.fmt.name])
    return torch.from_numpy(np.array(dense, dtype=np.float32))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_dequantize_matches_gguf(name):
    w = random_weight(name, 37, 96, seed=1)
    torch.testing.assert_close(dequantize(w), gguf_dequantize(w), rtol=1e-6, atol=1e-7)


@needs_avx512
@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("rows", [1, 3, 4, 9, 70])  # tiles of 4 rows, remainders, more than one 64-row pass
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_matches_dequantized_reference(name, rows, bias):
    w = random_weight(name, 45, 160, seed=rows)  # 45 weight rows: panels of 4 and a remainder of 1
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 160, generator=gen)
    b = torch.randn(45, generator=gen) if bias else None
    dense, b64 = gguf_dequantize(w).double(), None if b is None else b.double()
    got = quant_linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (rows, 45)
    torch.testing.assert_close(got.double(), torch.nn.functional.linear(x.double(), dense, b64), rtol=1e-5, atol=1e-4)
    got_bf16 = quant_linear(x.bfloat16(), w, b)  # bf16 activations: widened to fp32, result rounded to bf16
    assert got_bf16.dtype == torch.bfloat16
    want_bf16 = torch.nn.functional.linear(x.bfloat16().double(), dense, b64)
    torch.testing.assert_close(got_bf16.double(), want_bf16, rtol=1e-2, atol=1e-2)


@needs_avx512
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_row_is_independent_of_the_batch(name):
    """Bit-identical rows whether computed alone or inside a batch of any size: what makes a verify chain give
    the same logits as decoding its tokens one by one."""
    w = random_weight(name, 21, 576, seed=5)
    x = torch.randn(67, 576, generator=torch.Generator().manual_seed(5)).bfloat16()
    full = quant_linear(x, w, None)
    for size in (1, 2, 5, 8):
        parts = torch.cat([quant_linear(x[i : i + size], w, None) for i in range(0, 67, size)])
        assert torch.equal(parts, full), size


def test_q8_0_quantizer_matches_gguf():
    w = torch.randn(10, 64, generator=torch.Generator().manual_seed(3))
    ours = quantize_q8_0(w)
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(ours.data, torch.from_numpy(np.array(theirs)))
    torch.testing.assert_close(dequantize(ours), w, atol=w.abs().max().item() / 127, rtol=0)


def test_rows_and_concat_keep_the_block_layout():
    a, b = random_weight("Q4_1", 5, 64, seed=7), random_weight("Q4_1", 3, 64, seed=8)
    merged = concat_rows([a, b])
    assert merged.shape == (8, 64)
    torch.testing.assert_close(dequantize(merged), torch.cat([dequantize(a), dequantize(b)]))
    torch.testing.assert_close(dequantize(merged.rows(torch.tensor([6, 0]))), dequantize(merged)[[6, 0]])
    with pytest.raises(ValueError, match="Q4_1.*Q8_0"):
        concat_rows([a, random_weight("Q8_0", 2, 64, seed=9)])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="bytes per row"):
        QuantizedWeight(FORMATS["Q4_0"], torch.zeros(2, 19, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(torch.zeros(2, 40))
