"""Speculative-decoding metrics (docs/design.md "Metrics"), defined once.

A verify round verifies ``draft_lens[n]`` drafts and accepts the first ``accept_lens[n]`` of them, then
commits one more (bonus or corrected) token. Conventions follow DeepSpec's evaluator: accept_rate@k and
the per-position confidence metrics only count rounds that verified draft k + 1 (k is 0-based).
Confidence metrics score the survival a[n, k] = prod_{i <= k} c[n, i] against the prefix label
"drafts 1..k + 1 all accepted".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tau(accept_lens: Tensor) -> float:
    """Mean tokens committed per verify round, bonus included."""
    return float((accept_lens.double() + 1).mean())


def verify_rate(accept_lens: Tensor, draft_lens: Tensor) -> float:
    """Committed tokens per verified position: sum(accept + 1) / sum(draft + 1) (bonus counted in both)."""
    return float((accept_lens.double() + 1).sum() / (draft_lens.double() + 1).sum())


def prefix_labels(accept_lens: Tensor, num_positions: int) -> Tensor:
    """accept_lens [N] -> [N, G] bool: label[n, k] = drafts 1..k + 1 of round n were all accepted."""
    return torch.arange(num_positions, device=accept_lens.device).unsqueeze(0) < accept_lens.unsqueeze(1)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num, den [G] counts -> num / den [G] float64, nan where den == 0."""
    return torch.where(den > 0, num.double() / den.clamp_min(1).double(), math.nan)


def accept_rates(accept_lens: Tensor, draft_lens: Tensor, num_positions: int) -> Tensor:
    """[N], [N] -> accept_rate@k [G] float64: share of the rounds that verified more than k drafts whose
    accepted prefix is longer than k (nan where no round verified k + 1 drafts)."""
    accepted = prefix_labels(accept_lens, num_positions)  # [N, G]
    verified = prefix_labels(draft_lens, num_positions)  # [N, G]
    return _ratio(accepted.sum(0), verified.sum(0))


def conditional_acceptance(accept_lens: Tensor, draft_lens: Tensor, num_positions: int) -> Tensor:
    """[N], [N] -> [G] float64: P(draft k + 1 accepted | drafts 1..k accepted and draft k + 1 verified)."""
    accepted = prefix_labels(accept_lens, num_positions)  # [N, G]
    reached = prefix_labels(accept_lens + 1, num_positions) & prefix_labels(draft_lens, num_positions)  # [N, G]
    return _ratio(accepted.sum(0), reached.sum(0))


def ece_rows(pred: Tensor, label: Tensor, num_bins: int = 20) -> Tensor:
    """pred [T, N] (T candidate predictions of the same N labels), label [N] -> ECE of each row [T] float64
    (nan when N = 0), with one bincount for all rows."""
    T, N = pred.shape
    pred = pred.double()
    label = label.double().expand(T, N)
    row_offset = num_bins * torch.arange(T, device=pred.device).unsqueeze(1)  # [T, 1]
    bins = (pred * num_bins).long().clamp(0, num_bins - 1) + row_offset  # [T, N] bin ids, distinct per row
    sums = [torch.bincount(bins.flatten(), weights=w.flatten(), minlength=T * num_bins) for w in (pred, label)]
    return (sums[0] - sums[1]).view(T, num_bins).abs().sum(dim=1) / N


def ece(pred: Tensor, label: Tensor, num_bins: int = 20) -> float:
    """Expected calibration error with equal-width bins: sum_b (n_b / N) |mean pred_b - mean label_b|."""
    return float(ece_rows(pred.flatten().unsqueeze(0), label.flatten(), num_bins)[0])


def roc_auc(score: Tensor, label: Tensor) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count 1/2."""
    score, label = score.double().flatten(), label.bool().flatten()
    pos = int(label.sum())
    neg = label.numel() - pos
    if pos == 0 or neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(score, return_inverse=True, return_counts=True)  # sorted distinct scores
    mid_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # [U] 1-based mean rank of each score
    rank_sum = float(mid_rank[inverse][label].sum())
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def brier(pred: Tensor, label: Tensor) -> float:
    """Mean squared error of probabilities against 0/1 labels (nan when empty)."""
    return float((pred.double().flatten() - label.double().flatten()).pow(2).mean())


def calibration_by_position(
    survival: Tensor, accept_lens: Tensor, draft_lens: Tensor, num_bins: int = 20
) -> dict[str, list[float]]:
    """survival [N, G] (cumulative confidences), accept_lens [N], draft_lens [N] -> {"ece", "roc_auc",
    "brier"}: one value per position k over the rounds that verified draft k + 1 (nan if none)."""
    G = survival.shape[1]
    labels = prefix_labels(accept_lens, G)  # [N, G]
    verified = prefix_labels(draft_lens, G)  # [N, G]
    out: dict[str, list[float]] = {"ece": [], "roc_auc": [], "brier": []}
    for k in range(G):
        pred, label = survival[verified[:, k], k], labels[verified[:, k], k]
        out["ece"].append(ece(pred, label, num_bins))
        out["roc_auc"].append(roc_auc(pred, label))
        out["brier"].append(brier(pred, label))
    return out
