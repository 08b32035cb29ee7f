"""Block-quantized weight formats (GGML's layouts), kept quantized in memory: layout, dequantize, quantize.

A quantized weight [N, K] is a uint8 tensor [N, K / 32 * block_bytes]: each row is a run of GGML blocks of
32 weights along K, in the byte layout of the GGUF file, so a GGUF tensor is used as read and the native
matmul (quant_linear.py) streams exactly the file's bytes:

- ``Q4_0``: fp16 d, 16 bytes of nibbles; w = (q - 8) * d;
- ``Q4_1``: fp16 d, fp16 m, 16 bytes of nibbles; w = q * d + m;
- ``Q8_0``: fp16 d, 32 int8; w = q * d (also what ``--quantization int8`` makes of a dense weight).

In a block, byte j holds weight j in its low nibble and weight j + 16 in its high nibble. The torch
dequantizers here are the model's reference (``--quantization none`` and embedding rows); the native kernel is
tested against gguf-py's independent dequantizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 32  # weights per block along K, for every supported type


@dataclass(frozen=True)
class QuantFormat:
    name: str  # GGML's type name
    ggml_type: int  # GGML's type id (gguf.GGMLQuantizationType)
    block_bytes: int
    kernel_id: int  # the native kernel's switch value (csrc_avx512/quant_linear.cpp, QType)


FORMATS = {
    f.name: f
    for f in (
        QuantFormat("Q4_0", 2, 18, 0),
        QuantFormat("Q4_1", 3, 20, 1),
        QuantFormat("Q8_0", 8, 34, 2),
    )
}
FORMATS_BY_GGML_TYPE = {f.ggml_type: f for f in FORMATS.values()}


@dataclass
class QuantizedWeight:
    """A [rows, cols] weight kept in a block format: data [rows, cols / 32 * block_bytes] uint8."""

    fmt: QuantFormat
    data: Tensor
    cols: int

    def __post_init__(self) -> None:
        if self.data.dtype != torch.uint8 or self.data.dim() != 2 or self.cols % BLOCK:
            raise ValueError(f"{self.fmt.name} weight: data must be 2-D uint8 and cols a multiple of {BLOCK}")
        if self.data.shape[1] != self.cols // BLOCK * self.fmt.block_bytes:
            raise ValueError(f"{self.fmt.name} weight: {self.data.shape[1]} bytes per row for {self.cols} columns")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.shape[0], self.cols)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def rows(self, ids: Tensor) -> QuantizedWeight:
        """The weight's rows ``ids`` [n] (an embedding lookup)."""
        return QuantizedWeight(self.fmt, self.data[ids], self.cols)


def dequantize(w: QuantizedWeight) -> Tensor:
    """w [N, K] quantized -> [N, K] float32."""
    n = w.data.shape[0]
    blocks = w.data.view(n, -1, w.fmt.block_bytes)  # [N, K/32, block_bytes]
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()  # [N, K/32, 1]
    if w.fmt.name == "Q8_0":
        q = blocks[..., 2:].contiguous().view(torch.int8).float()
        return (q * d).view(n, w.cols)
    start = 4 if w.fmt.name == "Q4_1" else 2
    packed = blocks[..., start:]  # [N, K/32, 16]
    q = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()  # [N, K/32, 32]
    if w.fmt.name == "Q4_1":
        m = blocks[..., 2:4].contiguous().view(torch.float16).float()
        return (q * d + m).view(n, w.cols)
    return ((q - 8) * d).view(n, w.cols)


def quantize_q8_0(w: Tensor) -> QuantizedWeight:
    """w [N, K] (K a multiple of 32) -> Q8_0 as GGML rounds: d = max|w| / 127 per block, q = w * (1 / d) rounded
    half away from zero."""
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"int8 quantization needs a multiple of {BLOCK} columns, got {k}")
    blocks = w.detach().float().reshape(n, k // BLOCK, BLOCK)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127.0  # [N, K/32, 1]
    scaled = blocks * torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = (scaled.sign() * (scaled.abs() + 0.5).floor()).clamp(-127, 127).to(torch.int8)
    d16 = d.to(torch.float16)
    data = torch.cat([d16.view(torch.uint8), q.view(torch.uint8)], dim=-1).reshape(n, -1)
    return QuantizedWeight(FORMATS["Q8_0"], data.contiguous(), k)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack weights of one format and width along their rows (merged q/k/v and gate/up projections)."""
    fmts = {p.fmt.name for p in parts}
    cols = {p.cols for p in parts}
    if len(fmts) != 1 or len(cols) != 1:
        raise ValueError(f"cannot merge quantized shards of formats {sorted(fmts)} and widths {sorted(cols)}")
    return QuantizedWeight(parts[0].fmt, torch.cat([p.data for p in parts]), parts[0].cols)
