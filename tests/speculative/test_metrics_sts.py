import itertools
import json
import math

import pytest
import torch

from sglang_dspark.speculative.metrics import (
    accept_rates,
    brier,
    calibration_by_position,
    conditional_acceptance,
    ece,
    prefix_labels,
    roc_auc,
    tau,
    verify_rate,
)
from sglang_dspark.speculative.sts import STSCalibration, fit_sts

# Four verify rounds: (drafts verified, drafts accepted).
DRAFT_LENS = torch.tensor([3, 3, 2, 0])
ACCEPT_LENS = torch.tensor([3, 1, 0, 0])


def test_round_metrics():
    assert tau(ACCEPT_LENS) == pytest.approx((4 + 2 + 1 + 1) / 4)
    assert verify_rate(ACCEPT_LENS, DRAFT_LENS) == pytest.approx(8 / 12)
    # accept_rate@k over the rounds that verified > k drafts: k=0: 2 of 3, k=1: 1 of 3, k=2: 1 of 2.
    rates = accept_rates(ACCEPT_LENS, DRAFT_LENS, 4)
    torch.testing.assert_close(rates[:3], torch.tensor([2 / 3, 1 / 3, 1 / 2]).double())
    assert math.isnan(rates[3])
    # P(draft k+1 accepted | 1..k accepted, k+1 verified): k=0: 2/3, k=1: 1/2, k=2: 1/1.
    cond = conditional_acceptance(ACCEPT_LENS, DRAFT_LENS, 3)
    torch.testing.assert_close(cond, torch.tensor([2 / 3, 1 / 2, 1.0]).double())


def test_prefix_labels():
    assert prefix_labels(torch.tensor([0, 2]), 3).tolist() == [[False, False, False], [True, True, False]]


def test_ece_and_brier():
    pred = torch.full((10,), 0.9)
    label = torch.tensor([1, 0] * 5)
    assert ece(pred, label) == pytest.approx(0.4)
    assert brier(pred, label) == pytest.approx((0.01 + 0.81) / 2)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200_000, generator=g)
    assert ece(p, torch.rand(200_000, generator=g) < p) < 0.01  # calibrated by construction
    assert math.isnan(ece(torch.zeros(0), torch.zeros(0)))


def test_roc_auc_matches_pair_counting():
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert roc_auc(torch.full((4,), 0.5), torch.tensor([0, 1, 0, 1])) == 0.5
    assert math.isnan(roc_auc(torch.rand(3), torch.ones(3)))
    g = torch.Generator().manual_seed(1)
    score = torch.randint(0, 5, (40,), generator=g).float()  # many ties
    label = torch.rand(40, generator=g) < 0.4
    pairs = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for (a, la), (b, lb) in itertools.product(zip(score, label), repeat=2)
        if la and not lb
    ]
    assert roc_auc(score, label) == pytest.approx(sum(pairs) / len(pairs))


def test_calibration_by_position_counts_verified_rounds_only():
    surv = torch.tensor([[0.9, 0.8, 0.7], [0.9, 0.5, 0.2], [0.2, 0.1, 0.1], [0.3, 0.1, 0.0]])
    out = calibration_by_position(surv, ACCEPT_LENS, DRAFT_LENS)
    # Position 0: rounds 0-2 (labels 1, 1, 0); position 2: rounds 0-1 (labels 1, 0).
    assert out["brier"][0] == pytest.approx((0.01 + 0.01 + 0.04) / 3)
    assert out["roc_auc"][0] == 1.0 and out["roc_auc"][2] == 1.0
    assert out["brier"][2] == pytest.approx((0.09 + 0.04) / 2)


# ---------------------------------------------------------------- STS


def simulate_rounds(logits, true_temps, g, true_biases=0.0):
    """Draft k is accepted (given 1..k-1 were) with probability sigmoid(z_k / T_k + b_k) -> accept_lens [N]."""
    accepted = torch.rand(logits.shape, generator=g) < torch.sigmoid(logits / true_temps + true_biases)  # [N, G]
    return accepted.long().cumprod(dim=1).sum(dim=1)


def test_fit_sts_recovers_temperatures_and_lowers_ece():
    g = torch.Generator().manual_seed(0)
    true_temps = torch.tensor([2.0, 0.5, 1.5])
    logits = torch.randn(40_000, 3, generator=g) * 2  # [N, G] raw confidence-head logits
    accept_lens = simulate_rounds(logits, true_temps, g)
    cal = fit_sts(logits, accept_lens, dataset="synthetic", biases=torch.zeros(1))  # the paper's STS
    torch.testing.assert_close(torch.tensor(cal.temperatures), true_temps, rtol=0.15, atol=0)
    assert cal.biases == (0.0, 0.0, 0.0)
    assert cal.num_samples == 40_000 and cal.dataset == "synthetic"
    assert all(after < before / 2 for before, after in zip(cal.ece_before, cal.ece_after))
    assert max(cal.ece_after) < 0.02
    surv = cal(logits).cumprod(dim=1)
    ece_after = calibration_by_position(surv, accept_lens, torch.full_like(accept_lens, 3))["ece"]
    assert ece_after == pytest.approx(list(cal.ece_after), abs=1e-6)


def test_fit_sts_bias_corrects_a_drafter_under_confident_everywhere():
    """Acceptance sigmoid(z / T + b) with b > 0: no temperature alone calibrates it, the fitted bias does."""
    g = torch.Generator().manual_seed(2)
    true_temps, true_biases = torch.tensor([1.0, 0.8, 1.2]), torch.tensor([0.8, 1.2, 0.5])
    logits = torch.randn(40_000, 3, generator=g) * 2 - 1  # [N, G]
    accept_lens = simulate_rounds(logits, true_temps, g, true_biases)
    plain = fit_sts(logits, accept_lens, biases=torch.zeros(1))
    biased = fit_sts(logits, accept_lens)
    torch.testing.assert_close(torch.tensor(biased.biases), true_biases, atol=0.25, rtol=0)
    torch.testing.assert_close(torch.tensor(biased.temperatures), true_temps, rtol=0.25, atol=0)
    assert max(biased.ece_after) < 0.02 < max(plain.ece_after)
    assert all(b <= p + 1e-12 for b, p in zip(biased.ece_after, plain.ece_after))  # the grid includes b = 0


def test_fit_sts_uses_only_verified_positions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5000, 3, generator=g)
    draft_lens = torch.full((5000,), 2)  # position 3 never verified: no data, temperature 1 and bias 0
    accept_lens = torch.minimum(simulate_rounds(logits, torch.ones(3), g), draft_lens)
    cal = fit_sts(logits, accept_lens, draft_lens)
    assert cal.temperatures[2] == pytest.approx(1.0) and cal.biases[2] == 0.0 and math.isnan(cal.ece_after[2])
    assert cal.temperatures[0] == pytest.approx(1.0, rel=0.2) and abs(cal.biases[0]) <= 0.2


def test_sts_calibration_applies_temperatures_and_biases():
    logits = torch.tensor([[2.0, -1.0], [0.0, 4.0]])
    temps_only = STSCalibration((2.0, 0.5, 9.0))
    torch.testing.assert_close(temps_only(logits), torch.sigmoid(logits / torch.tensor([2.0, 0.5])))
    with_bias = STSCalibration((2.0, 0.5, 9.0), (0.5, -1.0, 0.0))
    torch.testing.assert_close(
        with_bias(logits), torch.sigmoid(logits / torch.tensor([2.0, 0.5]) + torch.tensor([0.5, -1.0]))
    )
    with pytest.raises(ValueError):
        STSCalibration((1.0,))(logits)
    with pytest.raises(ValueError, match="2 temperatures but 1 biases"):
        STSCalibration((1.0, 1.0), (0.5,))


def test_sts_json_in_sglang_format(tmp_path):
    cal = STSCalibration((1.5, 1.2), (0.0, 0.4), "gsm8k", 10, (0.05, 0.06), (0.01, 0.01))
    path = tmp_path / "sts.json"
    cal.save(path)
    assert json.loads(path.read_text())["temperatures"] == [1.5, 1.2]
    assert json.loads(path.read_text())["biases"] == [0.0, 0.4]
    assert STSCalibration.load(path) == cal
    path.write_text('{"temperatures": [1.1], "fitted_by": "sglang"}')  # minimal file, unknown keys ignored
    assert STSCalibration.load(path) == STSCalibration((1.1,))
    with pytest.raises(ValueError):
        STSCalibration((1.0, 0.0))
