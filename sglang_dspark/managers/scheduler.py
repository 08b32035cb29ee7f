"""Scheduler: continuous batching over one flat ragged token batch.

Every running request has `pending_tokens` >= 1 tokens to run before its next sample: 1 for
decode, more while its prompt is (chunk by chunk) prefilled. Each step runs all decodes plus
prefill chunks up to `chunked_prefill_size` tokens in one forward, then samples for every
request whose pending tokens are done. With speculative decoding, ``SpecRound`` (spec_round.py)
plans the drafts each decode verifies in the step and commits what the forward accepts.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from pathlib import Path

import torch

from sglang_dspark.layers.sampler import SamplingBatchInfo, greedy_or_sample, make_generator, process_logits
from sglang_dspark.managers.cache_manager import CacheManager, KVUsage
from sglang_dspark.managers.grammar_manager import GrammarManager
from sglang_dspark.managers.io_struct import ReqOutput, TokenizedGenerateReqInput
from sglang_dspark.managers.logprobs import position_logprobs
from sglang_dspark.managers.schedule_batch import (
    FinishReason,
    ForwardInput,
    InputLogprobRow,
    Req,
    ScheduledChunk,
    SchedulerStats,
)
from sglang_dspark.managers.spec_grammar import SpecGrammar, VerifyDraft
from sglang_dspark.managers.spec_round import SpecRound
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.setup import build_spec_worker

logger = logging.getLogger(__name__)

DECODE_RESERVE_PER_REQ = 8  # free slots kept per running request when admitting new prefills
# a decode step also runs up to this many tokens jump-forward appended (more go through the prefill budget)
MAX_DECODE_EXTEND = 65
GRAMMAR_IDLE_WAIT = 0.05  # s to wait for a compile when nothing else can run (instead of spinning)


class Scheduler:
    def __init__(self, server_args: ServerArgs, model_dir: Path, tokenizer) -> None:
        self.args = server_args
        self.tokenizer = tokenizer
        self.runner = ModelRunner(server_args, model_dir)
        self.vocab_size = self.runner.vocab_size
        self.context_len = self.runner.context_len
        self.cache = CacheManager(
            self.runner.req_to_token_pool, self.runner.token_allocator, not server_args.disable_radix_cache
        )
        self.eos_ids = set(self.runner.config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.seed_rng = random.Random(server_args.random_seed)
        if server_args.random_seed is not None:
            torch.manual_seed(server_args.random_seed)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.stats = SchedulerStats()
        self.grammars = GrammarManager(server_args, tokenizer, self.vocab_size, self.eos_ids)
        worker = build_spec_worker(server_args, self.runner, model_dir, self.cache.tree)
        self.spec = None
        if worker is not None:
            self.spec = SpecRound(worker, SpecGrammar(self.grammars), self.cache, self.stats, self.eos_ids, tokenizer)

    # ---- requests in and out -------------------------------------------------------------

    def validate(self, req: TokenizedGenerateReqInput) -> None:
        """Raise ValueError with a user-facing message if the request cannot run. Compiles its grammar
        (cached), waiting at most --grammar-compile-timeout: call it off the model loop."""
        self._check_request(req)
        self.grammars.validate(req.sampling_params)

    def _check_request(self, req: TokenizedGenerateReqInput) -> None:
        n = len(req.input_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        bad = [t for t in req.input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"input_ids contain ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        if n >= self.context_len:
            raise ValueError(
                f"the prompt has {n} tokens, but the context length is {self.context_len}; shorten the prompt"
            )
        if n + req.sampling_params.max_new_tokens > self.context_len:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({req.sampling_params.max_new_tokens}) exceeds the "
                f"context length ({self.context_len})"
            )
        req.sampling_params.validate(self.vocab_size)
        if n + req.sampling_params.max_new_tokens > self.runner.max_total_tokens:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({req.sampling_params.max_new_tokens}) exceeds the KV pool "
                f"({self.runner.max_total_tokens} tokens; raise --max-total-tokens)"
            )
        if req.return_logprob and req.logprob_start_len >= n:
            raise ValueError(f"logprob_start_len ({req.logprob_start_len}) must be below the prompt length ({n})")

    def add_request(self, req: TokenizedGenerateReqInput) -> None:
        """Never blocks: a request with a grammar waits in self.grammars until compiled (a grammar that
        fails then finishes it with an abort output from step())."""
        self._check_request(req)
        params = req.sampling_params
        generator = None
        if not params.is_greedy:
            seed = params.sampling_seed
            if seed is None and self.args.random_seed is not None:
                seed = self.seed_rng.randrange(2**62)
            if seed is not None:
                generator = make_generator(seed, self.runner.device)
        scheduled = Req(req, generator)
        if not self.grammars.submit(scheduled):
            self.waiting.append(scheduled)

    def abort_request(self, rid: str, message: str = "aborted") -> ReqOutput | None:
        compiling = self.grammars.remove(rid)
        if compiling is not None:
            compiling.finished_reason = FinishReason("abort", message=message)
            return self._make_output(compiling)
        for queue in (self.waiting, self.running):
            for req in queue:
                if req.rid == rid:
                    queue.remove(req)
                    self._release(req)
                    req.finished_reason = FinishReason("abort", message=message)
                    return self._make_output(req)
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.grammars.queue)

    def kv_usage(self) -> KVUsage:
        return self.cache.usage()

    def flush_cache(self) -> bool:
        return not self.has_work() and self.cache.flush()

    # ---- one step --------------------------------------------------------------------------

    def step(self) -> list[ReqOutput]:
        """Schedule, run one forward, sample; returns the outputs of every request that progressed."""
        started = time.perf_counter()
        ready, failed = self.grammars.poll()
        self.waiting.extend(ready)
        outputs = [self._make_output(r) for r in failed]
        chunks = self._schedule()
        if not chunks:
            if not outputs:
                self.grammars.wait(GRAMMAR_IDLE_WAIT)
            return outputs
        clock = self.spec.clock(chunks, started) if self.spec else None
        capture = self.spec.capture_layers if self.spec else ()
        pool = self.runner.req_to_token_pool.req_to_token
        forward = ForwardInput.build(chunks, self.runner.kv_pool, pool, capture)
        out = forward.split(self.runner.forward(forward.batch))
        self.stats.num_forwards += 1
        for chunk in chunks:
            chunk.req.kv_len += chunk.num_tokens - len(chunk.drafts)
        self._record_input_logprobs(forward.input_logprob_rows, out.input_logprob_logits)
        if forward.sample_reqs:
            self._sample(forward.sample_reqs, out.sample_logits)
        if self.spec:
            self.spec.finish(forward, out)
        sampled = {id(r) for r in forward.sample_reqs} | {id(c.req) for c in forward.verify_chunks}
        for chunk in chunks:
            req = chunk.req
            if req.pending_tokens == 0 and not req.finished:  # max_new_tokens == 0: prompt only (sgl.select)
                req.finished_reason = FinishReason("length", length=0)
            if req.finished:
                self.running.remove(req)
                self._release(req)
            if id(req) in sampled or req.finished:
                outputs.append(self._make_output(req))
        if clock is not None:
            self.spec.observe(clock)
        return outputs

    def _schedule(self) -> list[ScheduledChunk]:
        decodes = [r for r in self.running if self._decodes_now(r)]
        while self.cache.available_tokens() < sum(r.pending_tokens for r in decodes) and len(self.running) > 1:
            self._retract(decodes)
        if self.cache.available_tokens() < sum(r.pending_tokens for r in decodes):  # forced tokens wait
            decodes = [r for r in decodes if r.pending_tokens == 1]
        chunks = self._schedule_decodes(decodes)
        budget = self.args.chunked_prefill_size
        # running prefills continue first, then waiting requests are admitted in arrival order
        for req in [r for r in self.running if r.pending_tokens > 1 and r not in decodes]:
            n = min(req.pending_tokens, budget, self.cache.available_tokens())
            if n <= 0:
                break
            chunks.append(self._take(req, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.args.max_running_requests:
            req = self.waiting[0]
            if not self.cache.admit(req):
                break
            reserve = DECODE_RESERVE_PER_REQ * len(self.running)
            n = min(req.pending_tokens, budget, self.cache.available_tokens() - reserve)
            if n <= 0:
                self.cache.release(req)
                break
            self.waiting.popleft()
            self.running.append(req)
            self.stats.prompt_tokens += len(req.origin_input_ids)
            self.stats.cached_prompt_tokens += req.prefix_len
            chunks.append(self._take(req, n))
            budget -= n
        return chunks

    def _take(self, req: Req, n: int, verify: VerifyDraft | None = None) -> ScheduledChunk:
        """Allocate KV for req's next n tokens, then for the tokens it verifies after them."""
        verify = verify or VerifyDraft()
        n += len(verify.tokens)
        if self.cache.alloc_slots(req, n) is None:  # callers check available_tokens() first
            raise RuntimeError(f"KV pool exhausted allocating {n} slots")
        req.jump_forward_pending = 0  # from here on they are ordinary pending tokens
        return ScheduledChunk(req, n, verify.tokens, verify.forced)

    @staticmethod
    def _decodes_now(req: Req) -> bool:
        """Whether req samples its next token this step as a decode: only its last sampled token and the
        tokens jump-forward appended after it (their KV comes with this step) are pending."""
        pending = req.pending_tokens
        return pending == 1 or (pending == 1 + req.jump_forward_pending and pending <= MAX_DECODE_EXTEND)

    def _schedule_decodes(self, decodes: list[Req]) -> list[ScheduledChunk]:
        """Each decode runs its pending tokens (1, or the anchor after grammar-forced ones); speculating
        requests add the tokens they verify (SpecRound.plan) while free KV allows."""
        plans = {}
        if self.spec:
            spare = self.cache.available_tokens() - sum(r.pending_tokens for r in decodes)
            try:
                plans = self.spec.plan(decodes, spare)
            except Exception:  # drafting is an optimisation: decode without drafts this step
                logger.exception("drafting failed; this step decodes without drafts")
        return [self._take(req, req.pending_tokens, plans.get(id(req))) for req in decodes]

    def _release(self, req: Req) -> None:
        self.cache.release(req)
        if self.spec:
            self.spec.release(req.rid)

    def _retract(self, decodes: list[Req]) -> None:
        """Free the newest running request's KV and put it back at the front of the queue."""
        req = self.running.pop()
        if req in decodes:
            decodes.remove(req)
        self.cache.release(req)
        self.waiting.appendleft(req)
        self.stats.num_retractions += 1
        logger.warning("KV pool full: retracted request %s (%d tokens)", req.rid, len(req.fill_ids))

    def _record_input_logprobs(self, rows: list[InputLogprobRow], logits: torch.Tensor) -> None:
        """logits [len(rows), V]: row i at rows[i].position scores the input token after it."""
        if not rows:
            return
        targets = [r.req.origin_input_ids[r.position + 1] for r in rows]
        scored = position_logprobs(logits, targets, [r.req.top_logprobs_num for r in rows])
        for row, lp in zip(rows, scored):
            req, p = row.req, row.position
            req.pending_input_logprobs.append(lp.token)
            req.pending_input_top.append(lp.top)
            req.next_input_logprob_pos = p + 1
            req.input_logprobs_done = p + 1 == len(req.origin_input_ids) - 1

    def _sample(self, reqs: list[Req], logits: torch.Tensor) -> None:
        """Sample, then append and advance each request. logits [len(reqs), V]. Where the batched sampling
        raises, each request samples alone and only those that raise again fail (Req.fail); an exception in one
        request's append or grammar fails that request only."""
        try:
            next_ids: list[int | None] = self._sample_ids(reqs, logits)
        except Exception:
            logger.exception("sampling a batch of %d failed; sampling its requests one by one", len(reqs))
            next_ids = [self._sample_alone(req, logits[i : i + 1]) for i, req in enumerate(reqs)]
        for req, tok in zip(reqs, next_ids):
            if tok is None:
                continue
            try:
                self._append(req, tok)
            except Exception as e:
                req.fail(e)

    def _sample_alone(self, req: Req, logits: torch.Tensor) -> int | None:
        try:
            return self._sample_ids([req], logits)[0]
        except Exception as e:
            req.fail(e)
            return None

    def _sample_ids(self, reqs: list[Req], logits: torch.Tensor) -> list[int]:
        """The next token of each request (grammar masks, penalties, sampling) and its logprobs if asked."""
        params = [r.sampling_params for r in reqs]
        info = SamplingBatchInfo.from_params(params, self.vocab_size, logits.device)
        prompt_ids = [r.origin_input_ids for r in reqs]
        output_ids = [r.output_ids for r in reqs]
        want_lp = [i for i, r in enumerate(reqs) if r.return_logprob]
        # grammar masks go in first (penalties and biases keep -inf; process_logits works out of place, so
        # `masked` stays the masked model distribution that logprobs report)
        masked = self.grammars.mask_logits(reqs, logits)
        processed = process_logits(masked, info, prompt_ids, output_ids, self._min_tokens_ban(reqs, masked))
        next_ids = greedy_or_sample(processed, info, [r.generator for r in reqs]).tolist()
        if want_lp:
            scored = position_logprobs(
                masked[want_lp], [next_ids[i] for i in want_lp], [reqs[i].top_logprobs_num for i in want_lp]
            )
            for i, lp in zip(want_lp, scored):
                reqs[i].add_output_logprobs(lp)
        return next_ids

    def _append(self, req: Req, tok: int) -> None:
        req.output_ids.append(tok)
        self.stats.generated_tokens += 1
        if req.grammar is not None:
            n = len(req.output_ids)
            self.grammars.advance(req, tok)  # may finish req, or append forced tokens
            self.stats.jump_forward_tokens += len(req.output_ids) - n
        if not req.finished:
            req.check_finished(self.eos_ids, self.tokenizer)

    def _min_tokens_ban(self, reqs: list[Req], logits: torch.Tensor) -> torch.Tensor | None:
        rows = [i for i, r in enumerate(reqs) if len(r.output_ids) < r.sampling_params.min_new_tokens]
        if not rows:
            return None
        banned = torch.zeros(len(reqs), self.vocab_size, dtype=torch.bool, device=logits.device)
        for i in rows:
            params = reqs[i].sampling_params
            stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
            banned[i, [t for t in stop_ids if 0 <= t < self.vocab_size]] = True  # ids outside the vocab never occur
            if reqs[i].grammar is not None and not (torch.isfinite(logits[i]) & ~banned[i]).any():
                banned[i] = False  # the grammar allows nothing but a stop token: it wins over min_new_tokens
        return banned

    def _make_output(self, req: Req) -> ReqOutput:
        new_ids = req.output_ids[req.sent_output_len :]
        req.sent_output_len = len(req.output_ids)
        out = ReqOutput(
            rid=req.rid,
            new_output_ids=new_ids,
            finished_reason=req.finished_reason.to_json() if req.finished_reason else None,
            prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens or 0,
            output_token_logprobs=req.pending_output_logprobs,
            output_top_logprobs=req.pending_output_top,
            input_token_logprobs=req.pending_input_logprobs,
            input_top_logprobs=req.pending_input_top,
            spec_verify_ct=req.spec_verify_ct,
            spec_proposed=req.spec_proposed,
            spec_accepted=req.spec_accepted,
            spec_draft_lens=req.spec_draft_lens if req.finished else None,
            spec_accept_lens=req.spec_accept_lens if req.finished else None,
        )
        req.pending_output_logprobs, req.pending_output_top = [], []
        req.pending_input_logprobs, req.pending_input_top = [], []
        return out
