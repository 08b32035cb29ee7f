"""When proposing pays for its time: per kind of request (``ProposerGate``), per round (``ProposalBackoff``)
and as measured (``RoundThroughput``). Skipping a proposer or a round's proposals never changes the output."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


def moving_average(old: float | None, new: float, weight: float) -> float:
    """Exponential moving average; ``weight`` of the newest value (the first value stands alone)."""
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class ProposerGate:
    """Whether a costlier proposer is worth running, per kind of request (e.g. grammar-constrained or not):
    the moving average, per request it drafted for, of the expected accepted drafts its draft added over the
    cheaper proposers' (calibrated confidences; 0 where it lost), against what its drafting costs. A round
    that commits N tokens in S seconds gains by D more seconds of drafting only if the drafts add more than
    D * N / S tokens: the cost of a request is its share of the drafter call's time (moving average over
    calls where the gate did not cut its kind) times the decode rounds' tokens/s (``observe_round``).
    Below that cost, or below ``min_gain``, it drafts for one request of that kind in every
    ``explore_every``-th call only, which keeps the average current. Skipping a proposer never changes the
    output. What the drafter adds per kind of request: benchmarks/results/spec.md."""

    min_gain: float = 0.3
    explore_every: int = 8
    weight: float = 0.05  # of the newest request (or round) in the moving averages
    gains: dict[Hashable, float] = field(default_factory=dict)
    seconds: dict[Hashable, float] = field(default_factory=dict)  # drafting seconds per request, per kind
    token_rate: float | None = None  # tokens/s of decode rounds
    skipped: dict[Hashable, int] = field(default_factory=dict)

    def cost(self, kind: Hashable) -> float:
        """The tokens a request of this kind must gain to pay for its drafting (0 until measured)."""
        seconds = self.seconds.get(kind)
        return 0.0 if seconds is None or self.token_rate is None else seconds * self.token_rate

    def quota(self, kind: Hashable) -> int | None:
        """How many requests of this kind the proposer drafts for in this call: all (None), or, below
        min_gain or its cost, one in every explore_every-th call (the cheapest measurement) and none otherwise."""
        gain = self.gains.get(kind)
        if gain is None or gain >= max(self.min_gain, self.cost(kind)):
            return None
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if self.skipped[kind] >= self.explore_every:
            self.skipped[kind] = 0
            return 1
        return 0

    def observe(self, kind: Hashable, gain: float, seconds: float | None = None) -> None:
        """A request of this kind that the proposer drafted for: the expected drafts it added and, unless the
        gate cut its kind in that call (exploring), the call's seconds per request drafted."""
        self.gains[kind] = moving_average(self.gains.get(kind), gain, self.weight)
        if seconds is not None:
            self.seconds[kind] = moving_average(self.seconds.get(kind), seconds, self.weight)

    def observe_round(self, tokens: int, seconds: float) -> None:
        """A decode round: the tokens it committed and its wall time."""
        self.token_rate = moving_average(self.token_rate, tokens / max(seconds, 1e-9), self.weight)


@dataclass
class ProposalBackoff:
    """When a round's proposals did not pay (the planner verified none of them, the expected tokens per
    second of the round, drafting time included, fell below a plain decode step's, or rounds that proposed
    have been measured slower than rounds that did not: RoundThroughput), skip proposing
    for the next 1, 2, 4 .. ``max_skip`` rounds while the batch is at least as large, with one proposing
    round in between. That round probes: it offers only ``probe_size`` of the requests (the next ones each
    time). A probe that pays buys a trial: the next round offers every request, and only a trial that pays
    ends the backoff (a failed probe or trial doubles it). So a batch where drafting keeps not paying pays
    for a few requests' drafts per probe. Drafting costs time (a large share of a target step for the DSpark
    drafter at a large batch), and skipping it never changes the output."""

    max_skip: int = 16
    probe_size: int = 4
    skip: int = 0  # rounds left to skip
    span: int = 0  # length of the current backoff
    batch: int = 0  # batch size at which proposing did not pay
    cursor: int = 0  # where the next probe starts in the batch
    trial: bool = False  # a probe paid: the next proposing round offers every request

    def should_skip(self, batch: int) -> bool:
        if self.skip > 0 and batch >= self.batch:
            self.skip -= 1
            return True
        return False

    def offered(self, batch: int) -> list[int]:
        """The requests (indices into the batch) that propose in a round that is not skipped: all, or while
        backing off (and not in a trial) a probe of probe_size of them."""
        if self.span == 0 or self.trial or batch <= self.probe_size:
            return list(range(batch))
        start, self.cursor = self.cursor % batch, self.cursor + self.probe_size
        return [(start + i) % batch for i in range(self.probe_size)]

    def record(self, batch: int, paid: bool, probe: bool = False) -> None:
        """After planning a round with proposals: whether they paid, and whether the round was a probe."""
        if paid and probe:
            self.trial = True
            return
        self.trial = False
        if paid:
            self.skip = self.span = 0
        else:
            self.span = min(max(1, 2 * self.span), self.max_skip)
            self.skip, self.batch = self.span, batch


@dataclass
class RoundThroughput:
    """Measured tokens/s of decode rounds that proposed drafts and of rounds that did not, per batch size
    (power-of-two buckets), as moving averages. The planner's cost model (SPS(B) + the drafting time)
    misses what it does not model (verify bookkeeping, confidences that are still miscalibrated); the
    measurement does not: where proposing rounds are measured slower, proposing counts as not paying."""

    weight: float = 0.1  # of the newest round in the moving average
    min_rounds: int = 8  # per bucket and kind before a comparison counts
    rates: dict[tuple[int, bool], float] = field(default_factory=dict)  # (bucket, proposed) -> tokens/s
    counts: dict[tuple[int, bool], int] = field(default_factory=dict)

    @staticmethod
    def bucket(batch: int) -> int:
        return 1 << (batch.bit_length() - 1)

    def observe(self, batch: int, tokens: int, seconds: float, proposed: bool) -> None:
        key = (self.bucket(batch), proposed)
        rate = tokens / max(seconds, 1e-9)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.rates[key] = moving_average(self.rates.get(key), rate, self.weight)

    def proposing_loses(self, batch: int) -> bool:
        b = self.bucket(batch)
        if min(self.counts.get((b, True), 0), self.counts.get((b, False), 0)) < self.min_rounds:
            return False
        return self.rates[(b, True)] < self.rates[(b, False)]
