"""SELF proposer: training-free self-drafting with the target's own first k decoder layers, its final norm
and its LM head (no extra weights, any target the day it is loaded).

The proposer shares the target's ModelRunner: its weights, its KV pool and its request table. The KV of a
request's committed tokens at layers < k is already in the pool (the target wrote it in prefill and
verify), so a round only runs layers < k over the new tokens: first the request's tokens without KV (the
anchor, after any grammar-forced tokens jump-forward appended), then each drafted token, one batched
truncated forward per step (stepwise_draft.py). A drafted token costs about k/L of a decode step.

The new tokens' KV goes to temporary slots from the target's allocator, recorded in the request's row past
its committed length (``kv_len``); every one is freed before ``propose`` returns, whatever happens. The
target's bookkeeping is then as it was: the row's entries from ``kv_len`` on are not part of the request
(the scheduler writes the slots of the verified tokens there next), the radix cache is never touched (no
eviction: with too few free slots drafting stops early), and the allocator holds the same free slots.
"""

from __future__ import annotations

import torch

from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.speculative.draft import Draft, SpecRequest, draft_temperature, seeded_generator
from sglang_dspark.speculative.stepwise_draft import draft_stepwise, extend_rows

DEFAULT_SELF_DRAFT_TOKENS = 4  # one truncated step per drafted token


def check_self_draft_layers(num_layers: int, target_layers: int) -> None:
    """Raise a ValueError unless 1 <= num_layers < target_layers (all of them would be the target itself)."""
    if not 1 <= num_layers < target_layers:
        raise ValueError(
            f"--speculative-self-draft-layers {num_layers} must be in [1, {target_layers - 1}]: "
            f"the target has {target_layers} decoder layers and SELF drafts with fewer of them"
        )


class SelfDraftProposer:
    capture_layers: tuple[int, ...] = ()

    def __init__(
        self,
        runner: ModelRunner,
        num_layers: int,
        max_tokens: int = DEFAULT_SELF_DRAFT_TOKENS,
        seed: int | None = None,
    ) -> None:
        """num_layers: the target's decoder layers drafting runs (k); max_tokens: drafts per request and
        round at most (each one a truncated step)."""
        check_self_draft_layers(num_layers, runner.config.num_layers)
        self.runner = runner
        self.num_layers = num_layers
        self.max_tokens = max_tokens
        self.generator = seeded_generator(seed, runner.device)

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        drafts = [Draft([], []) for _ in reqs]
        width = self.runner.req_to_token_pool.max_context_len
        contexts = {i: r.origin_input_ids + r.output_ids for i, r in enumerate(reqs)}
        # the last drafted token is not run: positions up to len(context) + n - 2 must fit the row
        wanted = {i: min(n, self.max_tokens, width - len(contexts[i])) for i, n in enumerate(num_tokens)}
        active = [i for i, n in wanted.items() if n > 0]
        if not active:
            return drafts
        lengths = {i: reqs[i].kv_len for i in active}  # positions with KV at layers < k
        rows = {i: reqs[i].req_pool_idx for i in active}
        held: list[torch.Tensor] = []  # the temporary slots of this round

        def extend(chunks: dict[int, list[int]]) -> torch.Tensor | None:
            out = extend_rows(
                self.runner,
                [rows[i] for i in chunks],
                [lengths[i] for i in chunks],
                list(chunks.values()),
                self.num_layers,
            )
            if out is None:
                return None
            held.append(out.slots)
            for i, chunk in chunks.items():
                lengths[i] += len(chunk)
            return out.logits

        try:
            made = draft_stepwise(
                extend,
                {i: contexts[i][lengths[i] :] for i in active},
                {i: wanted[i] for i in active},
                {i: draft_temperature(reqs[i]) for i in active},
                self.generator,
                "self",
            )
        finally:
            for slots in held:
                self.runner.token_allocator.free(slots)
        for i in active:
            drafts[i] = made[i]
        return drafts

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        raise RuntimeError("the self-drafting proposer captures no hidden states")

    def release(self, rid: str) -> None:
        """Nothing to release: a round keeps no state past ``propose``."""

    def request_states(self) -> int:
        return 0
