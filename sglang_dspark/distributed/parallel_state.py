"""The tensor-parallel process group of one rank: rendezvous, collectives and their cost.

Every rank of a ``--tp-size N`` server is a process in one torch.distributed group (gloo on the CPU, nccl on
CUDA), met through a TCP store at ``--dist-init-addr`` that global rank 0 hosts. Global rank = node_rank *
(N / nnodes) + local rank, as in SGLang. There is no module-level group: the model and the runner hold the
``TpGroup`` they were built with.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from sglang_dspark.distributed.net import parse_host_port

logger = logging.getLogger(__name__)

# A follower waits for rank 0's next batch across idle periods of any length; a rank that dies is noticed
# at once through its closed connections, not through this time-out.
COLLECTIVE_TIMEOUT = timedelta(days=365)


@dataclass
class CommStats:
    """All-reduces of the row-parallel layers since the last reset (rank 0 reports them)."""

    all_reduce_calls: int = 0
    all_reduce_bytes: int = 0
    all_reduce_seconds: float = 0.0
    broadcast_bytes: int = 0  # the batch descriptions rank 0 sends each forward


@dataclass
class TpGroup:
    rank: int
    size: int
    group: dist.ProcessGroup
    stats: CommStats = field(default_factory=CommStats)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place (the partial products of a row-parallel matmul)."""
        started = time.perf_counter()
        dist.all_reduce(x, group=self.group)
        self.stats.all_reduce_seconds += time.perf_counter() - started
        self.stats.all_reduce_calls += 1
        self.stats.all_reduce_bytes += x.numel() * x.element_size()
        return x

    def broadcast_from_rank0(self, obj: object) -> object:
        """Rank 0 sends ``obj`` (pickled); every rank returns it."""
        if self.rank == 0:
            payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            size = torch.tensor([payload.numel()], dtype=torch.int64)
            self.stats.broadcast_bytes += payload.numel()
        else:
            size = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(size, 0, group=self.group)
        if self.rank != 0:
            payload = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(payload, 0, group=self.group)
        return obj if self.rank == 0 else pickle.loads(payload.numpy().tobytes())

    def close(self) -> None:
        dist.destroy_process_group(self.group)


def init_tp_group(rank: int, size: int, init_addr: str, timeout_s: float, device: str) -> TpGroup:
    """Join the group of ``size`` ranks that rank 0 hosts at ``init_addr``. Raises RuntimeError naming the
    address when the ranks have not all met within ``timeout_s``."""
    host, port = parse_host_port(init_addr)
    try:
        store = dist.TCPStore(host, port, size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
        dist.init_process_group(
            "nccl" if device.startswith("cuda") else "gloo",
            store=store,
            rank=rank,
            world_size=size,
            timeout=COLLECTIVE_TIMEOUT,
        )
    except Exception as e:  # the store's own errors name neither the flag nor, always, the address
        raise RuntimeError(
            f"tensor-parallel rank {rank} of {size} could not meet the others at --dist-init-addr {init_addr} "
            f"within --dist-timeout {timeout_s:g} s: {type(e).__name__}: {e}"
        ) from e
    logger.info("tensor-parallel rank %d of %d joined the group at %s", rank, size, init_addr)
    return TpGroup(rank, size, dist.group.WORLD)
