"""How many of the proposed drafts each request verifies in a round (``--speculative-dspark-verify-mode``).

Every policy maps the round's confidences conf [R, G] (0 where a request has no draft) and the proposed
draft lengths [R] to verify lengths [R] with lengths <= draft lengths. Verification is exact whatever the
lengths, so every policy is lossless as long as a draft's own realisation never decides whether it is
verified (see ``planner``): the adaptive and async policies keep that property; fixed reads no
confidence, and threshold decides on draft k from c[r, <= k], which depend on the drafts before k only.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from sglang_dspark.server_args import VERIFY_MODES
from sglang_dspark.speculative.planner import (
    SPSTable,
    async_batch_cap,
    plan_verify_lengths,
    plan_verify_lengths_async,
    threshold_lengths,
)

LOAD_ADAPTIVE_MODES = ("adaptive", "async")  # the modes that plan on SPS(B)


class VerifyPolicy(Protocol):
    def lengths(self, conf: Tensor, draft_lens: Tensor) -> Tensor:
        """conf [R, G], draft_lens [R] int64 -> drafts to verify per request [R] int64."""
        ...


class AdaptiveVerify:
    """Algorithm 1 with its early stop: the budget that maximises expected tokens/s at this load."""

    def __init__(self, sps: SPSTable) -> None:
        self.sps = sps

    def lengths(self, conf: Tensor, draft_lens: Tensor) -> Tensor:
        return plan_verify_lengths(conf, self.sps)


class AsyncVerify:
    """Paper section 5.2: the total budget K comes from the confidences of two rounds ago (searched without
    early stop, their drafts are already verified), the round only takes its top-K candidates. Until two
    rounds have been planned it falls back to Algorithm 1."""

    def __init__(self, sps: SPSTable) -> None:
        self.sps = sps
        self.history: list[Tensor] = []  # conf of the last two rounds, oldest first

    def lengths(self, conf: Tensor, draft_lens: Tensor) -> Tensor:
        if len(self.history) == 2:
            lengths = plan_verify_lengths_async(conf, async_batch_cap(self.history[0], self.sps))
        else:
            lengths = plan_verify_lengths(conf, self.sps)
        self.history = [*self.history[-1:], conf]
        return lengths


class FixedVerify:
    """Baseline: every proposed draft (proposals are already capped at --speculative-num-draft-tokens)."""

    def lengths(self, conf: Tensor, draft_lens: Tensor) -> Tensor:
        return draft_lens.clone()


class ThresholdVerify:
    """Baseline: the drafts whose survival (product of confidences up to them) reaches a static threshold."""

    def __init__(self, threshold: float) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"verify threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def lengths(self, conf: Tensor, draft_lens: Tensor) -> Tensor:
        return torch.minimum(threshold_lengths(conf, self.threshold), draft_lens)


def make_verify_policy(mode: str, sps: SPSTable | None, threshold: float) -> VerifyPolicy:
    """The policy of ``--speculative-dspark-verify-mode``; adaptive and async need the SPS table."""
    if mode in LOAD_ADAPTIVE_MODES:
        if sps is None:
            raise ValueError(f"verify mode {mode!r} needs an SPS table")
        return AdaptiveVerify(sps) if mode == "adaptive" else AsyncVerify(sps)
    if mode == "fixed":
        return FixedVerify()
    if mode == "threshold":
        return ThresholdVerify(threshold)
    raise ValueError(f"verify mode must be one of {VERIFY_MODES}, got {mode!r}")
