"""The scheduler's side of structured output: compile queue, per-step masks, advancing, jump-forward.

A request with a regex / json_schema / ebnf first waits here (not in the scheduler's waiting queue)
while its grammar compiles in the grammar thread pool; the scheduler polls, so a slow compile never
blocks the batch. Once compiled, the request's grammar object lives on ``Req.grammar``:

* sampling: its row of the logits gets -inf where its grammar's bitmask forbids (stop tokens are
  allowed only where the grammar may end), in place, before penalties (which keep -inf);
* after sampling: the token advances the grammar; a stop token terminates it (finish reason stop);
* jump-forward: tokens the grammar then forces are appended to ``output_ids`` without a model step.
  They still need KV: with them the request has ``pending_tokens`` > 1 and the scheduler runs them as
  one extend chunk before its next sample;
* speculative decoding: its grammar steps are in managers/spec_grammar.py.
"""

from __future__ import annotations

import logging
import time
import weakref
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures

import torch

from sglang_dspark.grammar import (
    CompileLimits,
    Constraint,
    GrammarCompiler,
    GrammarError,
    allocate_bitmask,
    create_backend,
)
from sglang_dspark.grammar.mask import apply_bitmask_
from sglang_dspark.managers.schedule_batch import FinishReason, Req
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)


def constraint_of(params: SamplingParams) -> Constraint | None:
    return Constraint.from_fields(
        regex=params.regex, json_schema=params.json_schema, ebnf=params.ebnf, structural_tag=params.structural_tag
    )


class GrammarManager:
    def __init__(self, args: ServerArgs, tokenizer, vocab_size: int, stop_token_ids: set[int]) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self._compiler: GrammarCompiler | None = None  # built on first use (a backend takes 1-5 s)
        self.queue: list[Req] = []  # compiling
        self._live: weakref.WeakSet = weakref.WeakSet()  # the grammar objects of requests, gone with them

    @property
    def compiler(self) -> GrammarCompiler:
        if self.args.grammar_backend == "none":
            raise ValueError(
                "structured output (regex / json_schema / ebnf) needs a grammar backend; this server runs "
                "with --grammar-backend none"
            )
        if self._compiler is None:
            limits = CompileLimits(self.args.grammar_compile_timeout, self.args.grammar_compile_memory_limit)
            backend = create_backend(
                self.args.grammar_backend, self.tokenizer, self.vocab_size, self.stop_token_ids, limits
            )
            self._compiler = GrammarCompiler(backend)
        return self._compiler

    def live_grammars(self) -> int:
        """Per-request grammar objects still referenced anywhere (0 once every constrained request is gone)."""
        return len(self._live)

    def close(self) -> None:
        """Stop compiling (the backend's compile processes exit)."""
        if self._compiler is not None:
            self._compiler.shutdown()

    # ---- compiling --------------------------------------------------------------------------------

    def validate(self, params: SamplingParams) -> None:
        """Compile (or find in the cache) the request's constraint, waiting at most the compile time
        limit; raises GrammarError (a ValueError) naming the reason. For callers off the model loop."""
        constraint = constraint_of(params)
        if constraint is not None:
            self.compiler.compile(constraint)

    def submit(self, req: Req) -> bool:
        """Queue req for compilation if it has a constraint (returns True); never blocks."""
        constraint = constraint_of(req.sampling_params)
        if constraint is None:
            return False
        req.pending_grammar = self.compiler.submit(constraint)
        self.queue.append(req)
        return True

    def poll(self) -> tuple[list[Req], list[Req]]:
        """(requests now ready to schedule, requests whose grammar failed: finished with abort)."""
        ready, failed = [], []
        for req in [r for r in self.queue if r.pending_grammar.ready()]:
            self.queue.remove(req)
            try:
                compiled = req.pending_grammar.compiled()
                req.grammar = self.compiler.make_grammar(compiled, req.sampling_params.json_bounds)
                self._live.add(req.grammar)
                ready.append(req)
            except GrammarError as e:
                req.finished_reason = FinishReason("abort", message=str(e))
                failed.append(req)
            req.pending_grammar = None
        return ready, failed

    def wait(self, timeout: float) -> None:
        """Sleep until a queued compile finishes or ``timeout`` s pass (when there is nothing else to do)."""
        if self.queue:
            deadline = min(r.pending_grammar.deadline for r in self.queue)
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            wait_futures([r.pending_grammar.future for r in self.queue], timeout, FIRST_COMPLETED)

    def remove(self, rid: str) -> Req | None:
        for req in self.queue:
            if req.rid == rid:
                self.queue.remove(req)
                return req
        return None

    # ---- sampling ---------------------------------------------------------------------------------

    def mask_logits(self, reqs: list[Req], logits: torch.Tensor) -> torch.Tensor:
        """In place: logits [B, V] get -inf where the requests' grammars forbid (unconstrained rows are
        untouched). Returns logits."""
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if rows:
            bitmask = allocate_bitmask(len(reqs), self.vocab_size)  # [B, W]
            self.compiler.backend.fill_masks([reqs[i].grammar for i in rows], bitmask, rows)
            apply_bitmask_(logits, bitmask, rows)
        return logits

    def advance(self, req: Req, token: int) -> None:
        """After ``token`` was appended to req.output_ids: advance the grammar, finish the request if
        the grammar terminated, else append the tokens it forces (jump-forward)."""
        self.accept(req, token)
        if not req.finished:
            self.jump_forward(req)

    def accept(self, req: Req, token: int) -> None:
        """Advance req's grammar by an appended token; finishes req if the grammar terminated (or, a bug,
        rejected the token)."""
        if not req.grammar.accept_token(token):  # the mask forbids this; reaching here is a bug
            logger.error("request %s: the grammar rejected sampled token %d", req.rid, token)
            req.finished_reason = FinishReason("abort", message=f"the grammar rejected token {token}")
        elif req.grammar.is_terminated():
            req.finished_reason = FinishReason("stop", matched=token)

    def jumps_forward(self, req: Req) -> bool:
        """Whether req's grammar-forced tokens are appended without sampling: not for requests that report
        logprobs (forced tokens have no sampled logprob: they decode them one by one)."""
        return not (self.args.disable_jump_forward or req.return_logprob)

    def jump_forward(self, req: Req) -> None:
        """Append the tokens req's grammar forces from here (unless disabled or logprobs are wanted)."""
        grammar = req.grammar
        if not self.jumps_forward(req):
            return
        room = req.sampling_params.max_new_tokens - len(req.output_ids)
        forced = grammar.jump_forward_tokens()[:room]
        accepted = grammar.accept_tokens(forced)
        req.output_ids += forced[:accepted]
        req.jump_forward_pending = accepted
