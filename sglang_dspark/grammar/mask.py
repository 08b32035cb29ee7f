"""Token bitmasks -> logits masks on CPU.

A bitmask row is ``ceil(V / 32)`` int32 words, little-endian: token ``t`` is bit ``t % 8`` of byte
``t // 8``. ``apply_bitmask_`` masks logits in place with xgrammar's C++ CPU kernel when xgrammar is
installed (the fastest here, see benchmarks/bench_grammar.py; it reads any backend's bitmask, the
layout is shared), else by unpacking through a [256, 8] byte lookup table and ``masked_fill_``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch

_BITS = torch.arange(8, dtype=torch.int32)
# _BYTE_TO_ALLOWED[b, k]: bit k of byte b is set  -> [256, 8] bool
_BYTE_TO_ALLOWED = ((torch.arange(256, dtype=torch.int32).unsqueeze(1) >> _BITS) & 1).bool()
_BYTE_TO_BANNED = ~_BYTE_TO_ALLOWED


def _unpack(bitmask: torch.Tensor, vocab_size: int, table: torch.Tensor) -> torch.Tensor:
    rows = bitmask.shape[0]
    as_bytes = bitmask.contiguous().view(torch.uint8).flatten().int()  # [R * 4W]
    # index_select on the [256, 8] table: several times faster than advanced indexing here
    return table.index_select(0, as_bytes).view(rows, -1)[:, :vocab_size]  # [R, 32W] -> [R, V]


def allowed_from_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [R, W] int32 -> [R, V] bool, True = allowed."""
    return _unpack(bitmask, vocab_size, _BYTE_TO_ALLOWED)


def banned_from_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [R, W] int32 -> [R, V] bool, True = not allowed (the sampler's ``banned`` convention)."""
    return _unpack(bitmask, vocab_size, _BYTE_TO_BANNED)


@cache
def _native_kernel() -> Callable | None:
    try:
        from xgrammar.kernels.apply_token_bitmask_inplace_cpu import apply_token_bitmask_inplace_cpu
    except ImportError:
        return None
    return apply_token_bitmask_inplace_cpu


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
    """In place: logits [B, V] get -inf where bitmask [B, W] int32 (on the host) disallows, in ``rows`` only
    (all rows if None). Returns logits."""
    kernel = _native_kernel()
    on_cpu = logits.device.type == "cpu"
    if kernel is not None and on_cpu and logits.is_contiguous():
        kernel(logits, bitmask, vocab_size=logits.shape[-1], indices=rows)
        return logits
    if rows is None:
        banned = banned_from_bitmask(bitmask, logits.shape[-1])  # [B, V]
        return logits.masked_fill_(banned.to(logits.device), float("-inf"))
    index = torch.tensor(rows, dtype=torch.int64)
    banned = banned_from_bitmask(bitmask.index_select(0, index), logits.shape[-1]).to(logits.device)  # [R, V]
    index = index.to(logits.device)
    logits[index] = logits.index_select(0, index).masked_fill_(banned, float("-inf"))
    return logits


def single_allowed_token(row: torch.Tensor) -> int | None:
    """The only token a bitmask row [W] allows, or None if it allows zero or several."""
    words = row.nonzero()
    if words.numel() != 1:
        return None
    index = int(words[0, 0])
    word = int(row[index]) & 0xFFFFFFFF
    if word & (word - 1):
        return None
    return 32 * index + word.bit_length() - 1


def allow_token_(row: torch.Tensor, token: int) -> None:
    """Set token's bit in a bitmask row [W] int32, in place."""
    word, bit = divmod(token, 32)
    row[word] = int(row[word]) | (1 << bit if bit < 31 else -(1 << 31))  # bit 31 is the int32 sign bit
