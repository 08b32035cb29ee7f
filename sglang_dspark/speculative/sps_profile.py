"""Measure SPS(B) of a model runner: target forwards per second over B flat tokens laid out as verify rounds.

B tokens become ceil(B / tokens_per_request) requests, each extending its own cached prefix of `context`
random tokens, through the attention path the runtime uses. The speculative worker profiles its table
this way at start-up; `python -m sglang_dspark.profile_sps` writes the same table to a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.model_executor.sequence_forward import SequenceRunner
from sglang_dspark.speculative.planner import SPSTable, profile_sps

SPS_PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64)
SPS_PROBE_CONTEXT = 256  # tokens of cached context behind each probe, like a running request


def verify_forward_fn(
    model,
    max_tokens: int,
    context: int,
    per_request: int,
    pool_attention: PoolAttentionFn | None = None,
    all_in_pool: bool = False,
) -> Callable[[int], None]:
    """-> forward_fn(B): one forward of B tokens spread over requests with `context`-token prefixes.
    pool_attention, all_in_pool: the attention the runtime uses (ModelRunner.attention)."""
    rows = math.ceil(max_tokens / per_request)
    runner = SequenceRunner(
        model, rows, rows * (context + per_request), context + per_request, pool_attention, all_in_pool
    )
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    runner.extend({r: torch.randint(0, vocab, (context,), generator=g).tolist() for r in range(rows)})
    prefix_slots = runner.next_slot

    def forward_fn(batch_tokens: int) -> None:
        chunks, left = {}, batch_tokens
        for r in range(math.ceil(batch_tokens / per_request)):
            chunks[r] = [1] * min(per_request, left)
            left -= len(chunks[r])
        logits, _ = runner.extend(chunks, logits_positions={r: list(range(len(c))) for r, c in chunks.items()})
        if logits.is_cuda:  # the forward's time, not its launches'
            torch.cuda.synchronize()
        for r in chunks:  # rewind so every call measures the same shape
            runner.lens[r] = context
        runner.next_slot = prefix_slots

    return forward_fn


def profile_runner_sps(
    runner: ModelRunner,
    tokens_per_request: int,
    sizes: tuple[int, ...] = SPS_PROBE_SIZES,
    context: int = SPS_PROBE_CONTEXT,
    repeats: int = 5,
) -> SPSTable:
    """SPS(B) for B in sizes: the median of `repeats` timed forwards each, made monotone (a bigger batch
    never runs faster, so noise from other processes cannot invert the table)."""
    attention = runner.attention  # the kernel the runtime attends with (SDPA stands in for FlashInfer)
    forward = verify_forward_fn(
        runner.model, max(sizes), context, tokens_per_request, attention.pool_attention, attention.all_in_pool
    )
    measured = profile_sps(forward, sizes, repeats=repeats)
    step_times = torch.tensor([1.0 / v for v in measured.steps_per_sec]).cummax(0).values
    return SPSTable(measured.batch_tokens, tuple((1.0 / step_times).tolist()))
