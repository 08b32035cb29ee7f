from dataclasses import dataclass, field

import pytest
import torch

from sglang_dspark.speculative.spec_worker import BestOfProposer, Draft, expected_drafts


@dataclass
class FixedProposer:
    """Returns the same draft per request id; records what it was given."""

    drafts: dict[str, Draft]
    capture_layers: tuple[int, ...] = ()
    stored: list[torch.Tensor] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def propose(self, reqs, num_tokens):
        return [self.drafts[r.rid] for r in reqs]

    def store_features(self, hidden_states, slots):
        self.stored.append(slots)

    def release(self, rid):
        self.released.append(rid)


@dataclass
class Req:
    rid: str


def test_expected_drafts_is_the_sum_of_survivals():
    assert expected_drafts(Draft([1, 2, 3], [0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.25 + 0.25)
    assert expected_drafts(Draft([], [])) == 0.0


def test_best_of_picks_per_request_and_routes_features():
    long_weak = Draft([1, 2, 3, 4], [0.3, 0.3, 0.3, 0.3])  # 0.43 expected
    short_sure = Draft([5], [0.9])  # 0.9 expected
    drafter = FixedProposer({"a": long_weak, "b": Draft([6, 7], [0.9, 0.9])}, capture_layers=(1, 2))
    ngram = FixedProposer({"a": short_sure, "b": Draft([], [])})
    best = BestOfProposer((drafter, ngram))
    assert best.capture_layers == (1, 2)
    assert best.propose([Req("a"), Req("b")], [4, 4]) == [short_sure, drafter.drafts["b"]]
    best.store_features([torch.zeros(3, 4)], torch.arange(3))
    assert len(drafter.stored) == 1 and not ngram.stored
    best.release("a")
    assert drafter.released == ngram.released == ["a"]


def test_best_of_refuses_two_feature_consumers():
    with pytest.raises(ValueError, match="at most one"):
        BestOfProposer((FixedProposer({}, capture_layers=(1,)), FixedProposer({}, capture_layers=(2,))))
