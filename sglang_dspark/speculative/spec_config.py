"""SpecConfig: the knobs of speculative decoding, each with what it trades.

Every adaptive mechanism has a switch (off = the mechanism is skipped, the output never changes: every
setting is lossless) and its constants here, nowhere else. ``--speculative-config`` takes a JSON object of
overrides, e.g. ``'{"backoff": false}'``; benchmarks/results/spec_ablation.md measures each switch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from sglang_dspark.server_args import ServerArgs

DEFAULT_NUM_DRAFT_TOKENS = 8


@dataclass(frozen=True)
class SpecConfig:
    # proposing
    # drafts per request and round (None: 8, DSPARK at least its block, STANDALONE 4): longer accepted runs vs wider
    # verify forwards
    num_draft_tokens: int | None = None
    ngram_min_n: int = 1  # shortest suffix matched: more drafts, fewer of them right
    ngram_max_n: int = 4  # longest suffix matched: sharper matches, more index memory per request
    radix_confidence: float = 0.9  # prior confidence of a radix-cached continuation (online calibration corrects it)
    # DSPARK: an n-gram draft expecting this many accepted drafts skips the drafter: drafting time vs a better draft
    ngram_enough: float = 2.0
    # ProposerGate: runs the drafter only for the kinds of requests (grammar or not) where it adds more than it costs
    gate: bool = True
    gate_min_gain: float = 0.3  # expected accepted drafts the drafter must add per request: drafting time vs acceptance
    gate_explore_every: int = 8  # a gated kind drafts one request every this many calls: probe cost vs staleness
    gate_weight: float = 0.05  # of the newest sample in the gate's moving averages: reaction speed vs noise
    # ProposalBackoff: skips proposing for 1, 2, 4 .. rounds when a round's proposals did not pay
    backoff: bool = True
    backoff_max_skip: int = 16  # longest skip: time lost drafting in vain vs rounds missed when drafting pays again
    backoff_probe_size: int = 4  # requests a probe round drafts for while backing off: probe cost vs signal
    drafting_pays: bool = True  # a round modelled (SPS, drafting time) slower than plain decoding did not pay
    round_throughput: bool = True  # proposing rounds measured slower than plain ones (per batch size) did not pay
    throughput_weight: float = 0.1  # of the newest round in the measured tokens/s: reaction speed vs noise
    throughput_min_rounds: int = 8  # rounds of each kind per batch size before the measurement counts
    # verify length (see verify_policy.py): adaptive | async | fixed | threshold
    verify_mode: str = "adaptive"
    verify_threshold: float = 0.5  # survival cut-off of the threshold mode
    # confidences
    online_calibration: bool = True  # plan on acceptance observed so far instead of the proposers' raw confidences
    calibration_bins: int = 10  # raw-confidence bins: resolution vs samples per bin
    calibration_max_position: int = 8  # draft positions with their own statistics (later ones share the last)
    calibration_prior_weight: float = 4.0  # observations the raw confidence is worth: trust in the proposer vs data
    calibration_memory: float = 256.0  # a bin's counts halve at this many drafts: follows workload changes vs noise
    sts: bool = True  # calibrate the drafter's confidence head with its STS file (sts_greedy.json / sts_t1.json)

    @classmethod
    def from_server_args(cls, args: ServerArgs) -> SpecConfig:
        """The flags, then ``--speculative-config`` overrides (a JSON object of field names)."""
        config = cls(
            num_draft_tokens=args.speculative_num_draft_tokens,
            verify_mode=args.speculative_dspark_verify_mode,
            verify_threshold=args.speculative_dspark_verify_threshold,
            online_calibration=not args.speculative_dspark_disable_online_calibration,
        )
        if not args.speculative_config:
            return config
        overrides = json.loads(args.speculative_config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names) if isinstance(overrides, dict) else ["(not an object)"]
        if unknown:
            raise ValueError(f"--speculative-config: unknown fields {unknown}; known: {sorted(names)}")
        return dataclasses.replace(config, **overrides)
