"""What a proposer reads (``SpecRequest``), what it returns (``Draft``) and its interface (``Proposer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.planner import survival_of


class SpecRequest(Protocol):
    """What the speculative side reads of a scheduler request."""

    rid: str
    origin_input_ids: list[int]
    output_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None
    grammar: object | None
    req_pool_idx: int | None  # row of the request-to-KV-slot table
    kv_len: int  # tokens with KV: the anchor follows grammar-forced tokens not yet run when it is below the anchor


@dataclass
class Draft:
    tokens: list[int]  # [k]
    confidences: list[float]  # [k], c[j] = P(draft j accepted | drafts < j accepted)
    probs: torch.Tensor | None = None  # [k, V] distributions the drafts were sampled from; None = deterministic
    source: str = "draft"  # which proposer (and how) made it, for the online calibration
    raw_confidences: list[float] | None = None  # [k] before online calibration, when it was applied


class Proposer(Protocol):
    capture_layers: tuple[int, ...]  # target layers whose hidden states store_features receives; -1 = embeddings

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]: ...

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None: ...

    def release(self, rid: str) -> None: ...

    def request_states(self) -> int: ...  # requests this proposer keeps state for (0 when idle)


def draft_temperature(req: SpecRequest) -> float:
    """0 (greedy drafts) for greedy and grammar requests (the scheduler may cut a grammar request's draft,
    which is lossless for deterministic drafts only), else the request's temperature."""
    params = req.sampling_params
    return 0.0 if params.is_greedy or req.grammar is not None else params.temperature


def expected_drafts(draft: Draft) -> float:
    """Expected accepted drafts if all were verified: the sum of the survival probabilities."""
    return sum(survival_of(draft.confidences))


def seeded_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator sampled drafts draw from, on the device they are drawn on: seeded with ``seed``, or from
    the OS when None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
