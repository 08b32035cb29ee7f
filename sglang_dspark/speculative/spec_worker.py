"""Speculative worker: propose drafts, plan verify lengths, verify losslessly.

The scheduler runs each speculating request's last committed token followed by its drafts as one
extend on top of the cached KV; the target logits of those rows come back here. Greedy requests
accept while draft == argmax of the processed target logits; sampling requests use exact
rejection sampling against the processed distribution plain decoding would sample from
(penalties see the drafts before each position, as if they had been committed), with the
distributions the drafts were drawn from (one-hot for deterministic drafts).

Proposers: ``NGramProposer`` here, ``DSparkProposer`` (speculative/dspark_proposer.py). A proposer
with ``capture_layers`` gets the target's hidden states of those layers after every forward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from sglang_dspark.kernels.spec_verify import draw_verify_noise, greedy_accept_lengths, rejection_sample
from sglang_dspark.layers.sampler import SamplingBatchInfo, probs_from_logits, process_logits
from sglang_dspark.mem_cache.radix_cache import RadixCache
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.ngram import NGramIndex, propose
from sglang_dspark.speculative.planner import SPSTable, drafting_pays
from sglang_dspark.speculative.verify_policy import VerifyPolicy

if TYPE_CHECKING:
    from sglang_dspark.speculative.online_calibration import OnlineCalibration

logger = logging.getLogger(__name__)

DEFAULT_NUM_DRAFT_TOKENS = 8


class SpecRequest(Protocol):
    """What the worker reads of a scheduler request."""

    rid: str
    origin_input_ids: list[int]
    output_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None
    grammar: object | None
    req_pool_idx: int | None  # row of the request-to-KV-slot table
    kv_len: int  # tokens with KV: the anchor follows grammar-forced tokens not yet run when it is below the anchor


@dataclass
class Draft:
    tokens: list[int]  # [k]
    confidences: list[float]  # [k], c[j] = P(draft j accepted | drafts < j accepted)
    probs: torch.Tensor | None = None  # [k, V] distributions the drafts were sampled from; None = deterministic
    source: str = "draft"  # which proposer (and how) made it, for the online calibration
    raw_confidences: list[float] | None = None  # [k] before online calibration, when it was applied


def draft_temperature(req: SpecRequest) -> float:
    """0 (greedy drafts) for greedy and grammar requests (the scheduler may cut a grammar request's draft,
    which is lossless for deterministic drafts only), else the request's temperature."""
    params = req.sampling_params
    return 0.0 if params.is_greedy or req.grammar is not None else params.temperature


class Proposer(Protocol):
    capture_layers: tuple[int, ...]  # target layers whose hidden states store_features receives; -1 = embeddings

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]: ...

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None: ...

    def release(self, rid: str) -> None: ...

    def request_states(self) -> int: ...  # requests this proposer keeps state for (0 when idle)


@dataclass
class NGramProposer:
    """Suffix matches against each request's own context, indexed incrementally. With ``radix``, a
    request whose whole context is cached (an earlier request had the same tokens so far) drafts the
    radix tree's cached continuation instead (docs/design.md "Combining proposers"): it matches the whole context, not a
    few-token suffix, so it comes first, with confidence ``radix_confidence`` per token (a prior)."""

    min_n: int = 1
    max_n: int = 4
    radix: RadixCache | None = None
    radix_confidence: float = 0.9
    indexes: dict[str, NGramIndex] = field(default_factory=dict)
    capture_layers: tuple[int, ...] = ()

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        return [self._propose_one(r, n) for r, n in zip(reqs, num_tokens)]

    def _propose_one(self, req: SpecRequest, num_tokens: int) -> Draft:
        index = self.indexes.get(req.rid)
        if index is None:
            index = self.indexes[req.rid] = NGramIndex(self.min_n, self.max_n)
        n = len(req.origin_input_ids) + len(req.output_ids)
        if len(index.tokens) < n:
            fill = req.origin_input_ids + req.output_ids
            index.extend(fill[len(index.tokens) :])
        cached = self.radix.continuation(index.tokens, num_tokens) if self.radix is not None and num_tokens else []
        if cached:
            return Draft(cached, [self.radix_confidence] * len(cached), source="radix")
        proposal = propose(index, num_tokens, grammar=req.grammar)
        return Draft(proposal.tokens, proposal.confidences, source="ngram")

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        raise RuntimeError("the n-gram proposer captures no hidden states")

    def release(self, rid: str) -> None:
        self.indexes.pop(rid, None)

    def request_states(self) -> int:
        return len(self.indexes)


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
        self.gains[kind] = _moving(self.gains.get(kind), gain, self.weight)
        if seconds is not None:
            self.seconds[kind] = _moving(self.seconds.get(kind), seconds, self.weight)

    def observe_round(self, tokens: int, seconds: float) -> None:
        """A decode round: the tokens it committed and its wall time."""
        self.token_rate = _moving(self.token_rate, tokens / max(seconds, 1e-9), self.weight)


def _moving(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class BestOfProposer:
    """Several proposers, cheapest first; per request, the draft with the most expected committed drafts,
    sum_j prod_{i <= j} c_i (docs/design.md "Combining proposers": e.g. the n-gram / radix proposer and the
    DSpark drafter; ties go to the earlier proposer). A request whose best draft so far already expects
    ``enough`` drafts is not offered to the later (costlier) proposers: the drafter rarely beats a long,
    sure n-gram match, and drafting costs time. With a ``gate``, a later proposer also sits out the kinds of
    requests (grammar or not) where its drafts have lately added too little. At most one of them may
    capture target hidden states."""

    proposers: tuple[Proposer, ...]
    enough: float = float("inf")
    gate: ProposerGate | None = None

    def __post_init__(self) -> None:
        if sum(bool(p.capture_layers) for p in self.proposers) > 1:
            raise ValueError("at most one combined proposer may capture hidden states")

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return next((p.capture_layers for p in self.proposers if p.capture_layers), ())

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        best = self.proposers[0].propose(reqs, num_tokens)
        scores = [expected_drafts(d) for d in best]
        for index, proposer in enumerate(self.proposers[1:], start=1):
            todo = [i for i, score in enumerate(scores) if score < self.enough]
            cut: set[Hashable] = set()  # kinds the gate left out requests of (exploring with one of them)
            if self.gate is not None:
                kinds = {i: (index, reqs[i].grammar is not None) for i in todo}
                kept = self._within_quota(todo, kinds)
                cut = {kinds[i] for i in set(todo) - set(kept)}
                todo = kept
            if not todo:
                continue
            start = time.perf_counter()
            drafts = proposer.propose([reqs[i] for i in todo], [num_tokens[i] for i in todo])
            per_request = (time.perf_counter() - start) / len(todo)
            for i, draft in zip(todo, drafts):
                score = expected_drafts(draft)
                if self.gate is not None:  # an exploring request's share of the call is not its drafting cost
                    seconds = None if kinds[i] in cut else per_request
                    self.gate.observe(kinds[i], max(0.0, score - scores[i]), seconds)
                if score > scores[i]:
                    best[i], scores[i] = draft, score
        return best

    def _within_quota(self, todo: list[int], kinds: dict[int, Hashable]) -> list[int]:
        quota = {k: self.gate.quota(k) for k in dict.fromkeys(kinds.values())}
        kept = []
        for i in todo:
            left = quota[kinds[i]]
            if left is None or left > 0:
                kept.append(i)
                quota[kinds[i]] = None if left is None else left - 1
        return kept

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        next(p for p in self.proposers if p.capture_layers).store_features(hidden_states, slots)

    def release(self, rid: str) -> None:
        for p in self.proposers:
            p.release(rid)

    def request_states(self) -> int:
        return max(p.request_states() for p in self.proposers)


def _force_rows_(processed: torch.Tensor, drafts: list[list[int]], forced: list[list[int]]) -> None:
    """In place: processed [sum(len(d) + 1), V] logits; the row that verifies a forced draft becomes a point
    mass on it (-inf elsewhere), so greedy and rejection sampling accept it as plain decoding appends it."""
    rows, tokens, start = [], [], 0
    for d, f in zip(drafts, forced, strict=True):
        rows += [start + i for i in f]
        tokens += [d[i] for i in f]
        start += len(d) + 1
    if rows:
        with torch.inference_mode():  # processed is an inference tensor
            processed[rows] = -torch.inf
            processed[rows, tokens] = 0.0


def expected_drafts(draft: Draft) -> float:
    """Expected accepted drafts if all were verified: the sum of the survival probabilities."""
    return float(torch.tensor(draft.confidences, dtype=torch.float64).clamp(0, 1).cumprod(0).sum())


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
        old = self.rates.get(key)
        self.rates[key] = rate if old is None else (1 - self.weight) * old + self.weight * rate

    def proposing_loses(self, batch: int) -> bool:
        b = self.bucket(batch)
        if min(self.counts.get((b, True), 0), self.counts.get((b, False), 0)) < self.min_rounds:
            return False
        return self.rates[(b, True)] < self.rates[(b, False)]


class SpecWorker:
    def __init__(
        self,
        proposer: Proposer,
        num_draft_tokens: int,
        vocab_size: int,
        policy: VerifyPolicy,
        calibration: OnlineCalibration | None = None,
        sps: SPSTable | None = None,
        gate: ProposerGate | None = None,
    ) -> None:
        """calibration: learns from every verified round; the proposer's drafts are calibrated by it
        (online_calibration.CalibratedProposer) when given. sps: the target's SPS(B), with which a round
        whose drafting time outweighs its expected gain counts as not paying (ProposalBackoff). gate: the
        proposer's ProposerGate, told every decode round's tokens/s."""
        self.proposer = proposer
        self.num_draft_tokens = num_draft_tokens
        self.vocab_size = vocab_size
        self.policy = policy
        self.calibration = calibration
        self.sps = sps
        self.gate = gate
        self.proposals: dict[str, Draft] = {}  # rid -> the proposal whose drafts are now being verified
        self.backoff = ProposalBackoff()
        self.throughput = RoundThroughput()
        self.proposed = False  # whether the latest draft() call ran the proposer
        self.probed = False  # whether it ran it for a probe (ProposalBackoff)

    @property
    def capture_layers(self) -> tuple[int, ...]:
        return self.proposer.capture_layers

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        """After a target forward that captured `capture_layers`: hidden_states [N, d] each, slots [N] KV slots."""
        self.proposer.store_features(hidden_states, slots)

    def draft(self, reqs: list[SpecRequest], room: list[int]) -> list[list[int]]:
        """Drafts to verify per request; room[i] caps request i's drafts (tokens it may still emit - 1)."""
        self.proposed = self.probed = False
        if self.backoff.should_skip(len(reqs)):
            self.proposals = {}
            return [[] for _ in reqs]
        self.proposed = True
        offered = self.backoff.offered(len(reqs))
        probe = self.probed = len(offered) < len(reqs)  # a probe's round is measured as neither kind
        start = time.perf_counter()
        proposed = self.proposer.propose(
            [reqs[i] for i in offered], [min(self.num_draft_tokens, room[i]) for i in offered]
        )
        draft_seconds = time.perf_counter() - start
        drafts = [Draft([], []) for _ in reqs]
        for i, d in zip(offered, proposed, strict=True):
            drafts[i] = d
        self.proposals = {r.rid: d for r, d in zip(reqs, drafts)}
        width = max((len(d.tokens) for d in drafts), default=0)
        if width == 0:
            return [[] for _ in reqs]
        conf = torch.zeros(len(reqs), width)  # [R, G], missing drafts have confidence 0
        for i, d in enumerate(drafts):
            conf[i, : len(d.tokens)] = torch.tensor(d.confidences)
        lengths = self.policy.lengths(conf, torch.tensor([len(d.tokens) for d in drafts]))
        # a probe is judged by the cost model only: the measured comparison is of rounds that offer everyone
        paid = bool(lengths.sum()) and (
            self.sps is None
            or (
                drafting_pays(conf, lengths, self.sps, draft_seconds)
                and (probe or not self.throughput.proposing_loses(len(reqs)))
            )
        )
        self.backoff.record(len(reqs), paid, probe)
        return [d.tokens[:n] for d, n in zip(drafts, lengths.tolist())]

    def observe_round(self, batch: int, tokens: int, seconds: float) -> None:
        """After a step in which `batch` requests decoded (no prefill): the tokens they committed and the
        step's wall time, drafting included; feeds the measured comparison (load-adaptive modes only)."""
        if self.sps is not None and not self.probed:
            self.throughput.observe(batch, tokens, seconds, self.proposed)
        if self.gate is not None:
            self.gate.observe_round(tokens, seconds)
        self.proposed = self.probed = False  # a step that does not call draft() proposes nothing

    def verify(
        self,
        reqs: list[SpecRequest],
        drafts: list[list[int]],
        logits: torch.Tensor,
        forced: list[list[int]] | None = None,
    ) -> list[list[int]]:
        """logits [sum(len(d) + 1), V]: rows of each request's anchor + drafts, in order. forced[i]: indices
        of request i's drafts that its grammar forces (plain decoding appends them without sampling): they
        are accepted as given once the drafts before them are.
        Returns the tokens each request commits: its accepted drafts plus one corrected/bonus token."""
        forced = forced or [[] for _ in drafts]
        rows_params, rows_prompt, rows_output = [], [], []
        for req, d in zip(reqs, drafts):
            for k in range(len(d) + 1):
                rows_params.append(req.sampling_params)
                rows_prompt.append(req.origin_input_ids)
                rows_output.append(req.output_ids + d[:k])
        info = SamplingBatchInfo.from_params(rows_params, self.vocab_size)
        processed = process_logits(logits, info, rows_prompt, rows_output)  # [T, V]
        _force_rows_(processed, drafts, forced)

        B, K = len(reqs), max(len(d) for d in drafts)
        draft_tokens = torch.zeros(B, K, dtype=torch.int64)  # [B, K], padded with 0
        draft_lens = torch.tensor([len(d) for d in drafts], dtype=torch.int64)  # [B]
        row_index = torch.zeros(B, K + 1, dtype=torch.int64)  # [B, K + 1] -> row of processed
        start = 0
        for b, d in enumerate(drafts):
            draft_tokens[b, : len(d)] = torch.tensor(d, dtype=torch.int64)
            row_index[b] = start + torch.arange(K + 1).clamp(max=len(d))
            start += len(d) + 1

        greedy = torch.tensor([r.sampling_params.is_greedy for r in reqs])
        accept = torch.zeros(B, dtype=torch.int64)
        nxt = torch.zeros(B, dtype=torch.int64)
        if greedy.any():
            g = greedy.nonzero().squeeze(1)
            argmax = processed.argmax(dim=1)[row_index[g]]  # [Bg, K + 1]
            accept[g], nxt[g] = greedy_accept_lengths(draft_tokens[g], draft_lens[g], argmax)
        if (~greedy).any():
            s = (~greedy).nonzero().squeeze(1)
            probs = probs_from_logits(processed, info)[row_index[s]]  # [Bs, K + 1, V]
            gens = [reqs[i].generator for i in s.tolist()]
            uniforms, expo = draw_verify_noise(draft_lens[s], K, self.vocab_size, gens)
            q = self._draft_probs([reqs[i] for i in s.tolist()], draft_tokens[s], draft_lens[s])
            accept[s], nxt[s] = rejection_sample(draft_tokens[s], draft_lens[s], q, probs, uniforms, expo)

        if self.calibration is not None:
            for req, d, f, a in zip(reqs, drafts, forced, accept.tolist()):
                proposal = self.proposals.get(req.rid)
                n = f[0] if f else len(d)  # the proposer's drafts: those before the first forced one
                if n and proposal is not None and proposal.raw_confidences is not None:
                    self.calibration.observe(proposal.source, proposal.raw_confidences, n, min(a, n))
        return [d[: int(a)] + [int(n)] for d, a, n in zip(drafts, accept, nxt)]

    def _draft_probs(self, reqs: list[SpecRequest], tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor | None:
        """tokens [B, K], lens [B] -> draft distributions [B, K, V] (one-hot for deterministic drafts), or None
        when every draft is deterministic. Drafts cut after proposal keep the probabilities of their prefix."""
        probs = {r.rid: p.probs for r in reqs if (p := self.proposals.get(r.rid)) is not None and p.probs is not None}
        if not probs:
            return None
        q = torch.nn.functional.one_hot(tokens, self.vocab_size).float()  # [B, K, V]
        for b, r in enumerate(reqs):
            if r.rid in probs:
                n = int(lens[b])
                q[b, :n] = probs[r.rid][:n]
        return q

    def release(self, rid: str) -> None:
        self.proposer.release(rid)
        self.proposals.pop(rid, None)

    def request_states(self) -> int:
        """Requests with proposer state or a proposal being verified."""
        return max(self.proposer.request_states(), len(self.proposals))
