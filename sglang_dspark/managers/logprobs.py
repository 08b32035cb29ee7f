"""The logprobs a request reports: for each scored position, the logprob of its token and the top-k alternatives,
read from the logits row that scored it with the request's grammar mask applied (the model's distribution over
the tokens the grammar allows there, renormalized; no penalty or temperature). Plain decoding reads the sampling
row, input logprobs the prompt rows and a speculative round the verify rows of its committed tokens, all through
``position_logprobs``. Tokens the mask forbids are never alternatives: a position where fewer than k tokens are
allowed reports fewer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.layers.sampler import compute_logprobs
from sglang_dspark.managers.io_struct import TokenLogprob, TopLogprobs

NEG_INF = float("-inf")  # the logprob of a token the grammar mask forbids


@dataclass
class PositionLogprobs:
    """One position of one request: its token's (logprob, id) and its top alternatives (None when not asked)."""

    token: TokenLogprob
    top: TopLogprobs


def position_logprobs(logits: torch.Tensor, tokens: list[int], top_nums: list[int]) -> list[PositionLogprobs]:
    """logits [N, V] rows (grammar-masked where a grammar applies), tokens [N] the token each row scores,
    top_nums [N] how many alternatives each position reports at most (0: none)."""
    lps, top_v, top_i = compute_logprobs(
        logits, torch.tensor(tokens, dtype=torch.int64, device=logits.device), max(top_nums, default=0)
    )
    token_lps = lps.tolist()
    top_v = top_v.tolist() if top_v is not None else None
    top_i = top_i.tolist() if top_i is not None else None
    return [
        PositionLogprobs(
            (token_lps[j], tokens[j]),
            [(v, i) for v, i in zip(top_v[j][:k], top_i[j][:k]) if v != NEG_INF] if top_v is not None and k else None,
        )
        for j, k in enumerate(top_nums)
    ]
