"""Online calibration of draft confidences from the verify rounds seen so far.

The planner needs c[j] = P(draft j accepted | drafts < j accepted). Heuristic confidences (an n-gram
vote share, the radix prior) and even STS-calibrated drafter confidences drift from what a workload
really accepts (on JSON-schema tasks a lone n-gram match, vote share 0.5, is accepted far more often than
half the time: benchmarks/results/spec.md). Per (source, position, bin of the raw confidence) the
calibration counts verified and accepted drafts and maps a raw confidence to
(accepted + w * raw) / (verified + w): the raw value is a prior worth w observations.

Lossless: a draft's calibrated confidence depends only on rounds verified before it was proposed,
never on its own outcome, so the planner's decision to verify it cannot read its realisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from sglang_dspark.speculative.draft import Draft, Proposer, SpecRequest


@dataclass
class OnlineCalibration:
    num_bins: int = 10
    max_position: int = 8  # positions from here on share the statistics of the last one
    prior_weight: float = 4.0  # pseudo-observations at the raw confidence
    memory: float = 256.0  # a cell's counts are halved when it has seen this many drafts (workloads change)
    counts: dict[tuple[str, int, int], list[float]] = field(default_factory=dict)  # -> [accepted, verified]

    def _key(self, source: str, position: int, raw: float) -> tuple[str, int, int]:
        bin_ = min(max(int(raw * self.num_bins), 0), self.num_bins - 1)
        return source, min(position, self.max_position - 1), bin_

    def calibrate(self, source: str, raw: list[float]) -> list[float]:
        """raw [k] -> calibrated [k] conditional acceptance probabilities."""
        out = []
        for j, c in enumerate(raw):
            accepted, verified = self.counts.get(self._key(source, j, c), (0.0, 0.0))
            out.append((accepted + self.prior_weight * c) / (verified + self.prior_weight))
        return out

    def observe(self, source: str, raw: list[float], num_verified: int, num_accepted: int) -> None:
        """A verified round: drafts [0, num_verified) were verified and the first num_accepted accepted.
        Drafts after the first rejection were not tested on their own, so they are not counted."""
        for j in range(min(num_verified, num_accepted + 1, len(raw))):
            cell = self.counts.setdefault(self._key(source, j, raw[j]), [0.0, 0.0])
            cell[0] += float(j < num_accepted)
            cell[1] += 1.0
            if cell[1] >= self.memory:
                cell[0] /= 2
                cell[1] /= 2


@dataclass
class CalibratedProposer:
    """Wraps a proposer: its drafts carry calibrated confidences and keep the raw ones for ``observe``."""

    proposer: Proposer
    calibration: OnlineCalibration

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.proposer.capture_layers

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        return [
            dataclasses.replace(
                d, confidences=self.calibration.calibrate(d.source, d.confidences), raw_confidences=d.confidences
            )
            for d in self.proposer.propose(reqs, num_tokens)
        ]

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        self.proposer.store_features(hidden_states, slots)

    def release(self, rid: str) -> None:
        self.proposer.release(rid)

    def request_states(self) -> int:
        return self.proposer.request_states()
