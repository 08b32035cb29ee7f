import json

import pytest
import torch

from sglang_dspark.speculative.planner import (
    SPSTable,
    async_batch_cap,
    drafting_pays,
    plan_verify_lengths,
    plan_verify_lengths_async,
    profile_sps,
    survival,
    threshold_lengths,
)

# ---------------------------------------------------------------- SPS table


def test_sps_interpolates_step_time_and_extrapolates_the_last_slope():
    sps = SPSTable((2, 4), (10.0, 5.0))  # 0.1 s, 0.2 s per step
    assert [sps(b) for b in (1, 2, 3, 4, 6)] == pytest.approx([1 / 0.1, 1 / 0.1, 1 / 0.15, 1 / 0.2, 1 / 0.3])
    # A faster larger probe (noise) interpolates, but past the end time never falls.
    noisy = SPSTable((1, 2), (1.0, 2.0))
    assert [noisy(1), noisy(1.5), noisy(2), noisy(9)] == pytest.approx([1.0, 1 / 0.75, 2.0, 2.0])
    assert [SPSTable((4,), (8.0,))(b) for b in (1, 100)] == [8.0, 8.0]


@pytest.mark.parametrize(
    "sizes, rates", [((), ()), ((1, 1), (1.0, 1.0)), ((0,), (1.0,)), ((1,), (0.0,)), ((1, 2), (1.0,))]
)
def test_sps_rejects_bad_tables(sizes, rates):
    with pytest.raises(ValueError):
        SPSTable(sizes, rates)


def test_sps_json_roundtrip_in_sglang_format(tmp_path, cpu_sps):
    path = tmp_path / "sps.json"
    cpu_sps.save(path)
    data = json.loads(path.read_text())
    assert data["sample_batch_tokens"] == [1, 8, 16] and data["max_batch_tokens"] == 16
    assert SPSTable.load(path) == cpu_sps


def test_profile_sps_times_the_forward_with_the_median_sizes_taking_turns():
    now = [0.0]
    calls = []

    def forward(size):  # fake forward: 10 ms + 1 ms per token, one slow outlier per size
        calls.append(size)
        now[0] += 0.010 + 0.001 * size + (1.0 if calls.count(size) == 2 else 0.0)

    table = profile_sps(forward, [4, 1, 4], repeats=3, warmup=1, clock=lambda: now[0])
    assert table.batch_tokens == (1, 4) and calls == [1, 4] * 4
    torch.testing.assert_close(torch.tensor(table.steps_per_sec), torch.tensor([1 / 0.011, 1 / 0.014]))


# ---------------------------------------------------------------- Algorithm 1


def test_survival_is_the_cumulative_product():
    conf = torch.tensor([[0.5, 0.5, 2.0], [1.0, -1.0, 0.5]])
    assert survival(conf) == [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]


def test_appendix_a_plans(appendix_a_sps):
    """x1 = A: c = (0.8, 0.9). Admitting draft 1 drops theta (1.0 -> 0.9): the early stop verifies none,
    the full search finds theta = 2.52 * 0.45 = 1.134 > 1 with both. x1 = B: c2 = 0, nothing is worth it."""
    after_a, after_b = torch.tensor([[0.8, 0.9]]), torch.tensor([[0.8, 0.0]])
    assert plan_verify_lengths(after_a, appendix_a_sps).tolist() == [0]
    assert plan_verify_lengths(after_a, appendix_a_sps, early_stop=False).tolist() == [2]
    assert plan_verify_lengths(after_b, appendix_a_sps).tolist() == [0]
    assert plan_verify_lengths(after_b, appendix_a_sps, early_stop=False).tolist() == [0]


def test_greedy_visit_admits_by_descending_survival():
    # Flat SPS: every positive candidate raises theta, so everything with a > 0 is admitted.
    flat = SPSTable((1,), (10.0,))
    conf = torch.tensor([[1.0, 1.0, 0.5], [0.9, 0.0, 1.0]])
    assert plan_verify_lengths(conf, flat).tolist() == [3, 1]  # zero survival is never verified
    # Visit .9 .81 .5 .081: theta = 2 / 1.1, 2.9 / 1.2, 3.71 / 1.3, 4.21 / 1.4, then 4.291 / 1.5 drops.
    linear = SPSTable((1, 11), (1.0, 0.5))  # step time 1 s + 0.1 s per extra token
    conf = torch.tensor([[0.9, 0.9, 0.1], [0.5, 0.1, 0.9]])  # a = [.9 .81 .081], [.5 .05 .045]
    assert plan_verify_lengths(conf, linear).tolist() == [2, 1]


def test_growing_sps_never_admits_missing_drafts():
    growing = SPSTable((1, 64), (1.0, 50.0))  # a noisy profile where bigger batches look faster
    conf = torch.tensor([[0.9, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for early_stop in (True, False):
        assert plan_verify_lengths(conf, growing, early_stop).tolist() == [2, 0]


def test_empty_batch(cpu_sps):
    assert plan_verify_lengths(torch.zeros(0, 5), cpu_sps).tolist() == []
    assert plan_verify_lengths_async(torch.zeros(0, 5), 3).tolist() == []


def test_verify_budget_per_request_falls_as_load_grows(cpu_sps):
    g = torch.Generator().manual_seed(0)
    budgets = []
    for R in (1, 2, 4, 8, 16, 32, 64, 128):
        conf = 0.6 + 0.35 * torch.rand(R, 7, generator=g)  # gamma = 7, fairly confident drafter
        budgets.append(plan_verify_lengths(conf, cpu_sps).float().mean().item())
    assert all(a >= b for a, b in zip(budgets, budgets[1:])), budgets
    assert budgets[0] == 7 and budgets[3] >= 4 and budgets[-1] < 1, budgets


# ---------------------------------------------------------------- asynchronous variant and baselines


def test_async_cap_is_the_full_search_budget_and_current_step_takes_top_k(appendix_a_sps):
    old = torch.tensor([[0.8, 0.9]])
    assert async_batch_cap(old, appendix_a_sps) == 2
    conf = torch.tensor([[0.9, 0.9, 0.9], [0.5, 1.0, 0.9]])  # a = [.9 .81 .729], [.5 .5 .45]
    assert plan_verify_lengths_async(conf, 3).tolist() == [3, 0]
    assert plan_verify_lengths_async(conf, 4).tolist() == [3, 1]
    assert plan_verify_lengths_async(conf, 100).tolist() == [3, 3]
    # Ties go position-major: both requests' first drafts before either's second.
    assert plan_verify_lengths_async(torch.ones(2, 2), 2).tolist() == [1, 1]


def test_threshold_baseline():
    conf = torch.tensor([[0.9, 0.9, 0.9], [0.5, 1.0, 1.0]])  # a = [.9 .81 .729], [.5 .5 .5]
    assert threshold_lengths(conf, 0.8).tolist() == [2, 0]
    assert threshold_lengths(conf, 0.5).tolist() == [3, 3]


def test_drafting_pays_counts_the_drafting_time(cpu_sps):
    conf, lengths = torch.tensor([[0.9, 0.9]]), torch.tensor([2])  # 1 + 0.9 + 0.81 expected tokens
    assert drafting_pays(conf, lengths, cpu_sps, draft_seconds=0.0)
    assert drafting_pays(conf, lengths, cpu_sps, draft_seconds=0.05)  # 2.71 tokens in ~88 ms vs 1 in 37
    assert not drafting_pays(conf, lengths, cpu_sps, draft_seconds=0.07)
    assert not drafting_pays(conf, torch.tensor([0]), cpu_sps, draft_seconds=0.001)  # nothing verified
