"""SpecWorker: the speculative side of a round: propose and plan the drafts, then accept them.

``draft`` runs the proposer (speculative/draft.py; wrapped in online_calibration.CalibratedProposer when
calibrating), plans each request's verify length with the verify policy and backs off when proposing has
not paid (pacing.py). ``verify`` takes the target logits of the anchor + draft rows, accepts losslessly
(verify.py) and feeds the online calibration. A proposer with ``capture_layers`` gets the target's hidden
states of those layers after every forward.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from sglang_dspark.speculative.draft import Draft, Proposer, SpecRequest
from sglang_dspark.speculative.pacing import ProposalBackoff, ProposerGate, RoundThroughput
from sglang_dspark.speculative.planner import SPSTable, drafting_pays
from sglang_dspark.speculative.spec_config import SpecConfig
from sglang_dspark.speculative.verify import verify_drafts
from sglang_dspark.speculative.verify_policy import VerifyPolicy

if TYPE_CHECKING:
    from sglang_dspark.speculative.online_calibration import OnlineCalibration


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
        config: SpecConfig | None = None,
    ) -> None:
        """calibration: learns from every verified round; the proposer's drafts are calibrated by it
        (online_calibration.CalibratedProposer) when given. sps: the target's SPS(B), with which a round
        whose drafting time outweighs its expected gain counts as not paying (ProposalBackoff). gate: the
        proposer's ProposerGate, told every decode round's tokens/s. config: which of the backoff's
        signals are on (SpecConfig.backoff, drafting_pays, round_throughput) and their constants."""
        config = config or SpecConfig()
        self.proposer = proposer
        self.num_draft_tokens = num_draft_tokens
        self.vocab_size = vocab_size
        self.policy = policy
        self.calibration = calibration
        self.sps = sps
        self.gate = gate
        self.proposals: dict[str, Draft] = {}  # rid -> the proposal whose drafts are now being verified
        self.config = config
        self.backoff = ProposalBackoff(config.backoff_max_skip, config.backoff_probe_size) if config.backoff else None
        self.throughput = RoundThroughput(config.throughput_weight, config.throughput_min_rounds)
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
        backoff = self.backoff
        if backoff is not None and backoff.should_skip(len(reqs)):
            self.proposals = {}
            return [[] for _ in reqs]
        self.proposed = True
        offered = backoff.offered(len(reqs)) if backoff is not None else list(range(len(reqs)))
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
        conf = torch.tensor([d.confidences + [0.0] * (width - len(d.tokens)) for d in drafts])  # [R, G], 0: no draft
        lengths = self.policy.lengths(conf, torch.tensor([len(d.tokens) for d in drafts]))
        if backoff is not None:
            backoff.record(len(reqs), self._paid(conf, lengths, draft_seconds, probe), probe)
        return [d.tokens[:n] for d, n in zip(drafts, lengths.tolist())]

    def _paid(self, conf: torch.Tensor, lengths: torch.Tensor, draft_seconds: float, probe: bool) -> bool:
        """Whether a round's proposals paid: something was verified and, with an SPS table, the cost model
        expects them faster than plain decoding and (not for a probe: the measured comparison is of rounds
        that offer everyone) proposing rounds are not measured slower."""
        if not bool(lengths.sum()):
            return False
        if self.sps is None:
            return True
        cfg = self.config
        if cfg.drafting_pays and not drafting_pays(conf, lengths, self.sps, draft_seconds):
            return False
        return probe or not cfg.round_throughput or not self.throughput.proposing_loses(len(conf))

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
        proposals = [self.proposals.get(r.rid) for r in reqs]
        verdict = verify_drafts(reqs, drafts, logits, forced, proposals, self.vocab_size)
        if self.calibration is not None:
            for proposal, d, f, a in zip(proposals, drafts, forced, verdict.accepted):
                n = f[0] if f else len(d)  # the proposer's drafts: those before the first forced one
                if n and proposal is not None and proposal.raw_confidences is not None:
                    self.calibration.observe(proposal.source, proposal.raw_confidences, n, min(a, n))
        return verdict.committed(drafts)

    def release(self, rid: str) -> None:
        self.proposer.release(rid)
        self.proposals.pop(rid, None)

    def request_states(self) -> int:
        """Requests with proposer state or a proposal being verified."""
        return max(self.proposer.request_states(), len(self.proposals))
