"""Turn per-sequence block records into the metrics of docs/design.md "Metrics", per data set and decoding mode."""

from __future__ import annotations

import torch

from sglang_dspark.evaluation.rounds import leading_ones, sample_outcomes, simulate_rounds
from sglang_dspark.evaluation.scoring import BlockRecords
from sglang_dspark.speculative import metrics as M
from sglang_dspark.speculative.metrics import prefix_labels
from sglang_dspark.speculative.sts import STSCalibration

MODES = ("greedy", "t1")


def outcomes(records: list[BlockRecords], mode: str, seed: int) -> list[torch.Tensor]:
    """Per sequence accept [A, G] bool: deterministic for greedy, sampled from alpha at T=1."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "greedy":
        return [r.greedy_accept for r in records]
    return [sample_outcomes(r.alpha, r.valid, gen) for r in records]


def calibration_inputs(
    records: list[BlockRecords], mode: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> confidence logits [N, G], accept_lens [N], draft_lens [N] over every anchor of every sequence."""
    acc = outcomes(records, mode, seed)
    conf = torch.cat([r.confidence_logits for r in records])
    return conf, torch.cat([leading_ones(a) for a in acc]), torch.cat([r.valid.sum(1) for r in records])


def pooled_confidence_metrics(survival: torch.Tensor, accept_lens: torch.Tensor, draft_lens: torch.Tensor) -> dict:
    """survival [N, G] -> ECE / ROC-AUC / Brier over all verified (anchor, position) pairs."""
    g = survival.shape[1]
    labels, verified = prefix_labels(accept_lens, g), prefix_labels(draft_lens, g)
    pred, lab = survival[verified], labels[verified]
    return {"ece": M.ece(pred, lab), "roc_auc": M.roc_auc(pred, lab), "brier": M.brier(pred, lab)}


def summarize(records: list[BlockRecords], mode: str, seed: int, sts: STSCalibration | None) -> dict:
    """Metrics of one drafter on one data set in one mode."""
    acc = outcomes(records, mode, seed)
    g = acc[0].shape[1]
    accept_lens = [leading_ones(a) for a in acc]
    draft_lens = [r.valid.sum(1) for r in records]
    visited = [simulate_rounds(a) for a in accept_lens]
    round_acc = torch.cat([a[v] for a, v in zip(accept_lens, visited, strict=True)])
    round_draft = torch.cat([d[v] for d, v in zip(draft_lens, visited, strict=True)])
    all_acc, all_draft = torch.cat(accept_lens), torch.cat(draft_lens)
    out = {
        "tau": M.tau(round_acc),
        "verify_rate": M.verify_rate(round_acc, round_draft),
        "rounds": int(round_acc.numel()),
        "anchors": int(all_acc.numel()),
        "accept_rate": M.accept_rates(all_acc, all_draft, g).tolist(),
        "conditional_acceptance": M.conditional_acceptance(all_acc, all_draft, g).tolist(),
    }
    if records[0].confidence_logits is not None:
        conf = torch.cat([r.confidence_logits for r in records])
        before = torch.sigmoid(conf).cumprod(dim=1)
        out["confidence_before"] = pooled_confidence_metrics(before, all_acc, all_draft)
        out["reliability_before"] = reliability(before, all_acc, all_draft)
        if sts is not None:
            after = sts(conf).cumprod(dim=1)
            out["confidence_after"] = pooled_confidence_metrics(after, all_acc, all_draft)
            out["reliability_after"] = reliability(after, all_acc, all_draft)
    return out


def reliability(survival: torch.Tensor, accept_lens: torch.Tensor, draft_lens: torch.Tensor, bins: int = 10) -> dict:
    """Reliability diagram data: per equal-width bin, mean predicted survival, empirical rate, count."""
    g = survival.shape[1]
    labels, verified = prefix_labels(accept_lens, g), prefix_labels(draft_lens, g)
    pred, lab = survival[verified].double(), labels[verified].double()
    idx = (pred * bins).long().clamp(0, bins - 1)
    count = torch.bincount(idx, minlength=bins).double()
    mean_pred = torch.bincount(idx, weights=pred, minlength=bins) / count.clamp_min(1)
    rate = torch.bincount(idx, weights=lab, minlength=bins) / count.clamp_min(1)
    return {"predicted": mean_pred.tolist(), "empirical": rate.tolist(), "count": count.long().tolist()}
