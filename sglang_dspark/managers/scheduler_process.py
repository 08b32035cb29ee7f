"""The scheduler process: owns the model and runs `Scheduler.step()` in a loop.

It talks to the HTTP process over two ZMQ PUSH/PULL sockets (pickled io_struct messages): requests,
aborts and control RPCs come in; step outputs and RPC replies go out. While there is work it only
polls its inbox between steps, so HTTP traffic never stalls decoding; when idle it blocks on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import zmq
from transformers import AutoTokenizer

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
from sglang_dspark.managers.resource_counts import count_resources
from sglang_dspark.managers.scheduler import Scheduler
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 500  # how often an idle scheduler checks that its parent is still alive
VALIDATING_POLL_MS = 5  # how often an otherwise idle scheduler looks for finished grammar validations


class SchedulerLoop:
    def __init__(self, scheduler: Scheduler, inbox: zmq.Socket, outbox: zmq.Socket, parent_pid: int) -> None:
        self.scheduler = scheduler
        self.inbox = inbox
        self.outbox = outbox
        self.parent_pid = parent_pid
        # validating a constraint compiles its grammar (up to seconds): that runs on this thread while
        # the loop keeps stepping; the batch is admitted once it is done
        self.validator = ThreadPoolExecutor(1, thread_name_prefix="validate")
        self.validating: list[tuple[GenerateBatchReq, Future[str | None]]] = []
        self.aborted_while_validating: dict[str, str] = {}  # rid -> abort message
        # finished speculating requests: completion tokens and verify rounds, for the mean accept length
        self.spec_tokens = 0
        self.spec_rounds = 0
        self.handlers = {
            GenerateBatchReq: self._generate,
            AbortReq: self._abort,
            FlushCacheReq: lambda msg: self._reply(msg.rpc_id, self.scheduler.flush_cache()),
            GetInternalStateReq: lambda msg: self._reply(msg.rpc_id, self.internal_state()),
        }

    def run(self) -> None:
        while os.getppid() == self.parent_pid:  # exit with the HTTP process, however it ended
            for item in [item for item in self.validating if item[1].done()]:
                self.validating.remove(item)
                self._admit(item[0], item[1].result())
            busy = self.scheduler.has_work()
            self._drain_inbox(0 if busy else VALIDATING_POLL_MS if self.validating else IDLE_POLL_MS)
            if self.scheduler.has_work():
                outputs = self.scheduler.step()
                if outputs:
                    self._count_spec(outputs)
                    self.outbox.send_pyobj(BatchReqOutput(outputs))
        logger.info("parent process %d is gone; scheduler exits", self.parent_pid)

    def internal_state(self) -> dict:
        """Live scheduler state, JSON-able: `/server_info`'s `internal_states` entry and the metric gauges."""
        scheduler, stats = self.scheduler, self.scheduler.stats
        resources = dataclasses.asdict(count_resources(scheduler))
        return {
            "num_running_reqs": len(scheduler.running),
            "num_waiting_reqs": len(scheduler.waiting),
            "kv_usage": dataclasses.asdict(scheduler.kv_usage()),
            "cache_hit_rate": stats.cached_prompt_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0,
            **dataclasses.asdict(stats),
            # completion tokens per verify round over finished speculating requests; None without speculation
            "avg_spec_accept_length": self.spec_tokens / self.spec_rounds if self.spec_rounds else None,
            # zero when idle; requests still being validated are counted with the others
            "resources": {**resources, "requests": resources["requests"] + len(self.validating)},
            # --tp-size > 1: rank 0's all-reduces and batch broadcasts so far (bytes, seconds)
            "tp_comm": dataclasses.asdict(scheduler.runner.tp.stats) if scheduler.runner.tp else None,
        }

    def _count_spec(self, outputs: list[ReqOutput]) -> None:
        for out in outputs:
            if out.finished_reason is not None and out.spec_verify_ct:
                self.spec_tokens += out.completion_tokens
                self.spec_rounds += out.spec_verify_ct

    def _drain_inbox(self, timeout_ms: int) -> None:
        if not self.inbox.poll(timeout_ms):
            return
        while True:
            try:
                msg = self.inbox.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handlers[type(msg)](msg)

    def _generate(self, msg: GenerateBatchReq) -> None:
        if any(req.sampling_params.has_constraint for req in msg.reqs):
            self.validating.append((msg, self.validator.submit(self._validate, msg.reqs)))
        else:
            self._admit(msg, self._validate(msg.reqs))

    def _validate(self, reqs: list[TokenizedGenerateReqInput]) -> str | None:
        """None if every request can run (all or nothing: one bad entry rejects the call), else why not."""
        try:
            for req in reqs:
                self.scheduler.validate(req)
        except ValueError as e:
            return str(e)
        return None

    def _admit(self, msg: GenerateBatchReq, error: str | None) -> None:
        self._reply(msg.rpc_id, error=error)
        aborted = {req.rid: self.aborted_while_validating.pop(req.rid, None) for req in msg.reqs}
        if error is not None:
            return
        for req in msg.reqs:
            self.scheduler.add_request(req)
        for rid, message in aborted.items():
            if message is not None:
                self._abort(AbortReq(rid, message))

    def _abort(self, msg: AbortReq) -> None:
        if any(req.rid == msg.rid for batch, _ in self.validating for req in batch.reqs):
            self.aborted_while_validating[msg.rid] = msg.message
            return
        out = self.scheduler.abort_request(msg.rid, msg.message)
        if out is not None:
            self.outbox.send_pyobj(BatchReqOutput([out]))

    def _reply(self, rpc_id: int, result: object = None, error: str | None = None) -> None:
        self.outbox.send_pyobj(RpcReply(rpc_id, result, error))


def run_scheduler_process(
    server_args: ServerArgs, model_dir: Path, inbox_addr: str, outbox_addr: str, ready: Connection
) -> None:
    """Entry point of the child process: load the model, report `SchedulerInfo` (or the error), loop."""
    logging.basicConfig(level=server_args.log_level.upper(), format="%(asctime)s scheduler %(name)s: %(message)s")
    parent_pid = os.getppid()
    try:
        tokenizer = AutoTokenizer.from_pretrained(server_args.tokenizer_path or model_dir)
        scheduler = Scheduler(server_args, model_dir, tokenizer)
    except Exception as e:
        ready.send(f"{type(e).__name__}: {e}")
        raise
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.connect(inbox_addr)
    outbox = ctx.socket(zmq.PUSH)
    outbox.setsockopt(zmq.SNDHWM, 0)
    outbox.connect(outbox_addr)
    ready.send(SchedulerInfo(scheduler.context_len, scheduler.vocab_size, scheduler.runner.max_total_tokens))
    try:
        SchedulerLoop(scheduler, inbox, outbox, parent_pid).run()
    finally:
        scheduler.grammars.close()
        ctx.destroy(linger=0)
