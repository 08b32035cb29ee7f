"""The HTTP process's side of the scheduler process: spawn it, submit requests, route its outputs.

Every HTTP call opens one `RequestGroup` (its scheduler requests after batch / n > 1 expansion).
One receiver task reads the scheduler's outputs and folds them into the groups' states; a handler
awaits its own group only, and a slow handler sees coalesced updates, so it never holds up others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import zmq
import zmq.asyncio

from sglang_dspark.managers.io_struct import (
    AbortReq,
    BatchReqOutput,
    FlushCacheReq,
    GenerateBatchReq,
    GetInternalStateReq,
    ReqOutput,
    RpcReply,
    SchedulerInfo,
    TokenizedGenerateReqInput,
)
from sglang_dspark.managers.metrics import ServerMetrics
from sglang_dspark.managers.scheduler_process import run_scheduler_process
from sglang_dspark.managers.tokenizer_manager import RequestState
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

LIVENESS_POLL_MS = 1000  # how often the receiver checks the scheduler process while it is quiet
STARTUP_TIMEOUT_S = 600.0
SCHEDULER_DIED = "the scheduler process died"


class SchedulerUnavailable(RuntimeError):
    """The scheduler process is not running (it failed to start or died)."""


class RequestGroup:
    """The scheduler requests of one HTTP call, in response order (index i * n + j)."""

    def __init__(self, states: list[RequestState]) -> None:
        self.states = states
        self.index = {s.req.rid: i for i, s in enumerate(states)}
        self._changed: set[int] = set()
        self._event = asyncio.Event()

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.states)

    def push(self, out: ReqOutput) -> None:
        i = self.index[out.rid]
        self.states[i].update(out)
        self._changed.add(i)
        self._event.set()

    async def updates(self) -> AsyncIterator[list[int]]:
        """Indices of the states that changed since the last yield, until every state is finished."""
        while True:
            await self._event.wait()
            self._event.clear()
            changed = sorted(self._changed)
            self._changed.clear()
            yield changed
            if self.finished:
                return

    async def wait_finished(self) -> None:
        async for _ in self.updates():
            pass


class SchedulerClient:
    def __init__(self, server_args: ServerArgs, model_dir: Path, metrics: ServerMetrics | None) -> None:
        self.metrics = metrics
        self.died = False  # the scheduler process exited while serving (not through close())
        self.on_death: Callable[[], None] | None = None  # called once, after every request is failed
        self._groups: dict[str, RequestGroup] = {}
        self._rpcs: dict[int, asyncio.Future[RpcReply]] = {}
        self._rpc_ids = itertools.count()
        self._ipc_dir = tempfile.mkdtemp(prefix="sglang_dspark_")
        to_scheduler, from_scheduler = f"ipc://{self._ipc_dir}/in", f"ipc://{self._ipc_dir}/out"
        self._sync_ctx = zmq.Context()
        self._sender = self._sync_ctx.socket(zmq.PUSH)
        self._sender.setsockopt(zmq.SNDHWM, 0)
        self._sender.bind(to_scheduler)
        self._async_ctx = zmq.asyncio.Context()
        self._receiver = self._async_ctx.socket(zmq.PULL)
        self._receiver.bind(from_scheduler)

        ready_recv, ready_send = multiprocessing.Pipe(duplex=False)
        self._proc = multiprocessing.get_context("spawn").Process(
            target=run_scheduler_process,
            args=(server_args, model_dir, to_scheduler, from_scheduler, ready_send),
            name="sglang_dspark-scheduler",
            daemon=True,
        )
        self._proc.start()
        ready_send.close()
        self.info = self._wait_ready(ready_recv)

    def _wait_ready(self, conn) -> SchedulerInfo:
        if conn.poll(STARTUP_TIMEOUT_S):
            try:
                msg = conn.recv()
            except EOFError:
                msg = f"the scheduler process exited with code {self._proc.exitcode}"
        else:
            msg = f"the scheduler process did not start within {STARTUP_TIMEOUT_S:.0f} s"
        if isinstance(msg, SchedulerInfo):
            return msg
        self.close()
        raise SchedulerUnavailable(f"model loading failed: {msg}")

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start routing outputs (call inside the server's event loop; cancel the task to stop)."""
        return asyncio.get_running_loop().create_task(self._receive_loop())

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        self._sync_ctx.destroy(linger=0)
        self._async_ctx.destroy(linger=0)
        shutil.rmtree(self._ipc_dir, ignore_errors=True)

    # ---- requests ------------------------------------------------------------------------------

    @asynccontextmanager
    async def open(
        self, reqs: list[TokenizedGenerateReqInput], return_text_in_logprobs: bool
    ) -> AsyncIterator[RequestGroup]:
        """Submit `reqs` (all are admitted, or ValueError with the scheduler's message) and yield their
        group. Leaving the block early (client gone, error, cancellation) aborts what is unfinished."""
        if not reqs:
            raise ValueError("the request has no prompts")
        rids = [r.rid for r in reqs]
        if len(set(rids)) != len(rids) or any(rid in self._groups for rid in rids):
            raise ValueError(f"request ids must be unique among running requests: {rids}")
        group = RequestGroup([RequestState(r, return_text_in_logprobs) for r in reqs])
        self._groups.update(dict.fromkeys(rids, group))
        rejected = False
        try:
            try:
                await self._rpc(lambda rpc_id: GenerateBatchReq(rpc_id, reqs))
            except ValueError:
                rejected = True
                raise
            if self.metrics:
                self.metrics.on_submit(group.states)
            yield group
        finally:
            # also when cancelled while the scheduler validates: the abort reaches it after the batch
            unfinished = [] if rejected else [s.req.rid for s in group.states if not s.finished]
            if unfinished and self.alive:
                for rid in unfinished:
                    self._post(AbortReq(rid, "the client went away"))
                if self.metrics:
                    self.metrics.on_abort(len(unfinished))
            for rid in rids:
                self._groups.pop(rid, None)

    def abort(self, rid: str | None, abort_all: bool = False, message: str = "aborted by request") -> int:
        """Abort running requests by id (a user rid also matches its n > 1 children `rid-j`)."""
        targets = [
            r
            for r, g in self._groups.items()
            if not g.states[g.index[r]].finished and (abort_all or r == rid or r.rpartition("-")[0] == rid)
        ]
        for r in targets:
            self._post(AbortReq(r, message))
        return len(targets)

    async def flush_cache(self) -> bool:
        return await self._rpc(FlushCacheReq)

    async def internal_state(self) -> dict:
        """The scheduler's internal state; its ``resources`` also count this process's open requests."""
        state = await self._rpc(GetInternalStateReq)
        state["resources"]["http_requests"] = len(self._groups)
        return state

    # ---- plumbing ------------------------------------------------------------------------------

    def _post(self, msg: object) -> None:
        if not self.alive:
            raise SchedulerUnavailable("the scheduler process is not running")
        self._sender.send_pyobj(msg, zmq.NOBLOCK)

    async def _rpc(self, make: Callable[[int], object]) -> object:
        rpc_id = next(self._rpc_ids)
        future = asyncio.get_running_loop().create_future()
        self._rpcs[rpc_id] = future
        try:
            self._post(make(rpc_id))
            reply: RpcReply = await future
        finally:
            self._rpcs.pop(rpc_id, None)
        if reply.error is not None:
            raise ValueError(reply.error)
        return reply.result

    async def _receive_loop(self) -> None:
        while True:
            if not await self._receiver.poll(LIVENESS_POLL_MS):
                if not self.alive:
                    self._fail_everything()
                    return
                continue
            msg = await self._receiver.recv_pyobj()
            if isinstance(msg, RpcReply):
                future = self._rpcs.get(msg.rpc_id)
                if future is not None and not future.done():
                    future.set_result(msg)
            elif isinstance(msg, BatchReqOutput):
                for out in msg.outputs:
                    group = self._groups.get(out.rid)
                    if group is None:  # its handler already left (e.g. the abort of a disconnected client)
                        continue
                    if self.metrics:
                        self.metrics.on_output(group.states[group.index[out.rid]], out)
                    group.push(out)

    def _fail_everything(self) -> None:
        logger.error("the scheduler process died (exit code %s)", self._proc.exitcode)
        self.died = True
        error = SchedulerUnavailable(SCHEDULER_DIED)
        for future in self._rpcs.values():
            if not future.done():
                future.set_exception(error)
        for rid, group in self._groups.items():
            state = group.states[group.index[rid]]
            if not state.finished:
                group.push(
                    ReqOutput(
                        rid=rid,
                        new_output_ids=[],
                        finished_reason={"type": "abort", "message": SCHEDULER_DIED},
                        prompt_tokens=len(state.req.input_ids),
                        completion_tokens=state.completion_tokens,
                        cached_tokens=state.cached_tokens,
                    )
                )
        if self.on_death is not None:
            self.on_death()
