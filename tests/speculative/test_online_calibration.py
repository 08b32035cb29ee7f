import pytest
import torch

from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.draft import Draft
from sglang_dspark.speculative.online_calibration import CalibratedProposer, OnlineCalibration
from sglang_dspark.speculative.spec_worker import SpecWorker
from sglang_dspark.speculative.verify_policy import ThresholdVerify


def test_no_observations_keep_the_raw_confidences():
    assert OnlineCalibration().calibrate("ngram", [0.5, 0.25, 1.0]) == pytest.approx([0.5, 0.25, 1.0])


def test_observations_move_each_cell_towards_its_acceptance_rate():
    cal = OnlineCalibration(prior_weight=4.0)
    for _ in range(36):  # position 0 accepted 1 time in 3 ... then always rejected; position 1 always accepted
        cal.observe("ngram", [0.5, 0.5, 0.5], num_verified=3, num_accepted=2)
        cal.observe("ngram", [0.5, 0.5, 0.5], num_verified=3, num_accepted=0)
        cal.observe("ngram", [0.5, 0.5, 0.5], num_verified=3, num_accepted=0)
    c0, c1, c2 = cal.calibrate("ngram", [0.5, 0.5, 0.5])
    assert c0 == pytest.approx((36 + 2) / (108 + 4))
    assert c1 == pytest.approx((36 + 2) / (36 + 4))  # conditional: only rounds that accepted draft 0 count
    assert c2 == pytest.approx((0 + 2) / (36 + 4))
    # other sources, positions past the counted ones and other confidence bins are untouched
    assert cal.calibrate("radix", [0.5]) == pytest.approx([0.5])
    assert cal.calibrate("ngram", [0.95])[0] == pytest.approx(0.95)
    assert cal.calibrate("ngram", [0.5] * 4)[3] == pytest.approx(0.5)


def test_a_draft_after_the_first_rejection_is_not_counted():
    cal = OnlineCalibration()
    cal.observe("ngram", [0.5, 0.5, 0.5], num_verified=3, num_accepted=0)
    assert set(cal.counts) == {("ngram", 0, 5)}
    cal.observe("ngram", [0.5, 0.5], num_verified=1, num_accepted=1)  # a round that verified one draft
    assert cal.counts[("ngram", 0, 5)] == [1.0, 2.0]


def test_memory_halves_old_counts():
    cal = OnlineCalibration(memory=8.0)
    for _ in range(7):
        cal.observe("x", [0.1], 1, 0)
    cal.observe("x", [0.1], 1, 1)
    assert cal.counts[("x", 0, 1)] == [0.5, 4.0]


class Req:
    def __init__(self, rid):
        self.rid = rid
        self.sampling_params = SamplingParams(temperature=0, max_new_tokens=16)
        self.origin_input_ids = [1, 2]
        self.output_ids = [3]
        self.generator = None
        self.grammar = None


class Proposer:
    capture_layers = ()

    def propose(self, reqs, num_tokens):
        return [Draft([7, 8, 9], [0.5, 0.5, 0.5], source="test") for _ in reqs]

    def release(self, rid):
        pass


def test_verified_rounds_raise_the_confidence_of_drafts_that_keep_being_accepted():
    """A proposer that under-rates its drafts: the threshold planner (0.6) verifies only the first at the
    raw 0.5 ... 0.25 survival; once rounds accept, calibrated confidences pass the threshold."""
    cal = OnlineCalibration(prior_weight=2.0)
    worker = SpecWorker(CalibratedProposer(Proposer(), cal), 3, 16, ThresholdVerify(0.3), calibration=cal)
    reqs = [Req("a")]
    logits = torch.zeros(4, 16)
    logits[torch.arange(4), torch.tensor([7, 8, 9, 5])] = 10.0  # the target agrees with every draft
    lengths = []
    for _ in range(6):
        (drafts,) = worker.draft(reqs, [8])
        lengths.append(len(drafts))
        (committed,) = worker.verify(reqs, [drafts], logits[: len(drafts) + 1])
        assert committed == [7, 8, 9][: len(drafts)] + [[8, 9, 5][len(drafts) - 1] if drafts else 7]
    assert lengths[0] == 1 and lengths[-1] == 3
    assert worker.proposals["a"].raw_confidences == [0.5, 0.5, 0.5]
