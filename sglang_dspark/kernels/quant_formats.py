"""Block-quantized weight formats (GGML's layouts), kept quantized in memory: layout, dequantize, quantize.

A quantized weight [N, K] is a uint8 tensor [N, K / block_weights * block_bytes]: each row is a run of GGML
blocks along K, in the byte layout of the GGUF file, so a GGUF tensor is used as read by the native matmul
(quant_linear.py, csrc_avx512/quant_linear.cpp, which documents each layout).
Blocks of 32 weights: ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q8_0`` (also what ``--quantization int8``
makes of a dense weight); super-blocks of 256 weights (the K-quants of llama.cpp's Q4_K_M / Q5_K_M files):
``Q4_K``, ``Q5_K``, ``Q6_K``. ``interleave`` repacks every one of them at load time into tiles of 16 rows
(``Q4_0x16`` .. ``Q6_Kx16``: the same weights in as many bytes, reordered so that one 512-bit byte dot product
serves 16 rows; fifth bits as masks, Q6_K's high bits as 2-bit fields).

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
    "Q4_K": QuantFormat("Q4_Kx16", 256, 144, 13, (), TILE_ROWS),
    "Q5_K": QuantFormat("Q5_Kx16", 256, 176, 14, (), TILE_ROWS),
    "Q6_K": QuantFormat("Q6_Kx16", 256, 210, 15, (), TILE_ROWS),
}
ALL_FORMATS = {**FORMATS, **{f.name: f for f in INTERLEAVED.values()}}  # by name, GGML's and the tiled
HIGH_BITS = {"Q5_0": 4, "Q5_1": 4}  # bytes of a block's fifth bits (after its scales, before its nibbles)
K_SUPER = 256  # weights per K-quant super-block
K_GROUPS = 8  # 32-weight groups per super-block
K_CHUNK_ROWS = 1024  # rows repacked at a time: the int64 temporaries of a K-quant repack are ~40x its bytes
K_TILE_GROUP_BYTES = {"Q4_K": 256, "Q5_K": 320, "Q6_K": 384}  # a tiled group's quants (+ fifth or top bits)
# the fields of a K-quant block's other bytes, in order, as byte widths (2: an fp16)
K_OTHER_FIELDS = {"Q4_K": (2, 2) + (1,) * 12, "Q5_K": (2, 2) + (1,) * 12, "Q6_K": (1,) * 16 + (2,)}


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
    """A weight [N, K] with N a multiple of 16 in its 16-row tiled format (the matmul's fast layout), any other
    weight (each part of a row stack) as it is.

    data [N, K / block_weights * B] keeps its shape and its size. Every 32-weight group of a tile holds
    - its quants as bytes of 16 dwords, dword j of every row in turn: Q8_0 bytes 4j..4j+3 (weights 4j..4j+3);
      the others nibbles, low ones weights 4j..4j+3 and high ones 16+4j..16+4j+3 (j < 4: 4 x 64 bytes);
    - 5-bit formats: 8 little-endian 64-bit masks, mask j's bit 4r + b the fifth bit of weight 4j + b of row r
      (of the low nibbles for j < 4, the high ones for j >= 4, as the bytes above);
    - Q6_K: two 64-byte lines of the dwords' layout, 2-bit field f of line L's byte b holding bits 4-5 of
      weight 16L + 4f + b.
    Q4_0 .. Q5_1 and Q8_0, viewed as [N / 16, K / 32, 16 B] (tile, group): each group's quants, then the 16 fp16
    scales d, then (Q4_1, Q5_1) the 16 fp16 minimums m. The K-quants, viewed as [N / 16, K / 256, 16 B] (tile,
    super-block): its 8 groups' quants, then the 16 rows' other bytes of the block, byte by byte (each byte of
    the 16 rows in turn; an fp16 as its 16 rows' pairs): Q4_K / Q5_K d, dmin and the 12 bytes of packed 6-bit
    scales and minimums, Q6_K the 16 int8 scales and d."""
    if isinstance(w, QuantizedRowStack):
        return QuantizedRowStack([interleave(p) for p in w.parts])
    fmt = INTERLEAVED.get(w.fmt.name)
    if fmt is None or w.shape[0] % TILE_ROWS:
        return w
    if fmt.block_weights == K_SUPER:
        return QuantizedWeight(fmt, _in_row_chunks(w, _tile_k_quants), w.cols)
    tiles, groups = w.shape[0] // TILE_ROWS, w.cols // fmt.block_weights
    head, high, body = _block_parts(w.fmt)
    blocks = w.data.view(tiles, TILE_ROWS, groups, fmt.block_bytes)
    quants = blocks[..., head + high :].reshape(tiles, TILE_ROWS, groups, body // 4, 4).permute(0, 2, 3, 1, 4)
    scales = blocks[..., :head].reshape(tiles, TILE_ROWS, groups, head // 2, 2).permute(0, 2, 3, 1, 4)
    parts = [quants.reshape(tiles, groups, -1)]
    if high:
        words = sum(blocks[..., head + i].to(torch.int64) << (8 * i) for i in range(4))  # [T, 16, G]
        parts.append(_fifth_bit_masks(words))
    parts.append(scales.reshape(tiles, groups, -1))
    return QuantizedWeight(fmt, torch.cat(parts, dim=-1).reshape(w.data.shape).contiguous(), w.cols)


def deinterleave(w: QuantizedWeight) -> QuantizedWeight:
    """The inverse of ``interleave``: the weight in its GGML format's layout."""
    base = _base_format(w.fmt)
    if base.block_weights == K_SUPER:
        return QuantizedWeight(base, _in_row_chunks(w, _untile_k_quants), w.cols)
    head, high, body = _block_parts(base)
    tiles, groups = w.shape[0] // TILE_ROWS, w.cols // base.block_weights
    grouped = w.data.view(tiles, groups, TILE_ROWS * base.block_bytes)
    at = TILE_ROWS * body
    quants = grouped[..., :at].reshape(tiles, groups, body // 4, TILE_ROWS, 4).permute(0, 3, 1, 2, 4)
    parts = [quants.reshape(tiles, TILE_ROWS, groups, body)]
    if high:
        words = _fifth_bit_words(grouped[..., at : at + 64])  # [T, 16, G]
        parts.insert(0, torch.stack([(words >> (8 * i)) & 255 for i in range(4)], dim=-1).to(torch.uint8))
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


def _fifth_bit_masks(words: Tensor) -> Tensor:
    """words [T, 16, G] (bit k: the fifth bit of weight k of a row's group) -> the tiles' masks [T, G, 64] uint8."""
    bits = words.permute(0, 2, 1)  # [T, G, 16]
    nibbles = (bits[..., None, :] >> (4 * torch.arange(8))[:, None]) & 15  # [T, G, 8 masks, 16 rows]
    masks = (nibbles << (4 * torch.arange(TILE_ROWS))).sum(dim=-1)  # disjoint bits: the sum is their OR
    return masks.view(torch.uint8).reshape(*masks.shape[:2], 64)


def _fifth_bit_words(masks: Tensor) -> Tensor:
    """The inverse of ``_fifth_bit_masks``: [T, G, 64] uint8 -> words [T, 16, G] int64."""
    words = masks.contiguous().view(torch.int64)  # [T, G, 8]
    nibbles = (words[..., None] >> (4 * torch.arange(TILE_ROWS))) & 15  # [T, G, 8, 16]
    return (nibbles << (4 * torch.arange(8))[:, None]).sum(dim=-2).permute(0, 2, 1)


def _k_quants(w: QuantizedWeight) -> tuple[Tensor, Tensor]:
    """A K-quant weight [N, K] -> its unsigned quants u [N, K / 256, 256] int64 (weight l of the super-block is
    d s u - dmin m, or d s (u - 32) for Q6_K) and each block's other bytes [N, K / 256, 16 or 18] uint8 as
    stored (Q4_K / Q5_K: d, dmin, 12 packed scale bytes; Q6_K: 16 int8 scales, d)."""
    n, s = w.shape[0], w.cols // K_SUPER
    raw = w.data.view(n, s, w.fmt.block_bytes)
    b = raw.to(torch.int64)
    if w.fmt.name == "Q6_K":  # weight 128h + r: nibble r // 64 of ql[64h + r % 64], bits 2 (r // 32) of qh[32h + r%32]
        r = torch.arange(128)
        low = (b[..., :128].view(n, s, 2, 64)[..., r % 64] >> (4 * (r // 64))) & 15
        high = (b[..., 128:192].view(n, s, 2, 32)[..., r % 32] >> (2 * (r // 32))) & 3
        return (low | (high << 4)).reshape(n, s, K_SUPER), raw[..., 192:]
    qs = b[..., -128:].view(n, s, 4, 1, 32)  # sub-blocks 2j, 2j + 1: the low, high nibbles of qs[32j..32j + 31]
    u = ((qs >> (4 * torch.arange(2))[:, None]) & 15).reshape(n, s, K_SUPER)
    if w.fmt.name == "Q5_K":  # bit i of qh[l]: bit 4 of weight l of sub-block i
        u |= (((b[..., 16:48, None] >> torch.arange(K_GROUPS)) & 1) << 4).transpose(-1, -2).reshape(n, s, K_SUPER)
    return u, raw[..., :16]


def _k_blocks(fmt: QuantFormat, u: Tensor, other: Tensor) -> Tensor:
    """The inverse of ``_k_quants``: GGML's blocks [N, K / 256 * B] uint8."""
    n, s = u.shape[:2]
    if fmt.name == "Q6_K":
        v = u.view(n, s, 2, 128)
        ql = sum((v[..., 64 * i : 64 * i + 64] & 15) << (4 * i) for i in range(2))  # [N, S, 2, 64]
        qh = sum(((v[..., 32 * i : 32 * i + 32] >> 4) & 3) << (2 * i) for i in range(4))  # [N, S, 2, 32]
        parts = [ql.reshape(n, s, 128), qh.reshape(n, s, 64), other.to(torch.int64)]
    else:
        sub = u.view(n, s, 4, 2, 32)
        parts = [other.to(torch.int64)]
        if fmt.name == "Q5_K":
            fifth = (u.view(n, s, K_GROUPS, 32) >> 4) & 1
            parts.append((fifth << torch.arange(K_GROUPS)[:, None]).sum(dim=-2))
        parts.append(((sub[..., 0, :] & 15) | ((sub[..., 1, :] & 15) << 4)).reshape(n, s, 128))
    return torch.cat(parts, dim=-1).to(torch.uint8).reshape(n, s * fmt.block_bytes)


def _in_row_chunks(w: QuantizedWeight, repack) -> Tensor:
    """repack (a weight -> its data repacked, same shape) over runs of ``K_CHUNK_ROWS`` rows of w."""
    runs = range(0, w.shape[0], K_CHUNK_ROWS)
    return torch.cat([repack(QuantizedWeight(w.fmt, w.data[i : i + K_CHUNK_ROWS], w.cols)) for i in runs])


def _tile_k_quants(w: QuantizedWeight) -> Tensor:
    u, other = _k_quants(w)
    t, s = w.shape[0] // TILE_ROWS, u.shape[1]
    g = u.view(t, TILE_ROWS, s, K_GROUPS, 32)
    nib = (g[..., :16] & 15) | ((g[..., 16:] & 15) << 4)  # [T, 16, S, 8, 16]: byte b holds weights b, 16 + b
    groups = [nib.view(t, TILE_ROWS, s, K_GROUPS, 4, 4).permute(0, 2, 3, 4, 1, 5).reshape(t, s, K_GROUPS, 256)]
    if w.fmt.name == "Q5_K":
        words = (((g >> 4) & 1) << torch.arange(32)).sum(dim=-1)  # [T, 16, S, 8]
        groups.append(_fifth_bit_masks(words.reshape(t, TILE_ROWS, s * K_GROUPS)).view(t, s, K_GROUPS, 64))
    if w.fmt.name == "Q6_K":  # weight 16L + 4f + b: field f of byte b of line L
        high = ((g >> 4) & 3).view(t, TILE_ROWS, s, K_GROUPS, 2, 4, 4)
        lines = sum(high[..., f, :] << (2 * f) for f in range(4))  # [T, 16, S, 8, 2, 4]
        groups.append(lines.permute(0, 2, 3, 4, 1, 5).reshape(t, s, K_GROUPS, 128))
    quants = torch.cat(groups, dim=-1).reshape(t, s, -1)
    rows_bytes = other.view(t, TILE_ROWS, s, -1).permute(0, 2, 1, 3)  # [T, S, 16 rows, bytes]
    fields = rows_bytes.split(K_OTHER_FIELDS[w.fmt.name], dim=-1)  # each: its 16 rows' bytes side by side
    parts = [quants, *(f.reshape(t, s, -1).to(torch.int64) for f in fields)]
    return torch.cat(parts, dim=-1).to(torch.uint8).reshape(w.data.shape).contiguous()


def _untile_k_quants(w: QuantizedWeight) -> Tensor:
    base = _base_format(w.fmt)
    t, s = w.shape[0] // TILE_ROWS, w.cols // K_SUPER
    tiled = w.data.view(t, s, TILE_ROWS * base.block_bytes).to(torch.int64)
    per_group = K_TILE_GROUP_BYTES[base.name]
    groups = tiled[..., : K_GROUPS * per_group].view(t, s, K_GROUPS, per_group)
    nib = groups[..., :256].view(t, s, K_GROUPS, 4, TILE_ROWS, 4).permute(0, 4, 1, 2, 3, 5)  # [T, 16, S, 8, 4, 4]
    nib = nib.reshape(t, TILE_ROWS, s, K_GROUPS, 16)
    u = torch.cat([nib & 15, nib >> 4], dim=-1)  # [T, 16, S, 8, 32]
    if base.name == "Q5_K":
        words = _fifth_bit_words(groups[..., 256:].reshape(t, s * K_GROUPS, 64).to(torch.uint8))
        u |= ((words.view(t, TILE_ROWS, s, K_GROUPS, 1) >> torch.arange(32)) & 1) << 4
    if base.name == "Q6_K":
        lines = groups[..., 256:].view(t, s, K_GROUPS, 2, TILE_ROWS, 4).permute(0, 4, 1, 2, 3, 5)  # [T,16,S,8,2,4]
        high = torch.stack([(lines >> (2 * f)) & 3 for f in range(4)], dim=-2)  # [T, 16, S, 8, 2, 4 f, 4 b]
        u |= high.reshape(t, TILE_ROWS, s, K_GROUPS, 32) << 4
    widths = K_OTHER_FIELDS[base.name]
    meta = tiled[..., K_GROUPS * per_group :].split([TILE_ROWS * b for b in widths], dim=-1)  # each field's 16 rows
    fields = [f.view(t, s, TILE_ROWS, b) for f, b in zip(meta, widths, strict=True)]
    other = torch.cat(fields, dim=-1).permute(0, 2, 1, 3).reshape(w.shape[0], s, sum(widths))
    return _k_blocks(base, u.reshape(w.shape[0], s, K_SUPER), other).contiguous()


def _untiled_rows(w: QuantizedWeight, ids: Tensor) -> QuantizedWeight:
    """Rows ``ids`` [n] of a tiled weight, in its GGML format's layout (their tiles, deinterleaved)."""
    bad = ids[(ids < 0) | (ids >= w.shape[0])]
    if len(bad):
        raise IndexError(f"row {int(bad[0])} out of range for {w.shape[0]} rows")
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
