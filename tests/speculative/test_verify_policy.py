import pytest
import torch

from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.planner import async_batch_cap, plan_verify_lengths
from sglang_dspark.speculative.verify_policy import (
    AdaptiveVerify,
    AsyncVerify,
    FixedVerify,
    ThresholdVerify,
    make_verify_policy,
)

CONF = torch.tensor([[0.9, 0.9, 0.9], [0.5, 1.0, 0.0]])  # a = [.9 .81 .729], [.5 .5 0]; request 1 has 2 drafts
LENS = torch.tensor([3, 2])


def test_adaptive_is_algorithm_1_with_early_stop(cpu_sps):
    assert AdaptiveVerify(cpu_sps).lengths(CONF, LENS).tolist() == plan_verify_lengths(CONF, cpu_sps).tolist()


def test_async_takes_its_budget_from_the_confidences_of_two_rounds_ago(appendix_a_sps):
    policy = AsyncVerify(appendix_a_sps)
    old = torch.tensor([[0.8, 0.9]])  # full search on these: K = 2
    assert async_batch_cap(old, appendix_a_sps) == 2
    # the first two rounds have no history: Algorithm 1
    assert policy.lengths(old, torch.tensor([2])).tolist() == plan_verify_lengths(old, appendix_a_sps).tolist()
    assert policy.lengths(CONF, LENS).tolist() == plan_verify_lengths(CONF, appendix_a_sps).tolist()
    # third round: the top 2 current candidates (.9 and .81, both of request 0), whatever Algorithm 1 says
    assert policy.lengths(CONF, LENS).tolist() == [2, 0]
    assert plan_verify_lengths(CONF, appendix_a_sps).tolist() != [2, 0]
    # the budget keeps moving with the history: the round two back had CONF (full search on it)
    assert policy.lengths(CONF, LENS).sum() == async_batch_cap(CONF, appendix_a_sps)


def test_fixed_verifies_every_proposed_draft():
    assert FixedVerify().lengths(CONF, LENS).tolist() == [3, 2]


def test_threshold_cuts_at_the_survival_threshold_and_never_past_a_draft():
    assert ThresholdVerify(0.8).lengths(CONF, LENS).tolist() == [2, 0]
    assert ThresholdVerify(0.5).lengths(CONF, LENS).tolist() == [3, 2]
    # a confidence-1 position past the end of a draft is not a draft
    assert ThresholdVerify(0.5).lengths(torch.ones(1, 4), torch.tensor([2])).tolist() == [2]


def test_make_verify_policy_and_bad_input(cpu_sps):
    assert isinstance(make_verify_policy("adaptive", cpu_sps, 0.5), AdaptiveVerify)
    assert isinstance(make_verify_policy("async", cpu_sps, 0.5), AsyncVerify)
    assert isinstance(make_verify_policy("fixed", None, 0.5), FixedVerify)
    assert make_verify_policy("threshold", None, 0.3).threshold == 0.3
    with pytest.raises(ValueError, match="needs an SPS table"):
        make_verify_policy("adaptive", None, 0.5)
    with pytest.raises(ValueError, match="adaptive.*async.*fixed.*threshold"):
        make_verify_policy("greedy", cpu_sps, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ThresholdVerify(0.0)


def test_server_args_check_the_verify_flags():
    with pytest.raises(ValueError, match="--speculative-dspark-verify-mode must be one of .*threshold"):
        ServerArgs(speculative_dspark_verify_mode="always")
    with pytest.raises(ValueError, match="--speculative-dspark-verify-threshold"):
        ServerArgs(speculative_dspark_verify_threshold=1.5)
    assert ServerArgs().speculative_dspark_verify_mode == "adaptive"
