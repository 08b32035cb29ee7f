"""STANDALONE proposer: a separate small draft model with the target's tokenizer (classic speculative decoding).

The draft model runs in its own ModelRunner (own KV pool and request table). Each request keeps a draft
sequence whose KV covers its committed tokens: a round first extends it with the tokens committed since
the last round (the anchor included), then drafts k tokens one batched step at a time, then drops the
drafted tokens' KV again (next round's extend re-feeds the accepted ones, now committed). Greedy and
grammar requests draft greedily (deterministic drafts: the scheduler may cut them at the grammar);
sampling requests sample at their temperature and hand the draft distributions to rejection sampling.
The confidence of a draft is the draft model's probability of it.
"""

from __future__ import annotations

import torch

from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.speculative.draft import Draft, SpecRequest, draft_temperature


class StandaloneProposer:
    capture_layers: tuple[int, ...] = ()

    def __init__(self, runner: ModelRunner, seed: int | None = None) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}  # rid -> row of the draft request table
        self.lengths: dict[str, int] = {}  # rid -> tokens with draft KV
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        drafts = [Draft([], []) for _ in reqs]
        active = [i for i, n in enumerate(num_tokens) if n > 0 and self._row(reqs[i].rid) is not None]
        if not active:
            return drafts
        contexts = {i: reqs[i].origin_input_ids + reqs[i].output_ids for i in active}
        temps = torch.tensor([draft_temperature(reqs[i]) for i in active])  # [R], 0 = greedy
        chunks = {i: contexts[i][self.lengths[reqs[i].rid] :] for i in active}
        tokens, confs, probs = {i: [] for i in active}, {i: [] for i in active}, {i: [] for i in active}
        for step in range(max(num_tokens[i] for i in active)):
            logits = self._extend(reqs, chunks)  # [R', V], rows in chunks order
            if logits is None:  # the draft KV pool is full: keep what was drafted
                break
            rows = list(chunks)
            tok, p = _choose(logits, temps[[active.index(i) for i in rows]], self.generator)
            chunks = {}
            for j, i in enumerate(rows):
                tokens[i].append(int(tok[j]))
                confs[i].append(float(p[j, tok[j]]))
                probs[i].append(p[j])
                if step + 1 < num_tokens[i]:
                    chunks[i] = [int(tok[j])]
            if not chunks:
                break
        for i in active:
            rid = reqs[i].rid
            self._truncate(rid, min(self.lengths[rid], len(contexts[i])))  # drafted tokens' KV goes
            sampled = temps[active.index(i)] > 0
            q = torch.stack(probs[i]) if sampled and probs[i] else None
            drafts[i] = Draft(tokens[i], confs[i], q, "standalone" if q is None else "standalone/sampled")
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
        runner = self.runner
        table = runner.req_to_token_pool.req_to_token
        slots = runner.token_allocator.alloc(sum(len(c) for c in chunks.values()))
        if slots is None:
            return None
        ids, positions, rows, seq_lens, ext, last, at = [], [], [], [], [], [], 0
        for i, chunk in chunks.items():
            rid, n = reqs[i].rid, len(chunk)
            start = self.lengths[rid]
            table[self.rows[rid], start : start + n] = slots[at : at + n]
            self.lengths[rid] = start + n
            ids += chunk
            positions += range(start, start + n)
            rows.append(self.rows[rid])
            seq_lens.append(start + n)
            ext.append(n)
            at += n
            last.append(at - 1)
        fb = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            out_cache_loc=slots,
            req_pool_indices=torch.tensor(rows, dtype=torch.int64),
            seq_lens=seq_lens,
            extend_lens=ext,
            logits_indices=torch.tensor(last, dtype=torch.int64),
            kv_pool=runner.kv_pool,
            req_to_token=table,
        )
        return runner.forward(fb).logits.float()

    def _truncate(self, rid: str, length: int) -> None:
        row, old = self.rows[rid], self.lengths[rid]
        if length < old:
            self.runner.token_allocator.free(self.runner.req_to_token_pool.req_to_token[row, length:old].clone())
            self.lengths[rid] = length


def _choose(logits: torch.Tensor, temps: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V], temps [R] (0 = greedy) -> (tokens [R], draft distributions [R, V]). Greedy rows draw
    no random numbers; their distribution is the softmax at temperature 1 (its argmax prob = the confidence)."""
    greedy = temps <= 0
    probs = torch.softmax(logits / torch.where(greedy, 1.0, temps)[:, None], dim=-1)
    tokens = logits.argmax(dim=-1)
    if not greedy.all():
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tokens = torch.where(greedy, tokens, sampled)
    return tokens, probs
