"""SpecRound: the owner of speculative decoding's rounds in the scheduler.

A round is one scheduler step for the decoding requests; the scheduler asks ``plan`` for the tokens each
decode verifies after its anchor, runs them in its step's forward, and hands the forward to ``finish``:

1. propose and plan (``SpecWorker.draft``): the proposer's drafts, cut to each request's verify length;
2. cut by the grammar (``SpecGrammar.valid_draft``) and by the free KV;
3. verify forward: the scheduler's ``ForwardInput`` runs each anchor + drafts as one extend;
4. accept (``SpecGrammar.mask_draft_logits``, then ``SpecWorker.verify``);
5. commit: append the tokens (with their logprobs from the grammar-masked verify rows, for requests that
   ask), advance the grammar, check for the end, jump forward;
6. free the KV slots of rejected drafts;
then ``observe`` reports the round's tokens and time to the worker (pacing.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sglang_dspark.managers.cache_manager import CacheManager
from sglang_dspark.managers.logprobs import PositionLogprobs, position_logprobs
from sglang_dspark.managers.schedule_batch import ForwardInput, ForwardOutput, Req, ScheduledChunk, SchedulerStats
from sglang_dspark.managers.spec_grammar import SpecGrammar, VerifyDraft
from sglang_dspark.speculative.spec_worker import SpecWorker


@dataclass
class RoundClock:
    """A step whose every chunk is a pure decode: its requests and their output lengths before it."""

    reqs: list[Req]
    generated_before: int
    started: float


@dataclass
class VerifyLogprobRows:
    """The grammar-masked verify rows of a round's requests that report logprobs, copied before verification:
    the committed token k of a request is scored by its row k (the anchor's row is 0), as plain decoding
    scores a sampled token by its masked sampling row."""

    logits: torch.Tensor  # [sum(len(c.drafts) + 1) over the logprob requests' chunks, V]
    starts: dict[int, int]  # id(req) -> the row of its anchor in logits

    @classmethod
    def copy(cls, chunks: list[ScheduledChunk], logits: torch.Tensor) -> VerifyLogprobRows:
        """logits [sum(len(c.drafts) + 1), V]: every chunk's anchor + drafts rows, in order."""
        rows: list[int] = []
        starts = {}
        start = 0
        for c in chunks:
            if c.req.return_logprob:
                starts[id(c.req)] = len(rows)
                rows += range(start, start + len(c.drafts) + 1)
            start += len(c.drafts) + 1
        return cls(logits[rows], starts)  # advanced indexing: a copy

    def committed(self, chunks: list[ScheduledChunk], tokens: list[list[int] | None]) -> list[list[PositionLogprobs]]:
        """Per chunk, the logprobs of the tokens it commits (empty for requests that do not ask)."""
        rows, targets, tops = [], [], []
        for c, toks in zip(chunks, tokens, strict=True):
            if toks is not None and id(c.req) in self.starts:
                rows += range(self.starts[id(c.req)], self.starts[id(c.req)] + len(toks))
                targets += toks
                tops += [c.req.top_logprobs_num] * len(toks)
        scored = iter(position_logprobs(self.logits[rows], targets, tops) if rows else [])
        return [
            [next(scored) for _ in toks] if toks is not None and id(c.req) in self.starts else []
            for c, toks in zip(chunks, tokens)
        ]


@dataclass
class SpecRound:
    worker: SpecWorker
    grammar: SpecGrammar
    cache: CacheManager  # frees the slots of rejected drafts
    stats: SchedulerStats  # the scheduler's counters
    eos_ids: set[int]
    tokenizer: object  # decodes stop strings (Req.check_finished)

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.worker.capture_layers

    @staticmethod
    def can_speculate(req: Req) -> bool:
        """Drafts are verified for plain, grammar and logprob requests; a request decodes normally while it is
        below min_new_tokens (its stop tokens are banned only from the sampling row)."""
        return len(req.output_ids) >= req.sampling_params.min_new_tokens

    def plan(self, decodes: list[Req], spare: int) -> dict[int, VerifyDraft]:
        """Steps 1-2: id(req) -> the tokens it verifies after its anchor, for every decode that speculates
        (possibly none); ``spare`` free KV slots bound them all together."""
        spec = [r for r in decodes if self.can_speculate(r)]
        if not spec:
            return {}
        room = [r.sampling_params.max_new_tokens - len(r.output_ids) - 1 for r in spec]
        plans = {}
        for req, draft, r in zip(spec, self.worker.draft(spec, room), room):
            plan = self.grammar.valid_draft(req, draft, min(max(spare, 0), r))
            spare -= len(plan.tokens)
            plans[id(req)] = plan
            self._count_planned(req, plan)
        return plans

    def _count_planned(self, req: Req, plan: VerifyDraft) -> None:
        drafted = len(plan.tokens) - len(plan.forced)  # forced tokens are not drafts in the metrics
        req.spec_verify_ct += 1
        req.spec_proposed += drafted
        req.spec_draft_lens.append(drafted)
        if not plan.tokens:  # nothing to verify: a plain decode step, a round that accepts 0 drafts
            req.spec_accept_lens.append(0)
        elif req.pending_tokens > 1:
            self.stats.verify_after_jump_forward += 1
        if plan.forced:
            self.stats.verify_through_forced += 1

    def clock(self, chunks: list[ScheduledChunk], started: float) -> RoundClock | None:
        """Before the forward: a clock for the round when every chunk is a pure decode, else None."""
        if not all(c.req.pending_tokens == 1 for c in chunks):
            return None
        reqs = [c.req for c in chunks]
        return RoundClock(reqs, sum(len(r.output_ids) for r in reqs), started)

    def finish(self, forward: ForwardInput, out: ForwardOutput) -> None:
        """Steps 4-6, after the forward (kv_len already counts each anchor): keep the drafter's context
        features, then accept, commit and free per speculating request."""
        if forward.batch.capture_layers:  # DSPARK: the drafter's context features, kept by KV slot
            self.worker.store_features(out.hidden_states, forward.batch.out_cache_loc)
        if forward.verify_chunks:
            self._commit(forward.verify_chunks, out.verify_logits)

    def _commit(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> None:
        """An exception while accepting fails the round's speculating requests, one while committing a
        request fails that request (Req.fail); either way the slots of drafts whose KV is not kept are freed."""
        reqs = [c.req for c in chunks]
        drafts = [c.drafts for c in chunks]
        try:
            logits = self.grammar.mask_draft_logits(reqs, drafts, logits)
            rows = VerifyLogprobRows.copy(chunks, logits)
            committed = self.worker.verify(reqs, drafts, logits, [c.forced for c in chunks])
            logprobs = rows.committed(chunks, committed)
        except Exception as e:
            committed, logprobs = [None] * len(chunks), [[]] * len(chunks)
            for req in reqs:
                req.fail(e)
        for chunk, tokens, lps in zip(chunks, committed, logprobs):
            end = chunk.req.kv_len + len(chunk.drafts)  # the anchor's KV is counted, the drafts' not yet
            if tokens is not None:
                try:
                    self._commit_one(chunk, tokens, lps)
                except Exception as e:
                    chunk.req.fail(e)
            self.cache.free_after_kv(chunk.req, end)

    def _commit_one(self, chunk: ScheduledChunk, tokens: list[int], logprobs: list[PositionLogprobs]) -> None:
        """Append the accepted drafts and the bonus token (with their logprobs, when the request asks: one per
        token), advance the grammar, jump forward; kv_len then counts the accepted drafts whose KV stays."""
        req, accepted = chunk.req, len(tokens) - 1
        forced = sum(i < accepted for i in chunk.forced)  # forced tokens are not drafts in the metrics
        req.spec_accepted += accepted - forced
        req.spec_accept_lens.append(accepted - forced)
        appended = 0
        for tok in tokens:
            req.output_ids.append(tok)
            if logprobs:
                req.add_output_logprobs(logprobs[appended])
            appended += 1
            self.grammar.commit(req, tok)
            if not req.finished:
                req.check_finished(self.eos_ids, self.tokenizer)
            if req.finished:
                break
        self.stats.generated_tokens += appended
        self.stats.jump_forward_tokens += sum(i < appended for i in chunk.forced)
        jumped = self.grammar.jump_forward(req)  # forced tokens: KV comes with the next extend
        if jumped:
            self.stats.jump_forward_tokens += jumped
            req.check_finished(self.eos_ids, self.tokenizer)
        # KV is valid for the anchor (already counted in kv_len) and the accepted drafts that stayed
        req.kv_len += min(accepted, appended)

    def observe(self, clock: RoundClock) -> None:
        """After a pure decode step: its committed tokens and wall time, drafting included."""
        tokens = sum(len(r.output_ids) for r in clock.reqs) - clock.generated_before
        self.worker.observe_round(len(clock.reqs), tokens, time.perf_counter() - clock.started)

    def release(self, rid: str) -> None:
        self.worker.release(rid)

    def request_states(self) -> int:
        return self.worker.request_states()
