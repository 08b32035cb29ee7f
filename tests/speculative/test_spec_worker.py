from dataclasses import dataclass, field

import pytest
import torch

from sglang_dspark.kernels.spec_verify import greedy_accept_lengths
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.combined_proposer import BestOfProposer
from sglang_dspark.speculative.draft import Draft, expected_drafts
from sglang_dspark.speculative.pacing import ProposalBackoff, ProposerGate, RoundThroughput
from sglang_dspark.speculative.planner import SPSTable
from sglang_dspark.speculative.spec_config import SpecConfig
from sglang_dspark.speculative.spec_worker import SpecWorker
from sglang_dspark.speculative.verify import _greedy_verdict
from sglang_dspark.speculative.verify_policy import FixedVerify


@dataclass
class FixedProposer:
    """Returns the same draft per request id; records what it was given."""

    drafts: dict[str, Draft]
    capture_layers: tuple[int, ...] = ()
    stored: list[torch.Tensor] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def propose(self, reqs, num_tokens):
        return [self.drafts[r.rid] for r in reqs]

    def store_features(self, hidden_states, slots):
        self.stored.append(slots)

    def release(self, rid):
        self.released.append(rid)


@dataclass
class Req:
    rid: str


def test_expected_drafts_is_the_sum_of_survivals():
    assert expected_drafts(Draft([1, 2, 3], [0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.25 + 0.25)
    assert expected_drafts(Draft([], [])) == 0.0


def test_best_of_picks_per_request_and_routes_features():
    long_weak = Draft([1, 2, 3, 4], [0.3, 0.3, 0.3, 0.3])  # 0.43 expected
    short_sure = Draft([5], [0.9])  # 0.9 expected
    drafter = FixedProposer({"a": long_weak, "b": Draft([6, 7], [0.9, 0.9])}, capture_layers=(1, 2))
    ngram = FixedProposer({"a": short_sure, "b": Draft([], [])})
    best = BestOfProposer((drafter, ngram))
    assert best.capture_layers == (1, 2)
    assert best.propose([Req("a"), Req("b")], [4, 4]) == [short_sure, drafter.drafts["b"]]
    best.store_features([torch.zeros(3, 4)], torch.arange(3))
    assert len(drafter.stored) == 1 and not ngram.stored
    best.release("a")
    assert drafter.released == ngram.released == ["a"]


def test_best_of_skips_the_costlier_proposers_for_requests_with_enough():
    sure = Draft([1, 2, 3], [0.9, 0.9, 0.9])  # 2.44 expected
    weak = Draft([4], [0.5])
    ngram = FixedProposer({"a": sure, "b": weak, "c": Draft([], [])})
    asked = []

    @dataclass
    class Drafter(FixedProposer):
        def propose(self, reqs, num_tokens):
            asked.append(([r.rid for r in reqs], num_tokens))
            return super().propose(reqs, num_tokens)

    drafter = Drafter({"a": Draft([7] * 4, [1.0] * 4), "b": Draft([8], [0.5]), "c": Draft([9], [0.2])})
    best = BestOfProposer((ngram, drafter), enough=2.0)
    assert best.propose([Req("a"), Req("b"), Req("c")], [4, 3, 2]) == [sure, weak, drafter.drafts["c"]]
    assert asked == [(["b", "c"], [3, 2])]  # "a" was sure enough; "b" ties and keeps the n-gram draft
    asked.clear()
    best.propose([Req("a")], [4])
    assert asked == []  # nothing left for the drafter: it does not run


def test_best_of_refuses_two_feature_consumers():
    with pytest.raises(ValueError, match="at most one"):
        BestOfProposer((FixedProposer({}, capture_layers=(1,)), FixedProposer({}, capture_layers=(2,))))


def test_backoff_doubles_while_nothing_is_verified_and_resets():
    b = ProposalBackoff(max_skip=4)
    skipped = []
    for _ in range(12):
        if b.should_skip(16):
            skipped.append(True)
            continue
        skipped.append(False)
        b.record(16, False)  # proposed, did not pay
    # propose, skip 1, propose, skip 2, propose, skip 4, propose, skip 4 (capped)
    assert skipped == [False, True, False, True, True, False, True, True, True, True, False, True]
    assert b.should_skip(16) and not b.should_skip(8)  # a smaller batch proposes again at once
    b.record(8, True)
    assert not b.should_skip(16)  # drafts were verified: no more skipping


def test_backoff_probes_a_few_requests_at_a_time_until_proposing_pays():
    b = ProposalBackoff(probe_size=4)
    assert b.offered(16) == list(range(16))  # not backing off: everyone
    b.record(16, False)
    assert b.offered(16) == [0, 1, 2, 3] and b.offered(16) == [4, 5, 6, 7]
    assert b.offered(6) == [2, 3, 4, 5] and b.offered(3) == [0, 1, 2]  # the next ones; a small batch: all
    b.record(16, True, probe=True)  # a probe that pays buys a trial: everyone, the backoff still on
    assert b.offered(16) == list(range(16)) and b.span == 1
    b.record(16, False)  # the trial did not pay: back off longer, probe again
    assert b.span == 2 and b.offered(16) == [12, 13, 14, 15]
    b.record(16, False, probe=True)
    assert b.span == 4 and not b.trial
    b.record(16, True, probe=True)
    b.record(16, True)  # the trial paid: the backoff is over
    assert b.span == 0 and b.offered(16) == list(range(16))


def test_worker_offers_only_the_probe_after_a_round_that_did_not_pay():
    """Drafting never pays (0.1 us target steps): the first round offers all 6 requests, the rounds that
    propose after it offer 4 of them, the next 4 each time."""

    @dataclass
    class RecordingProposer(FixedProposer):
        offered: list[list[str]] = field(default_factory=list)

        def propose(self, reqs, num_tokens):
            self.offered.append([r.rid for r in reqs])
            return super().propose(reqs, num_tokens)

    rids = [f"r{i}" for i in range(6)]
    proposer = RecordingProposer({r: Draft([1, 2], [0.9, 0.9]) for r in rids})
    worker = SpecWorker(proposer, 2, vocab_size=8, policy=FixedVerify(), sps=SPSTable((1, 64), (1e7, 1e7)))
    for _ in range(6):
        worker.draft([Req(r) for r in rids], [4] * 6)
    assert proposer.offered == [rids, rids[:4], rids[4:] + rids[:2]]  # propose, skip 1, probe, skip 2, probe
    worker.observe_round(6, tokens=6, seconds=0.1)  # a probe's round is measured as neither kind
    assert worker.throughput.counts == {}
    worker.draft([Req(r) for r in rids], [4] * 6)  # skipped
    worker.observe_round(6, tokens=6, seconds=0.1)
    assert worker.throughput.counts == {(4, False): 1}


@pytest.mark.parametrize("steps_per_sec, skips", [(1.0, False), (1e7, True)])
def test_worker_backs_off_when_drafting_costs_more_than_it_gains(steps_per_sec, skips):
    """With a target step of 0.1 us no drafting pays (it takes longer than that); at 1 s every draft does."""
    sps = SPSTable((1, 64), (steps_per_sec, steps_per_sec))
    proposer = FixedProposer({"a": Draft([1, 2], [0.9, 0.9])})
    worker = SpecWorker(proposer, 2, vocab_size=8, policy=FixedVerify(), sps=sps)
    assert worker.draft([Req("a")], [4]) == [[1, 2]]  # verified either way: drafting already happened
    assert worker.draft([Req("a")], [4]) == ([[]] if skips else [[1, 2]])


@pytest.mark.parametrize(
    "switches, skips",
    [({}, True), ({"backoff": False}, False), ({"drafting_pays": False}, False)],
    ids=["default", "no-backoff", "no-cost-model"],
)
def test_switching_the_backoff_or_its_cost_model_off_keeps_proposing(switches, skips):
    """A target step of 0.1 us: by the cost model no drafting pays, so the default backs off."""
    sps = SPSTable((1, 64), (1e7, 1e7))
    proposer = FixedProposer({"a": Draft([1, 2], [0.9, 0.9])})
    worker = SpecWorker(proposer, 2, vocab_size=8, policy=FixedVerify(), sps=sps, config=SpecConfig(**switches))
    assert worker.draft([Req("a")], [4]) == [[1, 2]]
    assert worker.draft([Req("a")], [4]) == ([[]] if skips else [[1, 2]])


def test_round_throughput_compares_measured_rates_per_batch_bucket():
    t = RoundThroughput(min_rounds=3)
    for _ in range(3):
        t.observe(16, tokens=16, seconds=0.030, proposed=False)  # 533 tokens/s plain
        t.observe(18, tokens=19, seconds=0.040, proposed=True)  # 475 tokens/s proposing, same bucket (16-31)
    assert t.proposing_loses(16) and t.proposing_loses(31)
    assert not t.proposing_loses(8) and not t.proposing_loses(32)  # no measurements there
    t.observe(4, tokens=9, seconds=0.02, proposed=True)
    assert not t.proposing_loses(4)  # too few rounds to compare
    for _ in range(20):  # proposing gets faster: the moving average follows
        t.observe(16, tokens=30, seconds=0.040, proposed=True)
    assert not t.proposing_loses(16)


def test_worker_backs_off_where_proposing_rounds_measure_slower():
    """The SPS model says every draft pays (1 s steps), but measured rounds with drafts were slower."""
    sps = SPSTable((1, 64), (1.0, 1.0))
    worker = SpecWorker(FixedProposer({"a": Draft([1, 2], [0.9, 0.9])}), 2, vocab_size=8, policy=FixedVerify(), sps=sps)
    for proposed in (False, True) * 8:
        worker.proposed = proposed
        worker.observe_round(1, tokens=2 if proposed else 1, seconds=0.05 if proposed else 0.02)
    assert worker.draft([Req("a")], [4]) == [[1, 2]]  # verified: drafting already happened
    assert worker.draft([Req("a")], [4]) == [[]] and not worker.proposed  # then it backs off
    # measured faster: proposing pays again
    for proposed in (False, True) * 40:
        worker.proposed = proposed
        worker.observe_round(1, tokens=3 if proposed else 1, seconds=0.02)
    assert worker.draft([Req("a")], [4]) == [[1, 2]] and worker.draft([Req("a")], [4]) == [[1, 2]]


def test_proposer_gate_runs_below_min_gain_only_to_explore():
    gate = ProposerGate(min_gain=0.3, explore_every=4, weight=0.5)
    assert gate.quota("json") is None  # nothing measured yet: every request
    gate.observe("json", 0.1)
    gate.observe("code", 0.6)
    assert [gate.quota("json") for _ in range(8)] == [0, 0, 0, 1] * 2
    assert all(gate.quota("code") is None for _ in range(4))
    gate.observe("json", 0.9)  # (0.1 + 0.9) / 2 = 0.5: worth running again
    assert gate.gains["json"] == pytest.approx(0.5) and gate.quota("json") is None


def test_proposer_gate_weighs_the_gain_against_the_drafting_cost():
    """A request's drafting costs its seconds times the rounds' tokens/s: a gain above min_gain but below
    that cost only explores; when rounds get slower (fewer tokens/s) the same gain pays again."""
    gate = ProposerGate(min_gain=0.3, explore_every=4, weight=1.0)
    gate.observe("json", 0.5)
    gate.observe_round(tokens=12, seconds=0.03)
    assert gate.cost("json") == 0.0 and gate.quota("json") is None  # drafting time not measured yet
    gate.observe("json", 0.5, seconds=0.004)  # 4 ms per request at 400 tokens/s: 1.6 tokens
    assert gate.cost("json") == pytest.approx(1.6)
    assert [gate.quota("json") for _ in range(4)] == [0, 0, 0, 1]
    gate.observe_round(tokens=3, seconds=0.03)  # 100 tokens/s: 0.4 tokens
    assert gate.quota("json") is None


def test_worker_tells_the_gate_each_rounds_tokens_per_second():
    gate = ProposerGate(weight=1.0)
    worker = SpecWorker(FixedProposer({}), 4, 16, FixedVerify(), gate=gate)
    worker.observe_round(2, tokens=6, seconds=0.02)
    assert gate.token_rate == pytest.approx(300.0)


@dataclass
class GrammarReq:
    rid: str
    grammar: object | None = None


def test_best_of_gate_keeps_the_drafter_for_the_kinds_of_requests_where_it_adds_drafts():
    """Plain requests: the drafter's drafts beat the n-gram's (gain 0.9 - 0.5); grammar requests: they add
    nothing, so after the first call the drafter is asked for plain requests only (and for one grammar
    request in every explore_every-th call)."""
    ngram = FixedProposer({"p": Draft([1], [0.5]), "g": Draft([2], [0.5])})
    asked = []

    @dataclass
    class Drafter(FixedProposer):
        def propose(self, reqs, num_tokens):
            asked.append([r.rid for r in reqs])
            return super().propose(reqs, num_tokens)

    drafter = Drafter({"p": Draft([3], [0.9]), "g": Draft([4], [0.2]), "g2": Draft([5], [0.2])})
    ngram.drafts["g2"] = Draft([6], [0.5])
    timed = []  # per call: the kinds whose drafting time per request was observed

    class TimedGate(ProposerGate):
        def observe(self, kind, gain, seconds=None):
            if seconds is not None:
                timed[-1].append(kind)
            super().observe(kind, gain, seconds)

    best = BestOfProposer((ngram, drafter), enough=2.0, gate=TimedGate(min_gain=0.3, explore_every=3))
    reqs = [GrammarReq("p"), GrammarReq("g", grammar=object()), GrammarReq("g2", grammar=object())]
    for _ in range(4):
        timed.append([])
        assert best.propose(reqs, [4, 4, 4]) == [drafter.drafts["p"], ngram.drafts["g"], ngram.drafts["g2"]]
    assert asked == [["p", "g", "g2"], ["p"], ["p"], ["p", "g"]]  # exploring: one grammar request
    # an exploring request's share of the call is not the drafting cost of its kind
    assert timed == [[(1, False), (1, True), (1, True)], [(1, False)], [(1, False)], [(1, False)]]
    assert all(v > 0 for v in best.gate.seconds.values())


class VerifyReq:
    def __init__(self, temperature: float):
        self.rid = f"t{temperature}"
        self.sampling_params = SamplingParams(temperature=temperature, max_new_tokens=16)
        self.origin_input_ids, self.output_ids = [1, 2], [3]
        self.generator = torch.Generator().manual_seed(0)
        self.grammar = None


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_verify_accepts_forced_drafts_as_given(temperature):
    """Draft 1 is forced (plain decoding would append it without sampling): accepted although the target
    puts (almost) no mass on it; draft 2 is then verified as usual and rejected, its row's token sampled."""
    worker = SpecWorker(FixedProposer({}), 4, vocab_size=8, policy=FixedVerify())
    logits = torch.full((4, 8), -30.0)
    logits[torch.arange(4), torch.tensor([5, 2, 4, 7])] = 30.0  # target: 5, then 2 (not the forced 6), 4, 7
    drafts = [5, 6, 1]
    (plain,) = worker.verify([VerifyReq(temperature)], [drafts], logits.clone())
    (forced,) = worker.verify([VerifyReq(temperature)], [drafts], logits.clone(), [[1]])
    assert plain == [5, 2]
    assert forced == [5, 6, 4]


def test_greedy_verdict_on_the_host_matches_the_greedy_kernel():
    """Plain greedy requests are verified from each verify row's argmax on the host (verify._greedy_verdict):
    the same accepted lengths and next tokens as the greedy kernel over the padded tensors."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        lens = torch.randint(0, 5, (4,), generator=gen).tolist()
        argmax = torch.randint(0, 3, (sum(lens) + 4,), generator=gen)  # few ids: drafts often match
        drafts = [torch.randint(0, 3, (n,), generator=gen).tolist() for n in lens]
        K = max(lens)
        tokens = torch.zeros(4, max(K, 1), dtype=torch.int64)
        rows = torch.zeros(4, K + 1, dtype=torch.int64)
        start = 0
        for b, d in enumerate(drafts):
            tokens[b, : len(d)] = torch.tensor(d, dtype=torch.int64)
            rows[b] = start + torch.arange(K + 1).clamp(max=len(d))
            start += len(d) + 1
        accept, nxt = greedy_accept_lengths(tokens[:, :K], torch.tensor(lens), argmax[rows])
        got = _greedy_verdict(drafts, [[] for _ in drafts], argmax.tolist())
        assert got.accepted == accept.tolist() and got.next_tokens == nxt.tolist()
