"""STANDALONE proposer: a separate small draft model with the target's tokenizer (classic speculative decoding).

The draft model runs in its own ModelRunner (own KV pool and request table). Each request keeps a draft
sequence whose KV covers its committed tokens: a round first extends it with the tokens committed since
the last round (the anchor included), then drafts k tokens one batched step at a time, then drops the
drafted tokens' KV again (next round's extend re-feeds the accepted ones, now committed). How a token is
drafted and its confidence: stepwise_draft.py.
"""

from __future__ import annotations

import torch

from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.speculative.draft import Draft, SpecRequest, draft_temperature, seeded_generator
from sglang_dspark.speculative.stepwise_draft import draft_stepwise, extend_rows


class StandaloneProposer:
    capture_layers: tuple[int, ...] = ()

    def __init__(self, runner: ModelRunner, seed: int | None = None) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}  # rid -> row of the draft request table
        self.lengths: dict[str, int] = {}  # rid -> tokens with draft KV
        self.generator = seeded_generator(seed, runner.device)

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        drafts = [Draft([], []) for _ in reqs]
        active = [i for i, n in enumerate(num_tokens) if n > 0 and self._row(reqs[i].rid) is not None]
        if not active:
            return drafts
        contexts = {i: reqs[i].origin_input_ids + reqs[i].output_ids for i in active}
        made = draft_stepwise(
            lambda chunks: self._extend(reqs, chunks),
            {i: contexts[i][self.lengths[reqs[i].rid] :] for i in active},
            {i: num_tokens[i] for i in active},
            {i: draft_temperature(reqs[i]) for i in active},
            self.generator,
            "standalone",
        )
        for i in active:
            rid = reqs[i].rid
            self._truncate(rid, min(self.lengths[rid], len(contexts[i])))  # drafted tokens' KV goes
            drafts[i] = made[i]
        return drafts

    def request_states(self) -> int:
        return len(self.rows)

    def release(self, rid: str) -> None:
        if rid in self.rows:
            self._truncate(rid, 0)
            self.lengths.pop(rid)
            self.runner.req_to_token_pool.free(self.rows.pop(rid))

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        raise RuntimeError("the standalone proposer captures no hidden states")

    def kv_in_use(self) -> int:
        """Draft KV slots held by requests (0 once every request was released)."""
        allocator = self.runner.token_allocator
        return allocator.size - allocator.available_size()

    def _row(self, rid: str) -> int | None:
        if rid not in self.rows:
            row = self.runner.req_to_token_pool.alloc()
            if row is None:
                return None
            self.rows[rid], self.lengths[rid] = row, 0
        return self.rows[rid]

    def _extend(self, reqs: list[SpecRequest], chunks: dict[int, list[int]]) -> torch.Tensor | None:
        """One draft-model forward appending chunks[i] to request i's sequence -> logits [R', V] of each
        chunk's last token, or None if the KV pool cannot hold them."""
        rids = [reqs[i].rid for i in chunks]
        out = extend_rows(
            self.runner, [self.rows[r] for r in rids], [self.lengths[r] for r in rids], list(chunks.values())
        )
        if out is None:
            return None
        for rid, chunk in zip(rids, chunks.values()):
            self.lengths[rid] += len(chunk)
        return out.logits

    def _truncate(self, rid: str, length: int) -> None:
        row, old = self.rows[rid], self.lengths[rid]
        if length < old:
            table = self.runner.req_to_token_pool.req_to_token
            self.runner.token_allocator.free(table[row, length:old].to("cpu", copy=True))
            self.lengths[rid] = length
