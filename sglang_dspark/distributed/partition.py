"""Which slice of each weight a tensor-parallel rank holds (pure functions, SGLang's split rules).

Attention heads are split by KV group: rank r holds a contiguous run of KV heads and exactly the query heads
that attend to them, so its attention needs nothing from the other ranks. Where the KV heads do not divide
evenly the earlier ranks hold one group more (SmolLM2-135M, 3 KV heads over 2 ranks: 2 + 1 groups, 6 + 3 query
heads); where there are fewer KV heads than ranks each KV head is replicated on tp / kv ranks that split its
query heads, as SGLang does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Rows (or columns) [start, start + size) of a full checkpoint tensor."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class HeadShard:
    q_heads: Span  # query heads of this rank
    kv_heads: Span  # KV heads of this rank (the same head on several ranks where replicated)


def even_span(total: int, tp_size: int, tp_rank: int, what: str) -> Span:
    """The tp_rank-th of tp_size equal parts of ``total`` (an MLP's intermediate size)."""
    if total % tp_size:
        raise ValueError(f"--tp-size {tp_size} does not divide the {total} {what}")
    size = total // tp_size
    return Span(tp_rank * size, size)


def _balanced(total: int, parts: int, index: int) -> Span:
    """The index-th of ``parts`` contiguous runs of ``total`` items, the first ``total % parts`` one longer."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return Span(start, base + (index < extra))


def head_shard(num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int) -> HeadShard:
    """The attention heads rank ``tp_rank`` of ``tp_size`` holds. Raises ValueError naming the numbers where no
    split keeps each query head with its KV head on one rank."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} attention heads are not a multiple of the {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads  # query heads per KV head
    if tp_size <= num_kv_heads:
        kv = _balanced(num_kv_heads, tp_size, tp_rank)
        return HeadShard(Span(kv.start * group, kv.size * group), kv)
    replicas = tp_size // num_kv_heads
    if tp_size % num_kv_heads or group % replicas:
        raise ValueError(
            f"--tp-size {tp_size} does not divide the {num_heads} attention heads ({num_kv_heads} KV heads): "
            f"use a tp size up to {num_kv_heads}, or one that divides both {num_heads} and is a multiple of "
            f"{num_kv_heads}"
        )
    kv_head = tp_rank // replicas
    per_rank = group // replicas
    return HeadShard(Span(kv_head * group + (tp_rank % replicas) * per_rank, per_rank), Span(kv_head, 1))
