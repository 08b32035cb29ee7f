"""Offline verification, pure functions.

For every anchor a of a target-generated response, a drafter proposes G tokens (teacher-forced on the
response). Greedy: draft k is accepted iff it equals the target's argmax. T=1: speculative sampling
accepts draft k with probability alpha_k = sum_v min(p_d, p_t); outcomes are drawn from it. A decoding
run is simulated by starting at the first response token and jumping by accepted + 1 each round.
"""

from __future__ import annotations

import torch


def leading_ones(accept: torch.Tensor) -> torch.Tensor:
    """accept [A, G] bool -> [A] length of the accepted prefix."""
    return accept.int().cumprod(dim=1).sum(dim=1)


def sample_outcomes(alpha: torch.Tensor, valid: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """alpha [A, G] acceptance probabilities -> sampled accept [A, G] bool (False where not valid)."""
    return (torch.rand(alpha.shape, generator=gen) < alpha) & valid


def simulate_rounds(accept_lens: torch.Tensor) -> torch.Tensor:
    """accept_lens [A] per anchor (anchor i = response position i) -> indices [R] of the anchors a
    decoding run visits: start at 0, then jump by accepted + 1."""
    visited, a = [], 0
    while a < accept_lens.numel():
        visited.append(a)
        a += int(accept_lens[a]) + 1
    return torch.tensor(visited, dtype=torch.int64)
