"""The scheduler's batch: one request's state (``Req``), what a step runs of it (``ScheduledChunk``), the
step's forward and how its logits rows divide (``ForwardInput`` -> ``ForwardOutput``), and the counters."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from sglang_dspark.grammar import BaseGrammarObject, PendingGrammar
from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput, TokenLogprob, TopLogprobs
from sglang_dspark.managers.logprobs import PositionLogprobs
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.models.llama import ModelOutput

logger = logging.getLogger(__name__)


@dataclass
class FinishReason:
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None

    def to_json(self) -> dict:
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        if self.type == "length":
            return {"type": "length", "length": self.length}
        return {"type": "abort", "message": self.message}


class Req:
    """A request from admission to finish. Invariant: KV exists for fill_ids[:kv_len]."""

    def __init__(self, req: TokenizedGenerateReqInput, generator: torch.Generator | None) -> None:
        self.rid = req.rid
        self.origin_input_ids = req.input_ids
        self.sampling_params = req.sampling_params
        self.return_logprob = req.return_logprob
        self.logprob_start_len = req.logprob_start_len
        self.top_logprobs_num = req.top_logprobs_num
        self.generator = generator
        self.output_ids: list[int] = []
        self.finished_reason: FinishReason | None = None
        # structured output: the compile in flight, then the grammar at the end of output_ids
        self.pending_grammar: PendingGrammar | None = None
        self.grammar: BaseGrammarObject | None = None

        # memory
        self.req_pool_idx: int | None = None
        self.prefix_len = 0  # tokens whose KV slots belong to the radix tree (locked through last_node)
        self.last_node = None
        self.kv_len = 0
        # tokens jump-forward appended after the last sampled one, not yet run (the next decode runs them)
        self.jump_forward_pending = 0
        self.cached_tokens: int | None = None  # prefix hit at first admission, reported to the user

        # logprobs not yet sent
        self.pending_input_logprobs: list[TokenLogprob] = []
        self.pending_input_top: list[TopLogprobs] = []
        self.pending_output_logprobs: list[TokenLogprob] = []
        self.pending_output_top: list[TopLogprobs] = []
        # input logprobs: token p + 1 is scored by the logits at position p; the first entry is None
        wants_input = req.return_logprob and req.logprob_start_len >= 0
        self.next_input_logprob_pos = req.logprob_start_len
        self.input_logprobs_done = not wants_input or req.logprob_start_len == len(req.input_ids) - 1
        if wants_input:
            self.pending_input_logprobs.append((None, req.input_ids[req.logprob_start_len]))
            self.pending_input_top.append(None)
        self.sent_output_len = 0

        # speculative decoding: verify rounds, drafts proposed and accepted
        self.spec_verify_ct = 0
        self.spec_proposed = 0
        self.spec_accepted = 0
        self.spec_draft_lens: list[int] = []  # per verify round
        self.spec_accept_lens: list[int] = []

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def pending_tokens(self) -> int:
        """Tokens still to run through the model before the next sample (1 = decode)."""
        return len(self.origin_input_ids) + len(self.output_ids) - self.kv_len

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def max_prefix_len(self) -> int:
        """Longest radix prefix usable: input logprobs need the positions from logprob_start_len on."""
        limit = len(self.fill_ids) - 1  # the last token must run to produce logits
        if not self.input_logprobs_done:
            limit = min(limit, self.logprob_start_len)
        return max(limit, 0)

    def add_output_logprobs(self, lp: PositionLogprobs) -> None:
        """The logprobs of the output token just appended, sent with the next ReqOutput."""
        self.pending_output_logprobs.append(lp.token)
        self.pending_output_top.append(lp.top)

    def fail(self, error: Exception) -> None:
        """Finish with an abort naming ``error``: an exception in this request's own processing (sampling, its
        grammar, its verification) ends this request only; the scheduler releases it with the finished ones."""
        logger.error("request %s failed: %s", self.rid, error, exc_info=error)
        self.finished_reason = FinishReason("abort", message=f"internal error: {type(error).__name__}: {error}")

    def check_finished(self, eos_ids: set[int], tokenizer) -> None:
        params = self.sampling_params
        if len(self.output_ids) >= params.max_new_tokens:
            self.finished_reason = FinishReason("length", length=params.max_new_tokens)
            return
        if not self.output_ids or len(self.output_ids) < params.min_new_tokens:
            return
        last = self.output_ids[-1]
        if last in params.stop_token_ids or (not params.ignore_eos and last in eos_ids):
            self.finished_reason = FinishReason("stop", matched=last)
            return
        if params.stop:
            tail_len = max(len(s) for s in params.stop) + 2
            tail = tokenizer.decode(self.output_ids[-tail_len:], skip_special_tokens=False)
            for s in params.stop:
                if s in tail:
                    self.finished_reason = FinishReason("stop", matched=s)
                    return
        if params.stop_regex:
            text = tokenizer.decode(self.output_ids, skip_special_tokens=False)
            for pattern in params.stop_regex:
                if re.search(pattern, text):  # SGLang reports the pattern and keeps the matched text
                    self.finished_reason = FinishReason("stop", matched=pattern)
                    return


@dataclass
class ScheduledChunk:
    req: Req
    num_tokens: int  # tokens run in this step: fill_ids[kv_len : kv_len + num_tokens - len(drafts)] + drafts
    drafts: list[int] = field(default_factory=list)  # speculative drafts verified in this step
    forced: list[int] = field(default_factory=list)  # indices of drafts the grammar forces (accepted as given)


@dataclass
class InputLogprobRow:
    req: Req
    position: int  # the logits at this prompt position score the input token after it


@dataclass
class ForwardOutput:
    """The logits of one step, by what they are for (rows in the order of ForwardInput's lists)."""

    input_logprob_logits: torch.Tensor  # [len(input_logprob_rows), V]
    sample_logits: torch.Tensor  # [len(sample_reqs), V]
    verify_logits: torch.Tensor  # [sum(len(c.drafts) + 1 for c in verify_chunks), V]: anchor + drafts per chunk
    hidden_states: list[torch.Tensor]  # one [N, d] per captured layer


@dataclass
class ForwardInput:
    """One step's forward over the scheduled chunks, and which rows of it return logits: prompt positions
    whose input logprobs are wanted, requests that sample their next token, and each speculating
    request's anchor and drafts. ``build`` lays the rows out and ``split`` reads them back in that order."""

    batch: ForwardBatch
    input_logprob_rows: list[InputLogprobRow]
    sample_reqs: list[Req]
    verify_chunks: list[ScheduledChunk]

    @classmethod
    def build(
        cls, chunks: list[ScheduledChunk], kv_pool: KVPool, req_to_token: torch.Tensor, capture_layers: tuple[int, ...]
    ) -> ForwardInput:
        """chunks: each request's tokens of this step on top of its kv_len cached ones (KV slots allocated)."""
        input_ids: list[int] = []
        positions: list[int] = []
        logprob_rows: list[int] = []
        input_logprob_rows: list[InputLogprobRow] = []
        sample_rows: list[int] = []
        sample_reqs: list[Req] = []
        verify_rows: list[int] = []
        row = 0
        for chunk in chunks:
            req, n, start = chunk.req, chunk.num_tokens, chunk.req.kv_len
            fill = req.fill_ids
            input_ids += fill[start : start + n - len(chunk.drafts)] + chunk.drafts
            positions += range(start, start + n)
            if not req.input_logprobs_done:
                last_input = len(req.origin_input_ids) - 1
                for p in range(max(start, req.next_input_logprob_pos), min(start + n, last_input)):
                    logprob_rows.append(row + p - start)
                    input_logprob_rows.append(InputLogprobRow(req, p))
            if chunk.drafts:  # the anchor (the last pending token) and the drafts
                verify_rows += range(row + n - len(chunk.drafts) - 1, row + n)
            elif start + n == len(fill) and len(req.output_ids) < req.sampling_params.max_new_tokens:
                sample_rows.append(row + n - 1)
                sample_reqs.append(req)
            row += n
        dev = {"dtype": torch.int64, "device": req_to_token.device}
        batch = ForwardBatch(
            input_ids=torch.tensor(input_ids, **dev),
            positions=torch.tensor(positions, **dev),
            out_cache_loc=torch.cat(
                [req_to_token[c.req.req_pool_idx, c.req.kv_len : c.req.kv_len + c.num_tokens] for c in chunks]
            ),
            req_pool_indices=torch.tensor([c.req.req_pool_idx for c in chunks], **dev),
            seq_lens=[c.req.kv_len + c.num_tokens for c in chunks],
            extend_lens=[c.num_tokens for c in chunks],
            logits_indices=torch.tensor(logprob_rows + sample_rows + verify_rows, **dev),
            kv_pool=kv_pool,
            req_to_token=req_to_token,
            capture_layers=capture_layers,
        )
        return cls(batch, input_logprob_rows, sample_reqs, [c for c in chunks if c.drafts])

    def split(self, out: ModelOutput) -> ForwardOutput:
        """The model's logits [M, V] (rows = batch.logits_indices) divided as ``build`` laid them out."""
        lp, sample = len(self.input_logprob_rows), len(self.sample_reqs)
        logits = out.logits
        return ForwardOutput(logits[:lp], logits[lp : lp + sample], logits[lp + sample :], out.hidden_states)


@dataclass
class SchedulerStats:
    num_forwards: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    num_retractions: int = 0
    jump_forward_tokens: int = 0  # grammar-forced tokens appended without a model step
    verify_after_jump_forward: int = 0  # verify rounds whose drafts ran in one forward with forced tokens
    verify_through_forced: int = 0  # verify rounds whose drafts went on past grammar-forced tokens
