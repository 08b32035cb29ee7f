"""Per-request drafter state: the context keys/values of every draft layer, grown incrementally."""

from __future__ import annotations

import torch


class DrafterState:
    """Context K/V of one request: per layer a [capacity, Hkv, D] buffer, the first `length` rows valid (the native
    drafter writes a block's keys past them)."""

    def __init__(self) -> None:
        self.length = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """kv: per layer (k, v) [n, Hkv, D] for the next n context positions."""
        n = kv[0][0].shape[0]
        if not self.keys:
            self.keys = [k.new_empty((max(2 * n, 64), *k.shape[1:])) for k, _ in kv]
            self.values = [v.new_empty((max(2 * n, 64), *v.shape[1:])) for _, v in kv]
        self.reserve(self.length + n)
        for buf, (k, _) in zip(self.keys, kv, strict=True):
            buf[self.length : self.length + n] = k
        for buf, (_, v) in zip(self.values, kv, strict=True):
            buf[self.length : self.length + n] = v
        self.length += n

    def reserve(self, rows: int) -> None:
        """Grow the buffers (doubling) to hold at least ``rows`` rows; rows past ``length`` are scratch."""
        if rows > self.keys[0].shape[0]:
            cap = 2 * rows
            self.keys = [_grow(b, cap, self.length) for b in self.keys]
            self.values = [_grow(b, cap, self.length) for b in self.values]


def _grow(buf: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
    out = buf.new_empty((capacity, *buf.shape[1:]))
    out[:length] = buf[:length]
    return out
