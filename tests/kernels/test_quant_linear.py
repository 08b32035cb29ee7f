"""The quantized matmul against dequantize-then-matmul (gguf-py's dequantizer, activations quantized to int8
per 32 values as the kernel does), on random blocks of every supported GGML type."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from sglang_dspark.kernels import quant_formats
from sglang_dspark.kernels.quant_formats import (
    ALL_FORMATS,
    FORMATS,
    INTERLEAVED,
    QuantizedRowStack,
    QuantizedWeight,
    concat_rows,
    deinterleave,
    dequantize,
    dequantize_rows,
    interleave,
    quantize_q8_0,
    random_blocks,
)
from sglang_dspark.kernels.quant_linear import int8_activations, missing_cpu_flags, quant_linear, quantized_rows

needs_avx512 = pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")
COLS = 512  # two K-quant super-blocks, sixteen 32-weight blocks
TILED = sorted(fmt.name for fmt in INTERLEAVED.values())  # Q4_0x16, ...
KERNEL_FORMATS = sorted(FORMATS) + TILED


def random_weight(name: str, rows: int, seed: int, cols: int = COLS) -> QuantizedWeight:
    """Random blocks of a GGML format, or of an interleaved one (rows rounded up to whole tiles of 16)."""
    fmt = ALL_FORMATS[name]
    rows = -(-rows // fmt.tile_rows) * fmt.tile_rows
    return random_blocks(fmt, rows, cols, torch.Generator().manual_seed(seed))


def gguf_dequantize(w: QuantizedWeight) -> torch.Tensor:
    """gguf-py's dequantizer, called directly: the reference."""
    if w.fmt.tile_rows > 1:
        w = deinterleave(w)
    dense = gguf.quants.dequantize(w.data.numpy(), gguf.GGMLQuantizationType[w.fmt.name])
    return torch.from_numpy(np.array(dense, dtype=np.float32))


def assert_matches_reference(got: torch.Tensor, x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None):
    """got [M, N] against x dense^T + bias in float64, to fp32 accumulation error over K terms."""
    want = torch.nn.functional.linear(x.double(), dense.double(), None if bias is None else bias.double())
    scale = float((x.double().abs() @ dense.double().abs().T).max())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * scale)


@needs_avx512
@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_decode_matches_gguf(name):
    """x = 127 I quantizes exactly (scale 1, q = 127), so the output is 127 times the decoded weights."""
    w = random_weight(name, 13, seed=2)
    want = 127 * gguf_dequantize(w).T
    torch.testing.assert_close(quant_linear(127 * torch.eye(COLS), w, None), want, rtol=1e-5, atol=1e-5)


def test_int8_activations_round_per_group_of_32():
    x = torch.zeros(2, 64)
    x[0, :32] = torch.linspace(-1, 1, 32)
    x[0, 32] = 3.0  # a group with one value: that value is exact, the rest zero
    x[1, 5] = 127.0 * 2.5 / 127  # a tie at 2.5 / 127 of max |x| rounds to even
    x[1, 6] = 127.0
    q = int8_activations(x)
    assert torch.equal(q[0, 32:], x[0, 32:])
    torch.testing.assert_close(q[0, :32], x[0, :32], atol=0.5 / 127, rtol=0)
    assert q[1, 5] == 2.0 and q[1, 6] == 127.0


@needs_avx512
@pytest.mark.parametrize("name", KERNEL_FORMATS)
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 9, 70])  # passes of up to 8 rows of x, and their remainders
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_matches_dequantized_reference(name, rows, bias):
    w = random_weight(name, 45, seed=rows)  # 45 weight rows: panels of 4 and a remainder of 1 (tiled: 48)
    n = w.shape[0]
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, COLS, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    dense = gguf_dequantize(w)
    got = quant_linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (rows, n)
    assert_matches_reference(got, int8_activations(x), dense, b)
    got_bf16 = quant_linear(x.bfloat16(), w, b)  # bf16 activations: widened to fp32, result rounded to bf16
    assert got_bf16.dtype == torch.bfloat16
    got_float = quant_linear(x.bfloat16(), w, b, float_out=True)  # the same sums, not rounded to bf16
    assert got_float.dtype == torch.float32 and torch.equal(got_float.bfloat16(), got_bf16)
    assert_matches_reference(got_float, int8_activations(x.bfloat16()), dense, b)
    # against unquantized activations: the int8 rounding is a small error on every output
    want = torch.nn.functional.linear(x.double(), dense.double(), None if b is None else b.double())
    torch.testing.assert_close(got_bf16.double(), want, rtol=0, atol=2e-2 * float(want.abs().max()))


@needs_avx512
@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_every_row_is_independent_of_the_batch(name):
    """Bit-identical rows whether computed alone or inside a batch of any size: what makes a verify chain give
    the same logits as decoding its tokens one by one."""
    w = random_weight(name, 21, seed=5, cols=768)
    x = torch.randn(67, 768, generator=torch.Generator().manual_seed(5)).bfloat16()
    full = quant_linear(x, w, None)
    for size in (1, 2, 3, 5, 6, 7, 8):  # every pass size over the tiles (67 = 8 x 8 + 3)
        parts = torch.cat([quant_linear(x[i : i + size], w, None) for i in range(0, 67, size)])
        assert torch.equal(parts, full), size


@needs_avx512
def test_shards_of_different_formats_merge_into_a_row_stack():
    """A merged q/k/v whose v shard is Q8_0 and q/k Q5_0 (as in Qwen2.5-Coder's Q4_K_M file): each format stays
    as stored, same-format neighbours are merged, and the matmul (with a bias) covers every row once."""
    q, k, v = random_weight("Q5_0", 8, seed=1), random_weight("Q5_0", 4, seed=2), random_weight("Q8_0", 4, seed=3)
    merged = concat_rows([q, k, v])
    assert isinstance(merged, QuantizedRowStack)
    assert [p.fmt.name for p in merged.parts] == ["Q5_0", "Q8_0"] and merged.shape == (16, COLS)
    assert merged.nbytes == q.nbytes + k.nbytes + v.nbytes
    dense = torch.cat([gguf_dequantize(p) for p in (q, k, v)])
    torch.testing.assert_close(dequantize(merged), dense, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(4)
    x, b = torch.randn(3, COLS, generator=gen), torch.randn(16, generator=gen)
    assert_matches_reference(quant_linear(x, merged, b), int8_activations(x), dense, b)


@pytest.mark.parametrize("base", sorted(INTERLEAVED))
def test_interleaving_keeps_the_weights_in_as_many_bytes(base):
    """The 16-row tiles hold the same weights as GGML's layout in as many bytes (Q4_0, Q4_1 and Q8_0 the same
    bytes reordered; round trip exact, same decoded weights, rows looked up as before); a row count that is not
    whole tiles stays as it is, also as a part of a row stack."""
    w = random_weight(base, 48, seed=11)
    tiled = interleave(w)
    assert tiled.fmt == INTERLEAVED[base] and tiled.data.shape == w.data.shape and tiled.nbytes == w.nbytes
    assert not torch.equal(tiled.data, w.data)
    if base in ("Q4_0", "Q4_1", "Q8_0"):
        assert torch.equal(tiled.data.flatten().sort().values, w.data.flatten().sort().values)
    assert torch.equal(deinterleave(tiled).data, w.data)
    assert torch.equal(dequantize(tiled), gguf_dequantize(w))
    ids = torch.tensor([47, 0, 17, 17, 5])
    assert torch.equal(tiled.rows(ids).data, w.rows(ids).data)
    assert torch.equal(dequantize_rows(tiled, ids), gguf_dequantize(w)[ids])
    odd = random_weight(base, 40, seed=12)
    assert interleave(odd) is odd
    other = "Q8_0" if base == "Q6_K" else "Q6_K"
    stack = interleave(concat_rows([w, random_weight(other, 8, seed=14)]))
    assert [p.fmt.name for p in stack.parts] == [INTERLEAVED[base].name, other]


@pytest.mark.parametrize("base", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_repack_in_runs_of_rows_as_in_one(base, monkeypatch):
    """A K-quant weight is repacked a run of rows at a time (bounded temporaries): the same bytes either way."""
    w = random_weight(base, 48, seed=15)
    whole = interleave(w)
    monkeypatch.setattr(quant_formats, "K_CHUNK_ROWS", 16)
    runs = interleave(w)
    assert torch.equal(runs.data, whole.data) and torch.equal(deinterleave(runs).data, w.data)


def test_q8_0_quantizer_matches_gguf():
    w = torch.randn(10, 64, generator=torch.Generator().manual_seed(3))
    ours = quantize_q8_0(w)
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(ours.data, torch.from_numpy(np.array(theirs)))
    torch.testing.assert_close(dequantize(ours), w, atol=w.abs().max().item() / 127, rtol=0)


def test_rows_and_concat_keep_the_block_layout():
    a, b = random_weight("Q4_K", 5, seed=7), random_weight("Q4_K", 3, seed=8)
    merged = concat_rows([a, b])
    assert isinstance(merged, QuantizedWeight) and merged.shape == (8, COLS)
    torch.testing.assert_close(dequantize(merged), torch.cat([dequantize(a), dequantize(b)]))
    torch.testing.assert_close(dequantize(merged.rows(torch.tensor([6, 0]))), dequantize(merged)[[6, 0]])
    with pytest.raises(ValueError, match="widths"):
        concat_rows([a, random_weight("Q8_0", 2, seed=9, cols=64)])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_row_lookup_decodes_as_gguf(name):
    """An embedding lookup's rows (a torch path for Q8_0) equal gguf-py's decoding of those rows."""
    w = random_weight(name, 9, seed=4)
    ids = torch.tensor([8, 0, 3, 3])
    assert torch.equal(dequantize_rows(w, ids), gguf_dequantize(w)[ids])


@needs_avx512
@pytest.mark.parametrize("name", TILED)
def test_row_lookup_of_tiles_decodes_as_gguf(name):
    """Natively for the 32-weight tiles, through GGML's layout for the K-quant ones."""
    w = random_weight(name, 48, seed=6)
    ids = torch.tensor([47, 0, 16, 16, 31, 5])
    assert torch.equal(quantized_rows(w, ids), gguf_dequantize(w)[ids])
    with pytest.raises((RuntimeError, IndexError), match="out of range"):
        quantized_rows(w, torch.tensor([48]))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="bytes per row"):
        QuantizedWeight(FORMATS["Q4_0"], torch.zeros(2, 19, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="multiple of 256"):
        QuantizedWeight(FORMATS["Q6_K"], torch.zeros(2, 105, dtype=torch.uint8), 128)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(torch.zeros(2, 40))
