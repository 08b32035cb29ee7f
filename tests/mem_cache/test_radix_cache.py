import random

import torch

from sglang_dspark.mem_cache.memory_pool import TokenAllocator
from sglang_dspark.mem_cache.radix_cache import RadixCache, TreeNode


def _slots(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int64)


def _check_sizes(cache: RadixCache) -> None:
    assert cache.evictable_size() + cache.protected_size() == cache.total_size()
    assert cache.all_slots().numel() == cache.total_size()


def test_empty_cache_matches_nothing():
    cache = RadixCache(TokenAllocator(8))
    res = cache.match_prefix([1, 2, 3])
    assert res.indices.numel() == 0 and res.indices.dtype == torch.int64
    assert res.last_node is cache.root
    assert cache.total_size() == 0
    assert cache.match_prefix([]).last_node is cache.root


def test_insert_match_shared_prefix_with_splits():
    cache = RadixCache(TokenAllocator(32))
    assert cache.insert([1, 2, 3, 4], _slots(10, 11, 12, 13)) == 0
    # Diverges after 2 tokens: splits [1,2,3,4] into [1,2] + [3,4].
    assert cache.insert([1, 2, 5, 6, 7], _slots(20, 21, 22, 23, 24)) == 2
    assert cache.total_size() == 7
    assert len(cache.root.children) == 1
    upper = cache.root.children[1]
    assert upper.key == [1, 2] and upper.value.tolist() == [10, 11]
    assert sorted(upper.children) == [3, 5]
    assert upper.children[3].key == [3, 4] and upper.children[3].value.tolist() == [12, 13]
    # The tree kept its own slots for the shared prefix and took value[2:] of the second key.
    assert upper.children[5].value.tolist() == [22, 23, 24]

    res = cache.match_prefix([1, 2, 3, 4, 9])
    assert res.indices.tolist() == [10, 11, 12, 13]
    assert res.last_node.key == [3, 4]
    res = cache.match_prefix([1, 2, 5, 6, 7])
    assert res.indices.tolist() == [10, 11, 22, 23, 24]
    assert res.last_node.key == [5, 6, 7]
    assert cache.match_prefix([2, 1]).indices.numel() == 0

    # Match ending inside a node splits it; last_node covers exactly the matched prefix.
    res = cache.match_prefix([1, 2, 5, 6, 99])
    assert res.indices.tolist() == [10, 11, 22, 23]
    assert res.last_node.key == [5, 6]
    assert res.last_node.parent is upper
    assert list(res.last_node.children.values())[0].key == [7]
    assert cache.total_size() == 7
    _check_sizes(cache)


def test_continuation_follows_the_whole_key_then_the_latest_branch():
    cache = RadixCache(TokenAllocator(32))
    cache.insert([1, 2, 3, 4, 5], _slots(1, 2, 3, 4, 5))
    cache.insert([1, 2, 7, 8], _slots(6, 7, 8, 9))  # splits at [1, 2]; [7, 8] is the newer branch
    assert cache.continuation([1, 2, 3], 5) == [4, 5]  # ends inside an edge: the rest of it
    assert cache.continuation([1, 2], 1) == [7]  # the most recently used branch
    cache.match_prefix([1, 2, 3, 4])  # touches (and splits) that branch
    nodes_before = len(cache._nodes())
    assert cache.continuation([1, 2], 5) == [3, 4, 5]  # now [3, 4, 5] is the latest
    assert cache.continuation([1], 2) == [2, 3]  # continues across nodes, capped at length
    assert cache.continuation([1, 2, 3, 4, 5], 3) == []  # nothing cached after the key
    assert cache.continuation([1, 2, 9], 3) == [] and cache.continuation([5], 3) == []  # key not all cached
    assert cache.continuation([1, 3], 3) == []  # leaves the tree inside an edge
    assert cache.continuation([], 2) == [1, 2]
    assert len(cache._nodes()) == nodes_before  # read-only: no splits


def test_insert_returns_already_present_prefix_len():
    cache = RadixCache(TokenAllocator(32))
    assert cache.insert([1, 2, 3], _slots(1, 2, 3)) == 0
    assert cache.insert([1, 2, 3], _slots(7, 8, 9)) == 3  # fully present: nothing taken
    assert cache.insert([1, 2], _slots(7, 8)) == 2  # prefix of an existing edge
    assert cache.insert([1, 2, 3, 4, 5], _slots(7, 8, 9, 4, 5)) == 3
    assert cache.insert([1, 9], _slots(7, 6)) == 1
    assert sorted(cache.all_slots().tolist()) == [1, 2, 3, 4, 5, 6]
    assert cache.match_prefix([1, 2, 3, 4, 5]).indices.tolist() == [1, 2, 3, 4, 5]
    _check_sizes(cache)


def test_lock_prevents_eviction_and_unlock_reenables():
    alloc = TokenAllocator(16)
    cache = RadixCache(alloc)
    cache.insert([1, 2, 3], alloc.alloc(3))
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 0
    assert cache.evict(10) == 0
    assert cache.total_size() == 3

    # Splitting a locked node keeps both halves locked with the same lock_ref.
    res = cache.match_prefix([1, 2])
    assert res.last_node.lock_ref == 1 and node.lock_ref == 1
    assert cache.protected_size() == 3
    _check_sizes(cache)

    cache.inc_lock_ref(node)
    cache.dec_lock_ref(node)
    assert cache.evict(10) == 0  # still locked once
    cache.dec_lock_ref(node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 3
    assert cache.evict(10) == 3
    assert cache.total_size() == 0 and alloc.available_size() == 16


def test_locked_child_protects_ancestors_only():
    alloc = TokenAllocator(16)
    cache = RadixCache(alloc)
    cache.insert([1, 2, 3], alloc.alloc(3))
    cache.insert([1, 2, 4, 5], alloc.alloc(4))  # tree: [1,2] -> {[3], [4,5]}
    locked = cache.match_prefix([1, 2, 4, 5]).last_node
    cache.inc_lock_ref(locked)
    assert cache.protected_size() == 4 and cache.evictable_size() == 1
    assert cache.evict(100) == 1  # only the unlocked sibling [3]
    assert cache.match_prefix([1, 2, 3]).indices.numel() == 2
    assert cache.match_prefix([1, 2, 4, 5]).indices.numel() == 4
    _check_sizes(cache)


def test_lru_eviction_order():
    alloc = TokenAllocator(32)
    cache = RadixCache(alloc)
    cache.insert([1, 1], alloc.alloc(2))
    cache.insert([2, 2], alloc.alloc(2))
    cache.insert([3, 3], alloc.alloc(2))
    cache.match_prefix([1, 1])  # [1,1] becomes most recent; [2,2] is now the oldest
    assert cache.evict(1) == 2
    assert cache.match_prefix([2, 2]).indices.numel() == 0
    assert cache.match_prefix([3, 3]).indices.numel() == 2  # touch [3,3]: now [1,1] is oldest
    assert cache.evict(1) == 2
    assert cache.match_prefix([1, 1]).indices.numel() == 0
    assert cache.match_prefix([3, 3]).indices.numel() == 2


def test_eviction_cascades_to_parents_in_lru_order():
    alloc = TokenAllocator(32)
    cache = RadixCache(alloc)
    cache.insert([1, 2, 3], alloc.alloc(3))
    cache.insert([1, 2, 4], alloc.alloc(3))  # [1,2] -> {[3], [4]}
    cache.insert([7, 8], alloc.alloc(2))  # newest
    # Oldest leaves first: [3], then [4]; their parent [1,2] becomes a leaf older than [7,8].
    assert cache.evict(4) == 4
    assert cache.total_size() == 2
    assert cache.match_prefix([7, 8]).indices.numel() == 2
    assert cache.match_prefix([1, 2]).indices.numel() == 0


def test_evict_all_returns_every_slot_once():
    alloc = TokenAllocator(64)
    cache = RadixCache(alloc)
    initial = alloc.available_size()
    handed_out: set[int] = set()
    for key in ([1, 2, 3, 4], [1, 2, 5], [1, 6, 7, 8, 9], [2], [2, 3, 4]):
        prefix = cache.match_prefix(key).indices
        new = alloc.alloc(len(key) - prefix.numel())
        value = torch.cat([prefix, new])
        cached = cache.insert(key, value)
        assert cached == prefix.numel()
        handed_out.update(new.tolist())

    freed: list[int] = []
    orig_free = alloc.free

    def spy(slots: torch.Tensor) -> None:
        freed.extend(slots.tolist())
        orig_free(slots)

    alloc.free = spy
    total = cache.total_size()
    assert cache.evict(10**9) == total
    assert len(freed) == len(set(freed)) == total
    assert set(freed) == handed_out
    assert alloc.available_size() == initial
    assert cache.total_size() == 0 and cache.evictable_size() == 0
    assert cache.all_slots().numel() == 0


def test_reset_drops_everything():
    alloc = TokenAllocator(8)
    cache = RadixCache(alloc)
    cache.insert([1, 2], alloc.alloc(2))
    cache.inc_lock_ref(cache.match_prefix([1, 2]).last_node)
    cache.reset()
    assert cache.total_size() == 0 and cache.protected_size() == 0 and cache.evictable_size() == 0
    assert cache.match_prefix([1, 2]).indices.numel() == 0


def test_randomized_invariants():
    rng = random.Random(1234)
    alloc = TokenAllocator(256)
    cache = RadixCache(alloc)
    owned: set[int] = set()  # slots handed out to the tree and not yet freed
    freed_log: list[int] = []
    orig_free = alloc.free

    def spy(slots: torch.Tensor) -> None:
        for s in slots.tolist():
            assert s in owned, "slot freed twice or never handed to the tree"
            owned.discard(s)
        freed_log.extend(slots.tolist())
        orig_free(slots)

    alloc.free = spy
    locks: list[TreeNode] = []  # nodes we hold a lock on

    for _ in range(600):
        op = rng.random()
        if op < 0.45:
            key = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
            prefix = cache.match_prefix(key)
            need = len(key) - prefix.indices.numel()
            new = alloc.alloc(need)
            if new is None:
                cache.evict(need)
                continue
            cached = cache.insert(key, torch.cat([prefix.indices, new]))
            assert cached == prefix.indices.numel()  # nothing was evicted in between
            owned.update(new.tolist())
        elif op < 0.6:
            key = [rng.randrange(4) for _ in range(rng.randint(0, 12))]
            res = cache.match_prefix(key)
            assert set(res.indices.tolist()) <= owned
        elif op < 0.75:
            key = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
            node = cache.match_prefix(key).last_node
            if node is not cache.root:
                cache.inc_lock_ref(node)
                locks.append(node)
        elif op < 0.88:
            if locks:
                cache.dec_lock_ref(locks.pop(rng.randrange(len(locks))))
        else:
            before = cache.evictable_size()
            n_freed_before = len(freed_log)
            got = cache.evict(rng.randint(1, 20))
            assert got == len(freed_log) - n_freed_before
            assert cache.evictable_size() == before - got

        _check_sizes(cache)
        slots = cache.all_slots().tolist()
        assert len(slots) == len(set(slots))
        assert set(slots) == owned
        assert alloc.available_size() + len(owned) == 256
        assert cache.protected_size() == sum(len(n) for n in cache._nodes() if n.lock_ref > 0)

    for node in locks:
        cache.dec_lock_ref(node)
    assert cache.protected_size() == 0
    cache.evict(10**9)
    assert cache.total_size() == 0 and alloc.available_size() == 256
