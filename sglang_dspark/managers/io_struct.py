"""Messages between the tokenizer manager and the scheduler (small dataclasses, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sglang_dspark.sampling.sampling_params import SamplingParams


@dataclass
class TokenizedGenerateReqInput:
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no input logprobs
    top_logprobs_num: int = 0


@dataclass
class AbortReq:
    rid: str
    message: str = "aborted"


# (logprob, token_id); logprob is None for the first input token
TokenLogprob = tuple[float | None, int]
# top-k alternatives of one position as (logprob, token_id) pairs; None for the first input token
TopLogprobs = list[tuple[float, int]] | None


@dataclass
class ReqOutput:
    """What one scheduler step produced for one request; token and logprob lists are deltas."""

    rid: str
    new_output_ids: list[int]
    finished_reason: dict | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    output_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    output_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    input_token_logprobs: list[TokenLogprob] = field(default_factory=list)
    input_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    # speculative decoding totals so far (not deltas): verify rounds, drafts proposed / accepted
    spec_verify_ct: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0
    # per verify round, in the request's last output only: drafts verified, drafts accepted
    spec_draft_lens: list[int] | None = None
    spec_accept_lens: list[int] | None = None


# ---- messages between the HTTP process and the scheduler process -----------------------------
# Control messages carry an rpc_id; the scheduler process answers each with one RpcReply.


@dataclass
class GenerateBatchReq:
    """The scheduler requests of one HTTP call: validated together, admitted all or none."""

    rpc_id: int
    reqs: list[TokenizedGenerateReqInput]


@dataclass
class FlushCacheReq:
    rpc_id: int


@dataclass
class GetInternalStateReq:
    rpc_id: int


@dataclass
class RpcReply:
    rpc_id: int
    result: object = None
    error: str | None = None  # a user-facing message (the request was rejected)


@dataclass
class BatchReqOutput:
    """Everything one scheduler step (or an abort) produced."""

    outputs: list[ReqOutput]


@dataclass
class SchedulerInfo:
    """Sent once by the scheduler process when the model is loaded."""

    context_len: int
    vocab_size: int
    max_total_tokens: int
