"""RadixAttention-style prefix cache: a radix tree over token ids whose edges hold KV slots (page size 1).

Each node owns the KV slots of its edge key. Requests lock the path to the node they use
(``inc_lock_ref``) so it cannot be evicted; unlocked leaves are evicted in LRU order.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import torch

from sglang_dspark.mem_cache.memory_pool import TokenAllocator


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


class TreeNode:
    """One radix-tree edge: token ids ``key`` and their KV slots ``value`` (int64 [len(key)])."""

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: TreeNode | None,
        node_id: int,
        access_time: int,
        lock_ref: int = 0,
    ) -> None:
        self.children: dict[int, TreeNode] = {}  # first token id of the child's key -> child
        self.key = key
        self.value = value  # int64 [len(key)]
        self.parent = parent
        self.id = node_id
        self.lock_ref = lock_ref
        self.last_access_time = access_time

    def __len__(self) -> int:
        return len(self.key)

    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class MatchResult:
    """Longest cached prefix of a key: its KV slots and the deepest node covering it."""

    indices: torch.Tensor  # int64 [L]
    last_node: TreeNode


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache:
    """Prefix cache over token-id sequences; frees evicted slots back to ``allocator``."""

    def __init__(self, allocator: TokenAllocator) -> None:
        self.allocator = allocator
        self.reset()

    def reset(self) -> None:
        self._clock = itertools.count()  # monotonically increasing access time
        self._ids = itertools.count()
        self.root = TreeNode([], _empty_slots(), None, next(self._ids), next(self._clock), lock_ref=1)
        self._evictable = 0
        self._protected = 0

    # ---- lookup / insertion ----

    def match_prefix(self, key: list[int]) -> MatchResult:
        now = next(self._clock)
        node, pos, parts = self.root, 0, []
        node.last_access_time = now
        while pos < len(key) and key[pos] in node.children:
            child = node.children[key[pos]]
            plen = _common_prefix_len(child.key, key[pos:])
            if plen < len(child):
                child = self._split(child, plen)
            child.last_access_time = now
            parts.append(child.value)
            node, pos = child, pos + plen  # after a split, no child of `node` matches key[pos]
        indices = torch.cat(parts) if parts else _empty_slots()
        return MatchResult(indices=indices, last_node=node)

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        assert value.numel() == len(key), "value must hold one slot per key token"
        now = next(self._clock)
        node, pos = self.root, 0
        node.last_access_time = now
        while pos < len(key) and key[pos] in node.children:
            child = node.children[key[pos]]
            plen = _common_prefix_len(child.key, key[pos:])
            if plen < len(child):
                child = self._split(child, plen)
            child.last_access_time = now
            node, pos = child, pos + plen
        if pos < len(key):
            leaf = TreeNode(list(key[pos:]), value[pos:].to(torch.int64).clone(), node, next(self._ids), now)
            node.children[key[pos]] = leaf
            self._evictable += len(leaf)
        return pos

    def continuation(self, key: list[int], length: int) -> list[int]:
        """Up to ``length`` cached tokens that followed the whole of ``key`` (along the most recently used
        branch), or [] if ``key`` is not entirely cached. Read-only: no split, no access-time update."""
        node, pos, offset = self.root, 0, 0  # offset: tokens of node.key that key matched
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                return []
            offset = _common_prefix_len(child.key, key[pos:])
            if offset < len(child) and pos + offset < len(key):
                return []  # key leaves the tree inside this edge
            node, pos = child, pos + offset
        out = list(node.key[offset : offset + length])
        while len(out) < length and node.children:
            node = max(node.children.values(), key=lambda c: c.last_access_time)
            out += node.key[: length - len(out)]
        return out

    def _split(self, child: TreeNode, plen: int) -> TreeNode:
        """Split ``child`` after ``plen`` tokens; return the new upper node (same lock_ref)."""
        parent = child.parent
        assert parent is not None and 0 < plen < len(child)
        upper = TreeNode(
            child.key[:plen],
            child.value[:plen].clone(),
            parent,
            next(self._ids),
            child.last_access_time,
            lock_ref=child.lock_ref,
        )
        child.key, child.value = child.key[plen:], child.value[plen:].clone()
        child.parent = upper
        upper.children[child.key[0]] = child
        parent.children[upper.key[0]] = upper
        return upper

    # ---- locking ----

    def inc_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node)
                self._protected += len(node)
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "dec_lock_ref on an unlocked node"
            if node.lock_ref == 1:
                self._protected -= len(node)
                self._evictable += len(node)
            node.lock_ref -= 1
            assert node.parent is not None
            node = node.parent

    # ---- eviction ----

    def evict(self, num_tokens: int) -> int:
        """Evict whole unlocked leaves, oldest first, until ``num_tokens`` are freed or none remain."""
        heap = [(n.last_access_time, n.id, n) for n in self._nodes() if n.is_leaf() and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self.allocator.free(leaf.value)
            freed += len(leaf)
            self._evictable -= len(leaf)
            del parent.children[leaf.key[0]]
            if parent is not self.root and parent.is_leaf() and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        return freed

    # ---- sizes / introspection ----

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return sum(len(n) for n in self._nodes())

    def all_slots(self) -> torch.Tensor:
        parts = [n.value for n in self._nodes()]
        return torch.cat(parts) if parts else _empty_slots()  # int64 [total_size]

    def _nodes(self) -> list[TreeNode]:
        """All non-root nodes (iterative DFS)."""
        out: list[TreeNode] = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out
