"""Several proposers combined per request: the draft that expects the most accepted tokens wins."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from sglang_dspark.speculative.draft import Draft, Proposer, SpecRequest, expected_drafts
from sglang_dspark.speculative.pacing import ProposerGate


@dataclass
class BestOfProposer:
    """Several proposers, cheapest first; per request, the draft with the most expected committed drafts,
    sum_j prod_{i <= j} c_i (docs/design.md "Combining proposers": e.g. the n-gram / radix proposer and the
    DSpark drafter; ties go to the earlier proposer). A request whose best draft so far already expects
    ``enough`` drafts is not offered to the later (costlier) proposers: the drafter rarely beats a long,
    sure n-gram match, and drafting costs time. With a ``gate``, a later proposer also sits out the kinds of
    requests (grammar or not) where its drafts have lately added too little. At most one of them may
    capture target hidden states."""

    proposers: tuple[Proposer, ...]
    enough: float = float("inf")
    gate: ProposerGate | None = None

    def __post_init__(self) -> None:
        if sum(bool(p.capture_layers) for p in self.proposers) > 1:
            raise ValueError("at most one combined proposer may capture hidden states")

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return next((p.capture_layers for p in self.proposers if p.capture_layers), ())

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        best = self.proposers[0].propose(reqs, num_tokens)
        scores = [expected_drafts(d) for d in best]
        for index, proposer in enumerate(self.proposers[1:], start=1):
            todo = [i for i, score in enumerate(scores) if score < self.enough]
            cut: set[Hashable] = set()  # kinds the gate left out requests of (exploring with one of them)
            if self.gate is not None:
                kinds = {i: (index, reqs[i].grammar is not None) for i in todo}
                kept = self._within_quota(todo, kinds)
                cut = {kinds[i] for i in set(todo) - set(kept)}
                todo = kept
            if not todo:
                continue
            start = time.perf_counter()
            drafts = proposer.propose([reqs[i] for i in todo], [num_tokens[i] for i in todo])
            per_request = (time.perf_counter() - start) / len(todo)
            for i, draft in zip(todo, drafts):
                score = expected_drafts(draft)
                if self.gate is not None:  # an exploring request's share of the call is not its drafting cost
                    seconds = None if kinds[i] in cut else per_request
                    self.gate.observe(kinds[i], max(0.0, score - scores[i]), seconds)
                if score > scores[i]:
                    best[i], scores[i] = draft, score
        return best

    def _within_quota(self, todo: list[int], kinds: dict[int, Hashable]) -> list[int]:
        quota = {k: self.gate.quota(k) for k in dict.fromkeys(kinds.values())}
        kept = []
        for i in todo:
            left = quota[kinds[i]]
            if left is None or left > 0:
                kept.append(i)
                quota[kinds[i]] = None if left is None else left - 1
        return kept

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        next(p for p in self.proposers if p.capture_layers).store_features(hidden_states, slots)

    def release(self, rid: str) -> None:
        for p in self.proposers:
            p.release(rid)

    def request_states(self) -> int:
        return max(p.request_states() for p in self.proposers)
