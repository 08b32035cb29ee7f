"""Sequential Temperature Scaling (STS) of the drafter's confidence head (DESIGN.md section 3).

Calibrated confidence c[k] = sigmoid(z[k] / T[k]), one temperature per draft position. Fitted on held-out
verify rounds for k = 1..G in order: T[k] is the grid value minimising the ECE of the survival
prod_{i <= k} c[i] against "drafts 1..k all accepted", the earlier temperatures fixed.

JSON file read by ``--speculative-dspark-confidence-sts-path`` (SGLang's format; only ``temperatures``,
all > 0, is required; the ECEs are per position, before and after calibration)::

    {"temperatures": [1.4, 1.2, 1.1], "dataset": "gsm8k", "num_samples": 5000,
     "ece_before": [0.06, 0.05, 0.04], "ece_after": [0.01, 0.01, 0.01]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from sglang_dspark.speculative.metrics import ece, ece_rows, prefix_labels


@dataclass(frozen=True)
class STSCalibration:
    """Per-position temperatures plus how they were fitted."""

    temperatures: tuple[float, ...]
    dataset: str = ""
    num_samples: int = 0
    ece_before: tuple[float, ...] = ()
    ece_after: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("temperatures", "ece_before", "ece_after"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"STS needs at least one temperature, all > 0, got {self.temperatures}")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> STSCalibration:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def apply_sts(conf_logits: Tensor, temperatures: Sequence[float] | Tensor) -> Tensor:
    """conf_logits [..., G] (pre-sigmoid) -> calibrated confidences [..., G] fp32 (uses T[:G])."""
    temps = torch.as_tensor(temperatures, dtype=torch.float32, device=conf_logits.device)  # [G']
    G = conf_logits.shape[-1]
    if G > temps.numel():
        raise ValueError(f"{G} confidence positions but only {temps.numel()} STS temperatures")
    return torch.sigmoid(conf_logits.float() / temps[:G])


def temperature_grid() -> Tensor:
    """Default search grid [105]: log-spaced from 0.05 to 20, including 1."""
    return torch.logspace(-1.3, 1.3, 105, dtype=torch.float64)


def fit_sts(
    conf_logits: Tensor,
    accept_lens: Tensor,
    draft_lens: Tensor | None = None,
    grid: Tensor | None = None,
    num_bins: int = 20,
    dataset: str = "",
) -> STSCalibration:
    """conf_logits [N, G] of N held-out rounds, accept_lens [N], draft_lens [N] (drafts verified; default
    all G) -> calibration. Position k is fitted on the rounds that verified draft k + 1."""
    N, G = conf_logits.shape
    logits = conf_logits.double()
    grid = (temperature_grid() if grid is None else grid).to(logits)  # [T]
    labels = prefix_labels(accept_lens, G)  # [N, G]
    verified = prefix_labels(torch.full_like(accept_lens, G) if draft_lens is None else draft_lens, G)  # [N, G]
    raw_survival = torch.sigmoid(logits).cumprod(dim=1)  # [N, G] uncalibrated
    survival = logits.new_ones(N)  # [N] calibrated survival of the positions fitted so far
    temps, before, after = [], [], []
    for k in range(G):
        rows = verified[:, k]  # [N]
        label = labels[rows, k]
        candidates = survival * torch.sigmoid(logits[:, k] / grid.unsqueeze(1))  # [T, N]
        errors = ece_rows(candidates[:, rows], label, num_bins)  # [T], nan if no rows
        best = int(torch.where(errors.isnan(), grid.log().abs(), errors).argmin())  # no data: T = 1
        temps.append(float(grid[best]))
        before.append(ece(raw_survival[rows, k], label, num_bins))
        after.append(float(errors[best]))
        survival = candidates[best]
    return STSCalibration(tuple(temps), dataset, N, tuple(before), tuple(after))
