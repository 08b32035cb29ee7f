"""DSpark's hardware-aware prefix scheduler (paper Algorithm 1): how many drafts each request verifies.

Input: per-position confidences c[r, j] = P(draft j accepted | drafts < j accepted) of R requests
(calibrated, see ``sts``; positions without a draft have confidence 0 and are never verified). The
survival a[r, j] = prod_{i <= j} c[r, i] is the chance that the first j drafts all survive. Verifying B
flat tokens gives tau* = R + sum of the admitted a (expected tokens, bonus included) at SPS(B) steps/s;
the scheduler visits candidates in descending a and admits each while theta = tau* x SPS(B) grows.

Lossless needs that admitting draft k never depends on the realisation of draft k. A candidate (r, k)
is visited after those with larger survival only, none of which depends on x[r, k] (a[r, k + 1] does:
its confidence reads x[r, k], and it is visited later); the early stop freezes the decision there.
Searching past the first drop lets a[r, k + 1], i.e. x[r, k], decide whether x[r, k] is verified:
that biases the output (paper Appendix A, reproduced in tests/speculative/test_lossless.py).
"""

from __future__ import annotations

import json
import statistics
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import mul
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class SPSTable:
    """Target forward steps per second at a flat batch of B tokens, measured at a few probe sizes.

    Between probes the step time 1 / SPS is interpolated linearly; below the first probe it is the
    first probe's; past the last probe it grows with the last segment's slope (never shrinks).

    JSON file (SGLang's ``--speculative-dspark-sps-table-path`` format)::

        {"sample_batch_tokens": [1, 8, 16], "sample_steps_per_sec": [27.0, 23.8, 20.4], "max_batch_tokens": 16}

    Probes strictly increasing and >= 1, rates > 0. ``max_batch_tokens`` (required by SGLang, at least
    the largest probe) is written as the largest probe and ignored when loading.
    """

    batch_tokens: tuple[int, ...]
    steps_per_sec: tuple[float, ...]

    def __post_init__(self) -> None:
        xs, ys = tuple(int(x) for x in self.batch_tokens), tuple(float(y) for y in self.steps_per_sec)
        object.__setattr__(self, "batch_tokens", xs)
        object.__setattr__(self, "steps_per_sec", ys)
        if not xs or len(xs) != len(ys):
            raise ValueError("SPS table needs as many rates as probes, and at least one")
        if xs[0] < 1 or any(a >= b for a, b in zip(xs, xs[1:])):
            raise ValueError(f"SPS probes must be strictly increasing and >= 1, got {xs}")
        if any(y <= 0 for y in ys):
            raise ValueError(f"SPS rates must be positive, got {ys}")

    def __call__(self, batch_tokens: int) -> float:
        """Steps per second at a flat batch of `batch_tokens` tokens."""
        xs, ys = self.batch_tokens, self.steps_per_sec
        if len(xs) == 1 or batch_tokens <= xs[0]:
            return ys[0]
        hi = min(bisect_right(xs, batch_tokens), len(xs) - 1)  # the segment (hi - 1, hi)
        slope = (1 / ys[hi] - 1 / ys[hi - 1]) / (xs[hi] - xs[hi - 1])  # seconds per extra token
        if batch_tokens > xs[-1]:
            slope = max(slope, 0.0)
        return 1 / (1 / ys[hi] + slope * (batch_tokens - xs[hi]))

    def save(self, path: str | Path) -> None:
        data = {
            "sample_batch_tokens": list(self.batch_tokens),
            "sample_steps_per_sec": list(self.steps_per_sec),
            "max_batch_tokens": self.batch_tokens[-1],
        }
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SPSTable:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(tuple(data["sample_batch_tokens"]), tuple(data["sample_steps_per_sec"]))


def profile_sps(
    forward_fn: Callable[[int], object],
    sizes: Sequence[int],
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> SPSTable:
    """Measure SPS: ``forward_fn(B)`` runs (and synchronises) one target forward over B flat tokens; the
    median of ``repeats`` timed calls after ``warmup`` untimed ones gives SPS(B). The sizes take turns, one
    call each per pass, so that a machine whose speed drifts while it profiles (other processes on a
    shared CPU) slows every size alike: the table's ratios, which the planner reads, stay right."""
    sizes = sorted(set(sizes))
    for _ in range(warmup):
        for size in sizes:
            forward_fn(size)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            start = clock()
            forward_fn(size)
            times[size].append(clock() - start)
    return SPSTable(tuple(sizes), tuple(1.0 / statistics.median(times[size]) for size in sizes))


def survival_of(conf: Sequence[float]) -> list[float]:
    """One draft's confidences [G] -> its survival [G]: cumulative products (clamped to [0, 1])."""
    return list(accumulate((min(max(c, 0.0), 1.0) for c in conf), mul))


def survival(conf: Tensor) -> list[list[float]]:
    """conf [R, G] -> a [R][G] on the host. The planner works on Python floats: its inputs are a few dozen
    numbers, where each torch op would cost more than the whole loop."""
    return [survival_of(row) for row in conf.tolist()]


def _visit_order(a: list[list[float]]) -> list[tuple[float, int]]:
    """a [R][G] -> (survival, request) of the candidates with a > 0 in visit order: descending survival, ties by
    position then request (a request's drafts always come in order)."""
    width = max(map(len, a), default=0)
    candidates = [(row[j], r) for j in range(width) for r, row in enumerate(a) if row[j] > 0]  # position-major
    return sorted(candidates, key=lambda c: -c[0])  # stable: ties keep the position-major order


def _lengths(candidates: list[tuple[float, int]], num_requests: int) -> Tensor:
    """The admitted candidates -> drafts verified per request [R] int64."""
    lengths = [0] * num_requests
    for _, r in candidates:
        lengths[r] += 1
    return torch.tensor(lengths, dtype=torch.int64)


def plan_verify_lengths(conf: Tensor, sps: SPSTable, early_stop: bool = True) -> Tensor:
    """conf [R, G] -> number of drafts to verify per request [R] int64 on the host (Algorithm 1).

    ``early_stop=False`` searches every prefix of the visit order for the best theta: not lossless on
    current confidences (kept to show the bias, and for ``async_batch_cap`` on realised ones).
    """
    R = conf.shape[0]
    candidates = _visit_order(survival(conf))
    tau, thetas = float(R), [R * sps(R)]  # theta = expected tokens per second after admitting 0, 1, ...
    for admitted, (value, _) in enumerate(candidates, start=1):
        tau += value
        theta = tau * sps(R + admitted)
        if early_stop and theta <= thetas[-1]:
            break  # admitting this candidate would not raise theta
        thetas.append(theta)
    count = len(thetas) - 1 if early_stop else max(range(len(thetas)), key=thetas.__getitem__)
    return _lengths(candidates[:count], R)


def async_batch_cap(old_conf: Tensor, sps: SPSTable) -> int:
    """Total verify budget K from confidences two steps old ([R', G]; paper section 5.2). Their drafts
    are already verified, so the full search without early stop is safe; it overlaps with the forward."""
    return int(plan_verify_lengths(old_conf, sps, early_stop=False).sum())


def plan_verify_lengths_async(conf: Tensor, batch_cap: int) -> Tensor:
    """conf [R, G] -> lengths [R] int64 on the host: the ``batch_cap`` candidates with the highest current
    survival. Lossless: whether (r, k) is in the top K depends only on candidates visited before it."""
    return _lengths(_visit_order(survival(conf))[:batch_cap], conf.shape[0])


def drafting_pays(conf: Tensor, lengths: Tensor, sps: SPSTable, draft_seconds: float) -> bool:
    """conf [R, G], lengths [R] drafts to verify: whether the round is expected to emit tokens faster
    than a plain decode step of the R requests once the drafting time is counted."""
    R, verified = conf.shape[0], lengths.tolist()
    expected_tokens = R + sum(sum(row[:n]) for row, n in zip(survival(conf), verified))
    spec_seconds = 1.0 / sps(R + sum(verified)) + draft_seconds
    return expected_tokens / spec_seconds > R * sps(R)


def threshold_lengths(conf: Tensor, threshold: float) -> Tensor:
    """Baseline: conf [R, G] -> [R] int64, the drafts whose survival a[r, j] >= threshold (a prefix)."""
    return torch.tensor([sum(x >= threshold for x in row) for row in survival(conf)], dtype=torch.int64)
