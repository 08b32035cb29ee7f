"""The processes of the tensor-parallel ranks other than 0.

Rank 0 (the scheduler's ModelRunner) starts the other ranks of node 0; ``launch_server --node-rank K`` starts
all ranks of node K. Each rank is ``python -m sglang_dspark.model_executor.tp_processes``: it loads its shard
and runs rank 0's forwards until rank 0 releases it or goes away. A rank that dies takes the server down:
rank 0 watches the ranks it started and exits at once, naming the rank; the others notice a dead peer at the
next all-reduce or broadcast, whose connection is closed.
"""

from __future__ import annotations

import base64
import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


def local_ranks(args: ServerArgs) -> list[int]:
    """The global ranks on this node: node_rank * (tp / nnodes) onward."""
    per_node = args.tp_size // args.nnodes
    return list(range(args.node_rank * per_node, (args.node_rank + 1) * per_node))


@dataclass
class TpRanks:
    """Processes of tensor-parallel ranks started by this one."""

    procs: dict[int, subprocess.Popen]  # global rank -> process
    _stopping: threading.Event = field(default_factory=threading.Event)

    def first_exit(self) -> tuple[int, int] | None:
        """(rank, exit code) of a rank that has exited, if any."""
        for rank, proc in self.procs.items():
            if proc.poll() is not None:
                return rank, proc.returncode
        return None

    def watch(self) -> None:
        """From now on, exit this process as soon as one of the ranks exits (unless ``stop`` was called)."""
        threading.Thread(target=self._watch, name="tp-rank-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            exited = self.first_exit()
            if exited is not None:
                rank, code = exited
                logger.error(
                    "tensor-parallel rank %d (pid %d) exited with code %s; the server cannot go on without it and "
                    "stops",
                    rank,
                    self.procs[rank].pid,
                    code,
                )
                self._terminate()
                os._exit(1)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._terminate()

    def _terminate(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def start_tp_ranks(args: ServerArgs, model_dir: Path, ranks: list[int]) -> TpRanks:
    """Start one process per rank in ``ranks``; their output goes to this process's."""
    procs = {}
    for rank in ranks:
        payload = base64.b64encode(pickle.dumps((args, model_dir, rank))).decode()
        cmd = [sys.executable, "-m", "sglang_dspark.model_executor.tp_processes", payload]
        procs[rank] = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr)
    return TpRanks(procs)


def serve_node(args: ServerArgs, model_dir: Path) -> int:
    """``launch_server --node-rank K`` (K > 0): run this node's ranks until one exits; returns its exit code."""
    ranks = start_tp_ranks(args, model_dir, local_ranks(args))
    try:
        while (exited := ranks.first_exit()) is None:
            time.sleep(WATCH_INTERVAL_S)
    finally:
        ranks.stop(timeout_s=5.0)
    rank, code = exited
    logger.info("tensor-parallel rank %d exited with code %s; node %d stops", rank, code, args.node_rank)
    return code


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started this one exits, however it ended."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(payload: str) -> int:
    from sglang_dspark.model_executor.model_runner import ModelRunner  # the runner imports this module

    args, model_dir, rank = pickle.loads(base64.b64decode(payload))
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s tp rank {rank} %(name)s: %(message)s")
    _die_with_parent()
    runner = ModelRunner(args, model_dir, tp_rank=rank)
    try:
        runner.follow()
    except RuntimeError as e:  # rank 0 (or another rank) went away mid-collective
        logger.error("tensor-parallel rank %d stops: a peer is gone (%s)", rank, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
