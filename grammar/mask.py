"""Token bitmasks -> logits masks on CPU.

A bitmask row is ``ceil(V / 32)`` int32 words, little-endian: token ``t`` is bit ``t % 8`` of byte
``t // 8``. Unpacking goes through a [256, 8] byte lookup table (one gather for the whole batch), which
on this CPU beats shifting every int32 by 0..31 (see benchmarks/bench_grammar.py for the numbers).
"""

from __future__ import annotations

import torch

_BITS = torch.arange(8, dtype=torch.int32)
# _BYTE_TO_ALLOWED[b, k]: bit k of byte b is set  -> [256, 8] bool
_BYTE_TO_ALLOWED = ((torch.arange(256, dtype=torch.int32).unsqueeze(1) >> _BITS) & 1).bool()
_BYTE_TO_BANNED = ~_BYTE_TO_ALLOWED


def _unpack(bitmask: torch.Tensor, vocab_size: int, table: torch.Tensor) -> torch.Tensor:
    rows = bitmask.shape[0]
    as_bytes = bitmask.contiguous().view(torch.uint8).long()  # [R, 4W]
    return table[as_bytes].view(rows, -1)[:, :vocab_size]  # [R, 32W] -> [R, V]


def allowed_from_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [R, W] int32 -> [R, V] bool, True = allowed."""
    return _unpack(bitmask, vocab_size, _BYTE_TO_ALLOWED)


def banned_from_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [R, W] int32 -> [R, V] bool, True = not allowed (the sampler's ``banned`` convention)."""
    return _unpack(bitmask, vocab_size, _BYTE_TO_BANNED)


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """In place: logits [R, V] get -inf where bitmask [R, W] disallows. Returns logits."""
    return logits.masked_fill_(banned_from_bitmask(bitmask, logits.shape[-1]), float("-inf"))


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
