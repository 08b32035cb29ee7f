"""Build the speculative worker the server flags ask for (or None without --speculative-algorithm)."""

from __future__ import annotations

import logging

import torch

from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.model_executor.sequence_forward import SequenceRunner
from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.planner import SPSTable, profile_sps
from sglang_dspark.speculative.spec_worker import SpecWorker

logger = logging.getLogger(__name__)

SPS_PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64)
SPS_PROBE_CONTEXT = 256  # tokens of cached context behind each probe, like a running request


def profile_runner_sps(runner: ModelRunner, sizes: tuple[int, ...] = SPS_PROBE_SIZES) -> SPSTable:
    """SPS(B): target forwards per second extending B tokens on top of a cached context."""
    seq = SequenceRunner(runner.model, rows=1, max_tokens=SPS_PROBE_CONTEXT + 8 * max(sizes))
    seq.extend({0: [1] * SPS_PROBE_CONTEXT})

    def forward(size: int) -> None:
        seq.extend({0: [1] * size}, logits_positions={0: list(range(size))})
        seq.lens[0] -= size  # drop the probe again: every call extends the same context
        seq.next_slot -= size

    measured = profile_sps(forward, sizes, repeats=3)
    # a bigger batch never runs faster: noise from other tenants must not invert the table
    step_times = torch.tensor([1.0 / v for v in measured.steps_per_sec]).cummax(0).values
    return SPSTable(measured.batch_tokens, tuple((1.0 / step_times).tolist()))


def build_spec_worker(args: ServerArgs, runner: ModelRunner) -> SpecWorker | None:
    algo = args.speculative_algorithm
    if algo is None:
        return None
    if algo != "NGRAM":
        raise ValueError(f"--speculative-algorithm {algo} is not available yet; use NGRAM")
    if args.speculative_dspark_sps_table_path:
        sps = SPSTable.load(args.speculative_dspark_sps_table_path)
    else:
        sps = profile_runner_sps(runner)
        logger.info("profiled SPS(B): %s", dict(zip(sps.batch_tokens, (round(v, 1) for v in sps.steps_per_sec))))
    return SpecWorker(args.speculative_num_draft_tokens, runner.vocab_size, sps)
