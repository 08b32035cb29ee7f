"""Sequential Temperature Scaling (STS) of the drafter's confidence head (docs/design.md).

Calibrated confidence c[k] = sigmoid(z[k] / T[k] + b[k]), one temperature and one bias per draft position.
Fitted on held-out verify rounds for k = 1..G in order: (T[k], b[k]) is the grid point minimising the ECE
of the survival prod_{i <= k} c[i] against "drafts 1..k all accepted", the earlier positions fixed. With
the bias grid {0} this is the paper's STS (temperatures only); the bias (the grid includes 0, so it never
fits the calibration set worse) corrects a drafter that is under- or over-confident at every logit, which a
temperature cannot.

JSON file read by ``--speculative-dspark-confidence-sts-path`` (SGLang's format; only ``temperatures``,
all > 0, is required; ``biases`` default to 0; the ECEs are per position, before and after calibration)::

    {"temperatures": [1.4, 1.2, 1.1], "biases": [0.0, 0.3, 0.6], "dataset": "gsm8k", "num_samples": 5000,
     "ece_before": [0.06, 0.05, 0.04], "ece_after": [0.01, 0.01, 0.01]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from sglang_dspark.speculative.metrics import ece, ece_rows, prefix_labels


@dataclass(frozen=True)
class STSCalibration:
    """Per-position temperatures (and biases, () = all 0) plus how they were fitted."""

    temperatures: tuple[float, ...]
    biases: tuple[float, ...] = ()
    dataset: str = ""
    num_samples: int = 0
    ece_before: tuple[float, ...] = ()
    ece_after: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("temperatures", "biases", "ece_before", "ece_after"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"STS needs at least one temperature, all > 0, got {self.temperatures}")
        if self.biases and len(self.biases) != len(self.temperatures):
            raise ValueError(f"STS has {len(self.temperatures)} temperatures but {len(self.biases)} biases")

    def __call__(self, conf_logits: Tensor) -> Tensor:
        """conf_logits [..., G] (pre-sigmoid) -> calibrated confidences [..., G] fp32 (positions 1..G)."""
        G = conf_logits.shape[-1]
        if G > len(self.temperatures):
            raise ValueError(f"{G} confidence positions but only {len(self.temperatures)} STS temperatures")
        temps = torch.tensor(self.temperatures[:G], device=conf_logits.device)  # [G]
        biases = torch.tensor(self.biases[:G] or (0.0,) * G, device=conf_logits.device)  # [G]
        return torch.sigmoid(conf_logits.float() / temps + biases)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> STSCalibration:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_CHUNK = 512  # grid points scored at once (memory: _CHUNK x rows)


def temperature_grid() -> Tensor:
    """Default search grid [105]: log-spaced from 0.05 to 20, including 1."""
    return torch.logspace(-1.3, 1.3, 105, dtype=torch.float64)


def bias_grid() -> Tensor:
    """Default bias grid [61]: -3 to 3 in steps of 0.1, including 0."""
    return torch.arange(-30, 31, dtype=torch.float64) / 10


def fit_sts(
    conf_logits: Tensor,
    accept_lens: Tensor,
    draft_lens: Tensor | None = None,
    grid: Tensor | None = None,
    biases: Tensor | None = None,
    num_bins: int = 20,
    dataset: str = "",
) -> STSCalibration:
    """conf_logits [N, G] of N held-out rounds, accept_lens [N], draft_lens [N] (drafts verified; default
    all G) -> calibration. Position k is fitted on the rounds that verified draft k + 1. grid [T]: the
    temperatures tried; biases [B]: the biases tried (default bias_grid(); torch.zeros(1) = plain STS)."""
    N, G = conf_logits.shape
    logits = conf_logits.double()
    temps = (temperature_grid() if grid is None else grid).to(logits)  # [T]
    shifts = (bias_grid() if biases is None else biases).to(logits)  # [B]
    temp_of, bias_of = (x.flatten() for x in torch.meshgrid(temps, shifts, indexing="ij"))  # [T*B] each
    labels = prefix_labels(accept_lens, G)  # [N, G]
    verified = prefix_labels(torch.full_like(accept_lens, G) if draft_lens is None else draft_lens, G)  # [N, G]
    raw_survival = torch.sigmoid(logits).cumprod(dim=1)  # [N, G] uncalibrated
    survival = logits.new_ones(N)  # [N] calibrated survival of the positions fitted so far
    fitted_t, fitted_b, before, after = [], [], [], []
    for k in range(G):
        rows = verified[:, k]  # [N]
        errors = torch.cat(
            [
                ece_rows(
                    survival[rows] * torch.sigmoid(logits[rows, k] / t.unsqueeze(1) + b.unsqueeze(1)),
                    labels[rows, k],
                    num_bins,
                )
                for t, b in zip(temp_of.split(_CHUNK), bias_of.split(_CHUNK))
            ]
        )  # [T*B], nan if no rows
        best = int(torch.where(errors.isnan(), temp_of.log().abs() + bias_of.abs(), errors).argmin())  # no data: (1, 0)
        fitted_t.append(float(temp_of[best]))
        fitted_b.append(float(bias_of[best]))
        before.append(ece(raw_survival[rows, k], labels[rows, k], num_bins))
        after.append(float(errors[best]))
        survival = survival * torch.sigmoid(logits[:, k] / temp_of[best] + bias_of[best])
    return STSCalibration(tuple(fitted_t), tuple(fitted_b), dataset, N, tuple(before), tuple(after))
