"""The split rules: which heads, channels and cores each rank gets, and the replicas' command lines."""

from __future__ import annotations

import pytest

from sglang_dspark.distributed.cpu_binding import parse_core_list, rank_cores
from sglang_dspark.distributed.partition import HeadShard, Span, even_span, head_shard
from sglang_dspark.entrypoints.data_parallel import replica_argv, replica_cores


def test_heads_split_by_kv_group_earlier_ranks_take_the_extra_group():
    # SmolLM2-135M: 9 query heads in 3 KV groups of 3
    assert head_shard(9, 3, 2, 0) == HeadShard(Span(0, 6), Span(0, 2))
    assert head_shard(9, 3, 2, 1) == HeadShard(Span(6, 3), Span(2, 1))
    assert [head_shard(9, 3, 3, r) for r in range(3)] == [HeadShard(Span(3 * r, 3), Span(r, 1)) for r in range(3)]


def test_kv_heads_are_replicated_when_ranks_outnumber_them():
    # 8 query heads, 2 KV heads, 4 ranks: each KV head on 2 ranks, which split its 4 query heads
    assert [head_shard(8, 2, 4, r) for r in range(4)] == [
        HeadShard(Span(0, 2), Span(0, 1)),
        HeadShard(Span(2, 2), Span(0, 1)),
        HeadShard(Span(4, 2), Span(1, 1)),
        HeadShard(Span(6, 2), Span(1, 1)),
    ]


def test_impossible_splits_name_the_numbers():
    with pytest.raises(ValueError, match="--tp-size 4 does not divide the 9 attention heads"):
        head_shard(9, 3, 4, 0)
    with pytest.raises(ValueError, match="--tp-size 5 does not divide the 1536 MLP channels"):
        even_span(1536, 5, 0, "MLP channels")


def test_cores_from_sglang_variable_or_an_even_split():
    assert parse_core_list("0-3,8") == [0, 1, 2, 3, 8]
    assert rank_cores(1, 2, "0-31|32-63", []) == list(range(32, 64))
    assert rank_cores(1, 2, None, [0, 1, 2, 3]) == [2, 3]
    with pytest.raises(ValueError, match="2 core lists for 3 ranks"):
        rank_cores(0, 3, "0|1", [])


def test_replicas_get_their_own_port_and_cores():
    argv = ["--dp-size", "2", "--port=30000", "--host", "0.0.0.0", "--dtype", "float32"]
    assert replica_argv(argv, 4321) == ["--dtype", "float32", "--host", "127.0.0.1", "--port", "4321"]
    assert [replica_cores(i, 2, [0, 1, 2, 3]) for i in range(2)] == [[0, 1], [2, 3]]
