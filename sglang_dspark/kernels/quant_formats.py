"""Block-quantized weight formats (GGML's layouts), kept quantized in memory: layout, dequantize, quantize.

A quantized weight [N, K] is a uint8 tensor [N, K / block_weights * block_bytes]: each row is a run of GGML
blocks along K, in the byte layout of the GGUF file, so a GGUF tensor is used as read by the native matmul
(quant_linear.py, csrc_avx512/quant_linear.cpp, which documents each layout).
Blocks of 32 weights: ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q8_0`` (also what ``--quantization int8``
makes of a dense weight); super-blocks of 256 weights (the K-quants of llama.cpp's Q4_K_M / Q5_K_M files):
``Q4_K``, ``Q5_K``, ``Q6_K``. ``interleave`` repacks Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 at load time into tiles
of 16 rows (``Q4_0x16`` .. ``Q8_0x16``: the same bytes, reordered so that one 512-bit byte dot product serves
16 rows; Q5_x's fifth bits as masks).

``dequantize`` is gguf-py's dequantizer (the reference the native kernel is tested against, and what an
embedding lookup of a row-major table uses for the few rows it reads; a tiled table's rows are decoded
natively: quant_linear.quantized_rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class QuantFormat:
    name: str  # GGML's type name (gguf.GGMLQuantizationType)
    block_weights: int  # weights per block along K
    block_bytes: int
    kernel_id: int  # the native kernel's switch value (csrc_avx512/quant_linear.cpp, QType)
    fp16_offsets: tuple[int, ...]  # byte offsets of a block's fp16 scales / minimums
    tile_rows: int = 1  # weight rows interleaved per tile (1: GGML's layout, each row a run of blocks)


FORMATS = {
    f.name: f
    for f in (
        QuantFormat("Q4_0", 32, 18, 0, (0,)),
        QuantFormat("Q4_1", 32, 20, 1, (0, 2)),
        QuantFormat("Q8_0", 32, 34, 2, (0,)),
        QuantFormat("Q5_0", 32, 22, 3, (0,)),
        QuantFormat("Q5_1", 32, 24, 4, (0, 2)),
        QuantFormat("Q4_K", 256, 144, 5, (0, 2)),
        QuantFormat("Q5_K", 256, 176, 6, (0, 2)),
        QuantFormat("Q6_K", 256, 210, 7, (208,)),
    )
}
Q8_0_BLOCK = 32  # weights per Q8_0 block (``--quantization int8``)
TILE_ROWS = 16  # weight rows per tile of an interleaved format: the int32 lanes of a 512-bit register
# the GGML format each interleaved format repacks
INTERLEAVED = {
    "Q4_0": QuantFormat("Q4_0x16", 32, 18, 8, (), TILE_ROWS),
    "Q4_1": QuantFormat("Q4_1x16", 32, 20, 9, (), TILE_ROWS),
    "Q8_0": QuantFormat("Q8_0x16", 32, 34, 10, (), TILE_ROWS),
    "Q5_0": QuantFormat("Q5_0x16", 32, 22, 11, (), TILE_ROWS),
    "Q5_1": QuantFormat("Q5_1x16", 32, 24, 12, (), TILE_ROWS),
}
ALL_FORMATS = {**FORMATS, **{f.name: f for f in INTERLEAVED.values()}}  # by name, GGML's and the tiled
HIGH_BITS = {"Q5_0": 4, "Q5_1": 4}  # bytes of a block's fifth bits (after its scales, before its nibbles)


@dataclass
class QuantizedWeight:
    """A [rows, cols] weight kept in a block format: data [rows, cols / block_weights * block_bytes] uint8."""

    fmt: QuantFormat
    data: Tensor
    cols: int

    def __post_init__(self) -> None:
        per_block = self.fmt.block_weights
        if self.data.dtype != torch.uint8 or self.data.dim() != 2 or self.cols % per_block:
            raise ValueError(f"{self.fmt.name} weight: data must be 2-D uint8 and cols a multiple of {per_block}")
        if self.data.shape[1] != self.cols // per_block * self.fmt.block_bytes:
            raise ValueError(f"{self.fmt.name} weight: {self.data.shape[1]} bytes per row for {self.cols} columns")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.shape[0], self.cols)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def rows(self, ids: Tensor) -> QuantizedWeight:
        """The weight's rows ``ids`` [n] (an embedding lookup), in GGML's layout."""
        if self.fmt.tile_rows > 1:
            return _untiled_rows(self, ids)
        return QuantizedWeight(self.fmt, self.data[ids], self.cols)


@dataclass
class QuantizedRowStack:
    """A [rows, cols] weight whose consecutive row ranges are in different formats: a merged projection
    whose checkpoint shards were quantized differently (Q4_K_M files keep some v_proj in Q8_0 and q/k_proj
    in Q5_0). The matmul runs once per part; every part keeps its own format."""

    parts: list[QuantizedWeight]

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(p.shape[0] for p in self.parts), self.parts[0].cols)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


AnyQuantizedWeight = QuantizedWeight | QuantizedRowStack


def dequantize(w: AnyQuantizedWeight) -> Tensor:
    """w [N, K] quantized -> [N, K] float32 (gguf-py's dequantizer)."""
    if isinstance(w, QuantizedRowStack):
        return torch.cat([dequantize(p) for p in w.parts])
    if w.fmt.tile_rows > 1:
        w = deinterleave(w)
    dense = gguf.quants.dequantize(w.data.numpy(), gguf.GGMLQuantizationType[w.fmt.name])
    return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))


def dequantize_rows(w: QuantizedWeight, ids: Tensor) -> Tensor:
    """Rows ``ids`` [n] of w as ``dequantize`` gives them, [n, K] float32: in torch for Q8_0 (a table whose rows
    are not whole tiles; gguf-py's numpy path costs a tenth of a decode step), gguf-py for the other formats."""
    rows = w.rows(ids)
    if rows.fmt.name != "Q8_0":
        return dequantize(rows)
    blocks = rows.data.view(len(ids), -1, w.fmt.block_bytes)  # [n, K / 32, 34]: fp16 d, then 32 int8 q
    d = blocks[..., :2].contiguous().view(torch.float16).float()  # [n, K / 32, 1]
    q = blocks[..., 2:].view(torch.int8).float()  # [n, K / 32, 32]
    return (d * q).reshape(len(ids), w.cols)


def quantize_q8_0(w: Tensor) -> QuantizedWeight:
    """w [N, K] (K a multiple of 32) -> Q8_0 as GGML rounds: d = max|w| / 127 per block, q = w * (1 / d) rounded
    half away from zero."""
    n, k = w.shape
    if k % Q8_0_BLOCK:
        raise ValueError(f"int8 quantization needs a multiple of {Q8_0_BLOCK} columns, got {k}")
    blocks = w.detach().float().reshape(n, k // Q8_0_BLOCK, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127.0  # [N, K/32, 1]
    scaled = blocks * torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = (scaled.sign() * (scaled.abs() + 0.5).floor()).clamp(-127, 127).to(torch.int8)
    d16 = d.to(torch.float16)
    data = torch.cat([d16.view(torch.uint8), q.view(torch.uint8)], dim=-1).reshape(n, -1)
    return QuantizedWeight(FORMATS["Q8_0"], data.contiguous(), k)


def concat_rows(parts: list[QuantizedWeight]) -> AnyQuantizedWeight:
    """Stack weights of one width along their rows (merged q/k/v and gate/up projections): one weight where
    the formats agree, else a QuantizedRowStack of runs of equal format."""
    if len({p.cols for p in parts}) != 1:
        raise ValueError(f"cannot merge quantized shards of widths {sorted({p.cols for p in parts})}")
    runs: list[list[QuantizedWeight]] = []
    for p in parts:
        if runs and runs[-1][0].fmt == p.fmt:
            runs[-1].append(p)
        else:
            runs.append([p])
    merged = [QuantizedWeight(run[0].fmt, torch.cat([p.data for p in run]), run[0].cols) for run in runs]
    return merged[0] if len(merged) == 1 else QuantizedRowStack(merged)


def interleave(w: AnyQuantizedWeight) -> AnyQuantizedWeight:
    """A Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 weight [N, K] with N a multiple of 16 in its 16-row tiled format
    (the matmul's fast layout), every other weight (each part of a row stack) as it is.

    data [N, K / 32 * B] keeps its shape and its size; viewed as [N / 16, K / 32, 16 B] (tile, group), a group
    of a tile holds
    - the 16 rows' quant bytes as dwords, dword j of every row in turn (dword j of a row: its bytes 4j..4j+3
      of nibbles or int8; Q8_0: weights 4j..4j+3; Q4_x / Q5_x: low nibbles weights 4j..4j+3, high nibbles
      16+4j..16+4j+3);
    - Q5_x: 8 little-endian 64-bit masks, mask j's bit 4r + b the fifth bit of weight 4j + b of row r (of
      the low nibbles for j < 4, the high ones for j >= 4, as the bytes above);
    - the 16 fp16 scales d, then (Q4_1, Q5_1) the 16 fp16 minimums m."""
    if isinstance(w, QuantizedRowStack):
        return QuantizedRowStack([interleave(p) for p in w.parts])
    fmt = INTERLEAVED.get(w.fmt.name)
    if fmt is None or w.shape[0] % TILE_ROWS:
        return w
    tiles, groups = w.shape[0] // TILE_ROWS, w.cols // fmt.block_weights
    head, high, body = _block_parts(w.fmt)
    blocks = w.data.view(tiles, TILE_ROWS, groups, fmt.block_bytes)
    quants = blocks[..., head + high :].reshape(tiles, TILE_ROWS, groups, body // 4, 4).permute(0, 2, 3, 1, 4)
    scales = blocks[..., :head].reshape(tiles, TILE_ROWS, groups, head // 2, 2).permute(0, 2, 3, 1, 4)
    parts = [quants.reshape(tiles, groups, -1)]
    if high:
        parts.append(_fifth_bit_masks(blocks[..., head : head + high]))
    parts.append(scales.reshape(tiles, groups, -1))
    return QuantizedWeight(fmt, torch.cat(parts, dim=-1).reshape(w.data.shape).contiguous(), w.cols)


def deinterleave(w: QuantizedWeight) -> QuantizedWeight:
    """The inverse of ``interleave``: the weight in its GGML format's layout."""
    base = _base_format(w.fmt)
    head, high, body = _block_parts(base)
    tiles, groups = w.shape[0] // TILE_ROWS, w.cols // base.block_weights
    grouped = w.data.view(tiles, groups, TILE_ROWS * base.block_bytes)
    at = TILE_ROWS * body
    quants = grouped[..., :at].reshape(tiles, groups, body // 4, TILE_ROWS, 4).permute(0, 3, 1, 2, 4)
    parts = [quants.reshape(tiles, TILE_ROWS, groups, body)]
    if high:
        parts.insert(0, _fifth_bit_bytes(grouped[..., at : at + 64]))
        at += 64
    scales = grouped[..., at:].reshape(tiles, groups, head // 2, TILE_ROWS, 2).permute(0, 3, 1, 2, 4)
    parts.insert(0, scales.reshape(tiles, TILE_ROWS, groups, head))
    return QuantizedWeight(base, torch.cat(parts, dim=-1).reshape(w.data.shape).contiguous(), w.cols)


def _base_format(tiled: QuantFormat) -> QuantFormat:
    return next(FORMATS[name] for name, fmt in INTERLEAVED.items() if fmt == tiled)


def _block_parts(base: QuantFormat) -> tuple[int, int, int]:
    """Bytes of a 32-weight block's fp16 scales (first), fifth bits (next; Q5_x) and quants (the rest)."""
    head, high = 2 * len(base.fp16_offsets), HIGH_BITS.get(base.name, 0)
    return head, high, base.block_bytes - head - high


def _fifth_bit_masks(qh: Tensor) -> Tensor:
    """qh [T, 16, G, 4] uint8 (each row's 32 fifth bits, little-endian) -> the tiles' masks [T, G, 64] uint8."""
    bits = sum(qh[..., i].to(torch.int64) << (8 * i) for i in range(4)).permute(0, 2, 1)  # [T, G, 16]
    nibbles = (bits[..., None, :] >> (4 * torch.arange(8))[:, None]) & 15  # [T, G, 8 masks, 16 rows]
    masks = (nibbles << (4 * torch.arange(TILE_ROWS))).sum(dim=-1)  # disjoint bits: the sum is their OR
    return masks.view(torch.uint8).reshape(*masks.shape[:2], 64)


def _fifth_bit_bytes(masks: Tensor) -> Tensor:
    """The inverse of ``_fifth_bit_masks``: [T, G, 64] uint8 -> qh [T, 16, G, 4] uint8."""
    words = masks.contiguous().view(torch.int64)  # [T, G, 8]
    nibbles = (words[..., None] >> (4 * torch.arange(TILE_ROWS))) & 15  # [T, G, 8, 16]
    bits = (nibbles << (4 * torch.arange(8))[:, None]).sum(dim=-2)  # [T, G, 16]
    qh = torch.stack([(bits >> (8 * i)) & 255 for i in range(4)], dim=-1).to(torch.uint8)
    return qh.permute(0, 2, 1, 3)


def _untiled_rows(w: QuantizedWeight, ids: Tensor) -> QuantizedWeight:
    """Rows ``ids`` [n] of a tiled weight, in its GGML format's layout (their tiles, deinterleaved)."""
    tiles = w.data.view(-1, TILE_ROWS * w.data.shape[1])[ids // TILE_ROWS]  # [n, 16 rows' bytes]
    rows = deinterleave(QuantizedWeight(w.fmt, tiles.view(-1, w.data.shape[1]), w.cols))
    picked = rows.data.view(len(ids), TILE_ROWS, -1)[torch.arange(len(ids)), ids % TILE_ROWS]
    return QuantizedWeight(rows.fmt, picked, w.cols)


def random_blocks(fmt: QuantFormat, rows: int, cols: int, gen: torch.Generator) -> QuantizedWeight:
    """Random bytes in ``fmt``'s layout with finite fp16 scales in (0, 0.1): every other bit pattern occurs (a
    tiled format: random blocks of its GGML format, interleaved; rows a multiple of 16)."""
    if fmt.tile_rows > 1:
        return interleave(random_blocks(_base_format(fmt), rows, cols, gen))
    data = torch.randint(0, 256, (rows, cols // fmt.block_weights * fmt.block_bytes), generator=gen, dtype=torch.uint8)
    blocks = data.view(rows, -1, fmt.block_bytes)
    for offset in fmt.fp16_offsets:
        scale = (torch.rand(rows, blocks.shape[1], 1, generator=gen) * 0.1).to(torch.float16)
        blocks[..., offset : offset + 2] = scale.view(torch.uint8)
    return QuantizedWeight(fmt, data, cols)
