"""Tokenizer manager: user requests -> tokenized scheduler requests; scheduler outputs -> SGLang responses."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from sglang_dspark.managers.io_struct import ReqOutput, TokenizedGenerateReqInput, TokenLogprob, TopLogprobs
from sglang_dspark.sampling.sampling_params import SamplingParams


@dataclass
class GenerateReqInput:
    """SGLang's /generate request body (text or input_ids, single or batched)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict | list[dict] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    stream: bool = False

    @property
    def is_single(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, str)
        return not self.input_ids or isinstance(self.input_ids[0], int)

    @property
    def batch_size(self) -> int:
        if self.is_single:
            return 1
        return len(self.text if self.text is not None else self.input_ids)


@dataclass
class RequestState:
    """Everything received so far for one scheduler request; renders SGLang's response dict."""

    req: TokenizedGenerateReqInput
    return_text_in_logprobs: bool
    created: float = field(default_factory=time.perf_counter)
    output_ids: list[int] = field(default_factory=list)
    finished_reason: dict | None = None
    cached_tokens: int = 0
    completion_tokens: int = 0
    input_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    input_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    output_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    output_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    first_token_time: float | None = None
    last_token_time: float | None = None
    spec: ReqOutput | None = None  # latest output: carries the speculative decoding totals

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def update(self, out: ReqOutput) -> None:
        if out.new_output_ids:
            self.last_token_time = time.perf_counter()
            if self.first_token_time is None:
                self.first_token_time = self.last_token_time
        self.output_ids += out.new_output_ids
        self.finished_reason = out.finished_reason
        self.cached_tokens = out.cached_tokens
        self.completion_tokens = out.completion_tokens
        self.input_token_logprobs += out.input_token_logprobs
        self.input_top_logprobs += out.input_top_logprobs
        self.output_token_logprobs += out.output_token_logprobs
        self.output_top_logprobs += out.output_top_logprobs
        self.spec = out


class TokenizerManager:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def tokenize(self, obj: GenerateReqInput) -> list[TokenizedGenerateReqInput]:
        """Expand a (possibly batched, possibly n > 1) request into scheduler requests, index i*n + j."""
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("exactly one of `text` and `input_ids` must be given")
        size = obj.batch_size
        texts = [obj.text] if obj.is_single and obj.text is not None else obj.text
        ids = [obj.input_ids] if obj.is_single and obj.input_ids is not None else obj.input_ids
        params = obj.sampling_params
        if isinstance(params, list):
            if len(params) != size:
                raise ValueError(f"got {len(params)} sampling_params for {size} prompts")
        else:
            params = [params] * size
        rids = obj.rid if isinstance(obj.rid, list) else [obj.rid] * size
        if len(rids) != size:
            raise ValueError(f"got {len(rids)} rids for {size} prompts")
        if obj.top_logprobs_num < 0:
            raise ValueError("top_logprobs_num must be >= 0")
        if obj.logprob_start_len < -1:
            raise ValueError("logprob_start_len must be >= -1")

        out = []
        for i in range(size):
            sp = SamplingParams.from_dict(params[i])
            input_ids = list(ids[i]) if ids is not None else self.tokenizer.encode(texts[i])
            base = rids[i] or uuid.uuid4().hex
            for j in range(sp.n):
                per = SamplingParams.from_dict({**sp.to_dict(), "n": 1})
                if sp.n > 1 and sp.sampling_seed is not None:
                    per.sampling_seed = sp.sampling_seed + j
                out.append(
                    TokenizedGenerateReqInput(
                        rid=base if sp.n == 1 else f"{base}-{j}",
                        input_ids=input_ids,
                        sampling_params=per,
                        return_logprob=obj.return_logprob,
                        logprob_start_len=obj.logprob_start_len if obj.return_logprob else -1,
                        top_logprobs_num=obj.top_logprobs_num if obj.return_logprob else 0,
                    )
                )
        return out

    def output_text(self, state: RequestState) -> str:
        params = state.req.sampling_params
        ids = state.output_ids
        reason = state.finished_reason or {}
        if reason.get("type") == "stop" and isinstance(reason.get("matched"), int) and not params.no_stop_trim:
            ids = ids[:-1]
        text = self.tokenizer.decode(
            ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        if reason.get("type") == "stop" and reason.get("matched") in params.stop and not params.no_stop_trim:
            pos = text.find(reason["matched"])
            if pos >= 0:
                text = text[:pos]
        if not state.finished:  # streaming: cumulative texts must only ever grow
            text = _stable_prefix(text, params.stop)
        return text

    def response(self, state: RequestState) -> dict:
        meta = {
            "id": state.req.rid,
            "finish_reason": state.finished_reason,
            "prompt_tokens": len(state.req.input_ids),
            "completion_tokens": state.completion_tokens,
            "cached_tokens": state.cached_tokens,
            "e2e_latency": time.perf_counter() - state.created,
        }
        if state.first_token_time is not None:
            meta["first_token_latency"] = state.first_token_time - state.created
        spec = state.spec
        if spec is not None and spec.spec_verify_ct:
            meta["spec_verify_ct"] = spec.spec_verify_ct
            meta["spec_accept_length"] = state.completion_tokens / spec.spec_verify_ct
            meta["spec_accept_rate"] = spec.spec_accepted / spec.spec_proposed if spec.spec_proposed else 0.0
            meta["spec_num_correct_drafts"] = spec.spec_accepted
            meta["spec_num_proposed_drafts"] = spec.spec_proposed
            if spec.spec_draft_lens is not None:  # the final output: per-round detail
                meta["spec_draft_lens"] = spec.spec_draft_lens
                meta["spec_accept_lens"] = spec.spec_accept_lens
        if state.req.return_logprob:
            meta["input_token_logprobs"] = self._lp(state.input_token_logprobs, state.return_text_in_logprobs)
            meta["output_token_logprobs"] = self._lp(state.output_token_logprobs, state.return_text_in_logprobs)
            meta["input_top_logprobs"] = self._top(state.input_top_logprobs, state.return_text_in_logprobs)
            meta["output_top_logprobs"] = self._top(state.output_top_logprobs, state.return_text_in_logprobs)
        return {"text": self.output_text(state), "output_ids": list(state.output_ids), "meta_info": meta}

    def _lp(self, entries: list[TokenLogprob], with_text: bool) -> list[list]:
        return [[lp, tok, self.tokenizer.decode([tok]) if with_text else None] for lp, tok in entries]

    def _top(self, entries: list[TopLogprobs], with_text: bool) -> list[list | None]:
        return [None if pairs is None else self._lp(pairs, with_text) for pairs in entries]


def _stable_prefix(text: str, stops: list[str]) -> str:
    """`text` without the tail that later tokens may still rewrite: an incomplete UTF-8 character
    (decoded as U+FFFD) or the beginning of a stop string (trimmed away if the stop completes)."""
    text = text.rstrip("\ufffd")
    hold = max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
    return text[: len(text) - hold]
