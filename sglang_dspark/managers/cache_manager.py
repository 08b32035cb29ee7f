"""KV ownership of requests: request rows, slot allocation, radix prefix reuse and release.

A request owns the slots of fill_ids[prefix_len:kv_len]; the slots of its radix prefix belong
to the tree and stay locked (through req.last_node) while the request runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.managers.schedule_batch import Req
from sglang_dspark.mem_cache.memory_pool import ReqToTokenPool, TokenAllocator
from sglang_dspark.mem_cache.radix_cache import RadixCache


@dataclass
class KVUsage:
    total: int  # slots in the pool
    free: int  # in the allocator
    cached: int  # held by the radix tree (evictable or locked)
    in_use: int  # owned by running requests


class CacheManager:
    def __init__(self, req_pool: ReqToTokenPool, allocator: TokenAllocator, enable_radix: bool) -> None:
        self.req_pool = req_pool
        self.allocator = allocator
        self.tree = RadixCache(allocator) if enable_radix else None

    def available_tokens(self) -> int:
        """Slots that can be had now, evicting unlocked cache entries if needed."""
        evictable = self.tree.evictable_size() if self.tree else 0
        return self.allocator.available_size() + evictable

    def usage(self) -> KVUsage:
        cached = self.tree.evictable_size() + self.tree.protected_size() if self.tree else 0
        free = self.allocator.available_size()
        return KVUsage(self.allocator.size, free, cached, self.allocator.size - free - cached)

    def admit(self, req: Req) -> bool:
        """Give req a request row and its radix prefix. False (nothing held) when no row is free."""
        row = self.req_pool.alloc()
        if row is None:
            return False
        req.req_pool_idx = row
        req.prefix_len = 0
        req.last_node = None
        if self.tree is not None:
            key = req.fill_ids[: req.max_prefix_len()]
            match = self.tree.match_prefix(key)
            req.prefix_len = int(match.indices.numel())
            req.last_node = match.last_node
            self.tree.inc_lock_ref(match.last_node)
            self.req_pool.req_to_token[row, : req.prefix_len] = match.indices
        req.kv_len = req.prefix_len
        if req.cached_tokens is None:
            req.cached_tokens = req.prefix_len
        return True

    def alloc_slots(self, req: Req, n: int) -> torch.Tensor | None:
        """Allocate slots for fill_ids[kv_len:kv_len + n] of req and record them in its row."""
        if self.allocator.available_size() < n and self.tree is not None:
            self.tree.evict(n - self.allocator.available_size())
        slots = self.allocator.alloc(n)
        if slots is not None:
            self.req_pool.req_to_token[req.req_pool_idx, req.kv_len : req.kv_len + n] = slots
        return slots

    def free_after_kv(self, req: Req, end: int) -> None:
        """Free the slots of req's positions [kv_len, end): allocated for tokens whose KV is not kept."""
        self.allocator.free(self.req_pool.req_to_token[req.req_pool_idx, req.kv_len : end].to("cpu", copy=True))

    def release(self, req: Req) -> None:
        """Return req's row and slots: committed KV goes into the radix tree, the rest is freed."""
        row = req.req_pool_idx
        if row is None:
            return
        slots = self.req_pool.req_to_token[row, : req.kv_len].to("cpu", copy=True)  # the allocator's side
        if self.tree is None:
            self.allocator.free(slots)
        else:
            # the tree takes our new slots; where it already held a prefix, our duplicates are freed
            already = self.tree.insert(req.fill_ids[: req.kv_len], slots) if req.kv_len else 0
            self.allocator.free(slots[req.prefix_len : max(req.prefix_len, already)])
            self.tree.dec_lock_ref(req.last_node)
        self.req_pool.free(row)
        req.req_pool_idx = None
        req.last_node = None
        req.prefix_len = req.kv_len = 0

    def flush(self) -> bool:
        """Drop the whole prefix cache; only possible when no request holds KV."""
        if self.usage().in_use or self.req_pool.available_size() != self.req_pool.size:
            return False
        if self.tree is not None:
            self.tree.reset()
        self.allocator.clear()
        return True
