"""Req: one request's state inside the scheduler; finish reasons in SGLang's JSON shape."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sglang_dspark.grammar import BaseGrammarObject, PendingGrammar
from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput, TokenLogprob, TopLogprobs


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
