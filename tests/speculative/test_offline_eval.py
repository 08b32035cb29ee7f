"""Offline evaluation and STS calibration end to end on a tiny random target and drafter."""

from __future__ import annotations

import torch
from tiny_drafter import make_drafter

from sglang_dspark.evaluation.aggregate import calibration_inputs, summarize
from sglang_dspark.evaluation.report import markdown_table, plot_conditional_acceptance, plot_reliability
from sglang_dspark.evaluation.rounds import leading_ones, simulate_rounds
from sglang_dspark.evaluation.scoring import score_sequence
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.speculative.sts import STSCalibration, fit_sts
from sglang_dspark.train.regenerate import Sequence


def test_leading_ones_and_rounds():
    accept = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    lens = leading_ones(accept)
    assert lens.tolist() == [2, 0, 3, 1, 0]
    assert simulate_rounds(lens).tolist() == [0, 3]  # 0 accepts 2 -> 3 accepts 1 -> past the end


def test_calibrate_and_evaluate_end_to_end(tmp_path):
    target = tiny_random_model()
    drafters = {"dspark": make_drafter(target)}
    g = torch.Generator().manual_seed(0)
    seqs = [
        Sequence(
            f"s/{i}",
            "code" if i % 2 else "json",
            torch.randint(4, 97, (6,), generator=g).tolist(),
            torch.randint(4, 97, (20,), generator=g).tolist(),
        )
        for i in range(4)
    ]
    records = [score_sequence(target, drafters, s, chunk=7)["dspark"] for s in seqs]
    assert records[0].alpha.shape == (19, 4) and not records[0].valid[-1, 1:].any()
    conf, accept_lens, draft_lens = calibration_inputs(records, "t1", seed=0)
    cal = fit_sts(conf, accept_lens, draft_lens, dataset="tiny")
    cal.save(tmp_path / "sts_t1.json")
    temps = list(STSCalibration.load(tmp_path / "sts_t1.json").temperatures)
    results = {}
    for source in ("json", "code"):
        rows = [r for s, r in zip(seqs, records, strict=True) if s.source == source]
        for mode in ("greedy", "t1"):
            results.setdefault(source, {}).setdefault(mode, {})["dspark"] = summarize(rows, mode, 0, temps)
    s = results["code"]["t1"]["dspark"]
    assert 1.0 <= s["tau"] <= 5.0 and len(s["conditional_acceptance"]) == 4
    assert s["confidence_after"]["ece"] <= s["confidence_before"]["ece"] + 1e-9
    table = markdown_table(results)
    assert table.count("\n") == 2 + 4 and "| code | t1 | dspark |" in table
    plot_conditional_acceptance(results, tmp_path / "ca.png")
    plot_reliability(results, "dspark", tmp_path / "rel.png")
    assert (tmp_path / "ca.png").stat().st_size > 0 and (tmp_path / "rel.png").stat().st_size > 0
