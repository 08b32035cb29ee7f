"""DSpark training losses (docs/design.md "Training losses"), pure functions.

loss = ce_weight * CE(draft, true token) + l1_weight * ||p_d - p_t||_1 + conf_weight * BCE(c_k, c*_k),
each a weighted mean over valid draft positions with w_k = exp(-(k - 1) / decay), and the confidence
target c*_k = 1 - 0.5 ||p_d,k - p_t,k||_1 (detached).
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


def position_weights(block_size: int, decay: float | None) -> torch.Tensor:
    """-> [G] w_k = exp(-(k - 1) / decay), k = 1..G."""
    return torch.exp(-torch.arange(block_size, dtype=torch.float32) / (decay or block_size))


def acceptance_probability(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """[..., V], [..., V] -> [...] sum_v min(p_d, p_t) = 1 - 0.5 ||p_d - p_t||_1 (speculative sampling at T=1)."""
    return 1.0 - 0.5 * (draft_logits.softmax(-1) - target_logits.softmax(-1)).abs().sum(-1)


def _weighted_mean(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # per_token [A, G], weight [A, G] -> scalar
    return (per_token * weight).sum() / weight.sum().clamp_min(1e-6)


def dspark_loss(
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    confidence_logits: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """draft_logits [A, G, V], target_logits [A, G, V], labels [A, G], valid [A, G] bool,
    confidence_logits [A, G] | None -> (loss, metrics)."""
    g = draft_logits.shape[1]
    w = position_weights(g, weights.decay).to(valid.device)[None, :] * valid.float()  # [A, G]
    ce = F.cross_entropy(draft_logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    accept = acceptance_probability(draft_logits, target_logits)  # [A, G], differentiable in the draft
    l1 = 2.0 * (1.0 - accept)
    loss = weights.ce * _weighted_mean(ce, w)
    if weights.l1:
        loss = loss + weights.l1 * _weighted_mean(l1, w)
    metrics = {"ce": float(_weighted_mean(ce.detach(), w)), "l1": float(_weighted_mean(l1.detach(), w))}
    if confidence_logits is not None and weights.confidence:
        bce = F.binary_cross_entropy_with_logits(confidence_logits, accept.detach().clamp(0, 1), reduction="none")
        loss = loss + weights.confidence * _weighted_mean(bce, w)
        metrics["conf_bce"] = float(_weighted_mean(bce.detach(), w))
    with torch.no_grad():
        alive = (accept * valid).cumprod(dim=1)  # [A, G] expected survival at T=1
        metrics["tau_t1"] = float(1.0 + alive.sum(1).mean())
        greedy = ((draft_logits.argmax(-1) == target_logits.argmax(-1)) & valid).int().cumprod(dim=1)
        metrics["tau_greedy"] = float(1.0 + greedy.sum(1).float().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
