"""Which CPU cores each tensor-parallel rank of this node computes on.

``SGLANG_CPU_OMP_THREADS_BIND`` is SGLang's variable: one core list per local rank, separated by ``|``
(``0-31|32-63`` puts two ranks on two sockets of 32 cores). Without it the cores this process may use are
split evenly, in order, between the local ranks.
"""

from __future__ import annotations

import os

BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


def parse_core_list(spec: str) -> list[int]:
    """``"0-3,8"`` -> [0, 1, 2, 3, 8]."""
    cores: list[int] = []
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores


def rank_cores(local_rank: int, local_size: int, spec: str | None, available: list[int]) -> list[int]:
    """The cores of local rank ``local_rank`` of ``local_size``: from ``spec`` (the variable) or an even split
    of ``available``."""
    if spec:
        parts = spec.split("|")
        if len(parts) != local_size:
            raise ValueError(f"{BIND_ENV}={spec!r} has {len(parts)} core lists for {local_size} ranks on this node")
        return parse_core_list(parts[local_rank])
    per_rank = max(1, len(available) // local_size)
    start = (local_rank * per_rank) % len(available)
    return available[start : start + per_rank]


def bind_rank_to_cores(local_rank: int, local_size: int) -> list[int]:
    """Pin this process (and so torch's threads) to its cores; returns them."""
    available = sorted(os.sched_getaffinity(0))
    cores = rank_cores(local_rank, local_size, os.environ.get(BIND_ENV), available)
    os.sched_setaffinity(0, cores)
    return cores
