"""Token-level KV memory: request-to-slot table, slot allocator and per-layer K/V buffers.

Slot 0 of the KV buffers is a padding slot that is never handed out, so padded index
tensors can point at it harmlessly.
"""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """Maps (request row, position) -> KV slot. One row per running request."""

    def __init__(self, size: int, max_context_len: int, device: str = "cpu") -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int64, device=device)
        self._free_rows = list(range(size))

    def available_size(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        self._free_rows.append(row)


class TokenAllocator:
    """Free list of KV slots 1..size (slot 0 is padding)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.clear()

    def clear(self) -> None:
        self._free = torch.arange(1, self.size + 1, dtype=torch.int64)

    def available_size(self) -> int:
        return int(self._free.numel())

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > self._free.numel():
            return None
        out, self._free = self._free[:n], self._free[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self._free = torch.cat([self._free, slots.to(torch.int64)])


class KVPool:
    """Per-layer K and V buffers of shape [size + 1, num_kv_heads, head_dim], indexed by slot.

    Only the padding slot is zeroed: a slot is read only after a forward wrote it (attention reads a request's
    own slots up to its length; padded reads go to slot 0), so the OS commits a large pool's memory as its
    slots are first used instead of all of it at start-up."""

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str = "cpu",
    ) -> None:
        self.size = size
        self.dtype = dtype
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffer = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for buf in self.k_buffer + self.v_buffer:
            buf[0].zero_()

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # loc: [N]; k, v: [N, num_kv_heads, head_dim]
        self.k_buffer[layer_id].index_copy_(0, loc, k.to(self.dtype))
        self.v_buffer[layer_id].index_copy_(0, loc, v.to(self.dtype))
