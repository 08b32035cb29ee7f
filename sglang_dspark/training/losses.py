"""DSpark training losses (docs/design.md "Training losses"), pure functions.

loss = ce_weight * CE(draft, true token) + l1_weight * ||p_d - p_t||_1 + conf_weight * BCE(c_k, c*_k),
each a weighted mean over valid draft positions with w_k = exp(-(k - 1) / decay), and the confidence
target c*_k = 1 - 0.5 ||p_d,k - p_t,k||_1 (detached).

A drafter may draft among K of the V tokens only (its draft vocabulary, draft_vocab.py): its distribution is
zero outside them, so the target's side needs only its probabilities of those K tokens (``TargetBlock``) and
the L1 distance and acceptance stay exact; a true token outside them has no cross-entropy term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    ce: float = 0.1
    l1: float = 0.9
    confidence: float = 1.0
    decay: float | None = None  # None: the block size (gamma)


DSPARK_WEIGHTS = LossWeights()
DFLASH_WEIGHTS = LossWeights(ce=1.0, l1=0.0, confidence=0.0)


@dataclass(frozen=True)
class TargetBlock:
    """What the losses need of the target at [A, G] draft positions, over the drafter's K tokens (K = V
    without a draft vocabulary); indices are into those K, -1 where the token is not one of them."""

    probs: torch.Tensor  # [A, G, K] float32 target probabilities of the K tokens (sum <= 1)
    greedy: torch.Tensor  # [A, G] int64 index of the target's argmax token
    labels: torch.Tensor  # [A, G] int64 index of the true token


def position_weights(block_size: int, decay: float | None) -> torch.Tensor:
    """-> [G] w_k = exp(-(k - 1) / decay), k = 1..G."""
    return torch.exp(-torch.arange(block_size, dtype=torch.float32) / (decay or block_size))


def acceptance_probability(draft_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """[..., K], [..., K] -> [...] sum_v min(p_d, p_t) = 0.5 (1 + sum_K p_t - ||p_d - p_t||_1 over K), the
    speculative-sampling acceptance at T=1 of a draft distribution that is zero outside the K tokens."""
    return 0.5 * (1.0 + target_probs.sum(-1) - (draft_logits.softmax(-1) - target_probs).abs().sum(-1))


def _weighted_mean(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # per_token [A, G], weight [A, G] -> scalar
    return (per_token * weight).sum() / weight.sum().clamp_min(1e-6)


def dspark_loss(
    draft_logits: torch.Tensor,
    target: TargetBlock,
    valid: torch.Tensor,
    confidence_logits: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """draft_logits [A, G, K], target over the same K, valid [A, G] bool, confidence_logits [A, G] | None
    -> (loss, metrics)."""
    g = draft_logits.shape[1]
    w = position_weights(g, weights.decay).to(valid.device)[None, :] * valid.float()  # [A, G]
    labels = target.labels
    w_ce = w * (labels >= 0)
    ce = F.cross_entropy(draft_logits.flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none")
    ce = ce.view_as(labels)
    accept = acceptance_probability(draft_logits, target.probs)  # [A, G], differentiable in the draft
    l1 = 2.0 * (1.0 - accept)
    loss = weights.ce * _weighted_mean(ce, w_ce)
    if weights.l1:
        loss = loss + weights.l1 * _weighted_mean(l1, w)
    metrics = {"ce": float(_weighted_mean(ce.detach(), w_ce)), "l1": float(_weighted_mean(l1.detach(), w))}
    if confidence_logits is not None and weights.confidence:
        bce = F.binary_cross_entropy_with_logits(confidence_logits, accept.detach().clamp(0, 1), reduction="none")
        loss = loss + weights.confidence * _weighted_mean(bce, w)
        metrics["conf_bce"] = float(_weighted_mean(bce.detach(), w))
    with torch.no_grad():
        alive = (accept * valid).cumprod(dim=1)  # [A, G] expected survival at T=1
        metrics["tau_t1"] = float(1.0 + alive.sum(1).mean())
        greedy = ((draft_logits.argmax(-1) == target.greedy) & valid).int().cumprod(dim=1)
        metrics["tau_greedy"] = float(1.0 + greedy.sum(1).float().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
