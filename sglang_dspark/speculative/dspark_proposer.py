"""DSpark proposer: drafts from the DSpark drafter, conditioned on the target's hidden states.

Every target forward captures the hidden states of the drafter's `target_layer_ids`; `store_features`
keeps them by KV slot, so a token's features live exactly as long as its KV, including radix-cached
prefixes that another request computed. Before drafting, each request's `DrafterState` is extended
with the features of its newly committed positions only (the slots of positions state.length ..
anchor - 1): a rejected draft's slot lies past the committed length, is freed and never read.

A grammar request whose jump-forward appended forced tokens runs them with this round's verify, so their
features do not exist yet: it drafts from the last token before them (the block's first slots predict the
forced tokens, which the Markov head is fed as if drafted) and proposes the slots after them.

Drafts are greedy (one-hot p_d) for greedy requests and for grammar requests; other requests sample
at their temperature and hand the drafter's distributions to rejection sampling. Grammar requests draft
under their grammar (docs/design.md "Grammar-aware drafting"): each sequential step of the Markov head is
masked by the state of a fork of the request's grammar after the tokens drafted before it, and a token the
grammar forces (the only one allowed) gets confidence 1, since the masked target must pick it too. (The
scheduler still cuts a draft after the grammar terminates.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.grammar.base import allocate_bitmask
from sglang_dspark.grammar.mask import allowed_from_bitmask
from sglang_dspark.speculative.draft import Draft, SpecRequest, draft_temperature, seeded_generator
from sglang_dspark.speculative.dspark import DrafterState, DSparkDrafter
from sglang_dspark.speculative.sts import STSCalibration


@dataclass(frozen=True)
class ConfidenceCalibration:
    """STS of the confidences of greedy and of sampled drafts; None = raw sigmoid."""

    greedy: STSCalibration | None = None
    sampling: STSCalibration | None = None

    def __call__(self, logits: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """logits [R, G] pre-sigmoid, sampled [R] bool -> confidences [R, G] fp32."""

        def calibrate(sts: STSCalibration | None) -> torch.Tensor:
            return torch.sigmoid(logits.float()) if sts is None else sts(logits)

        if not bool(sampled.any()):  # one calibration for a batch of one kind
            return calibrate(self.greedy)
        if bool(sampled.all()):
            return calibrate(self.sampling)
        return torch.where(sampled[:, None], calibrate(self.sampling), calibrate(self.greedy))


class DSparkProposer:
    def __init__(
        self,
        drafter: DSparkDrafter,
        req_to_token: torch.Tensor,
        num_slots: int,
        calibration: ConfidenceCalibration,
        seed: int | None = None,
    ) -> None:
        cfg = drafter.config
        self.drafter = drafter
        self.req_to_token = req_to_token  # [rows, context] KV slot of every (request, position)
        self.capture_layers = cfg.target_layer_ids
        self.device = req_to_token.device  # the target's, where the drafter runs too
        width = len(cfg.target_layer_ids) * cfg.hidden_size
        self.features = torch.zeros(num_slots, width, dtype=drafter.dtype, device=self.device)
        self.calibration = calibration
        self.states: dict[str, DrafterState] = {}
        self.generator = seeded_generator(seed, self.device)

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        """hidden_states: one [N, d] per capture layer of a target forward; slots [N] its tokens' KV slots."""
        self.features[slots] = torch.cat(hidden_states, dim=-1).to(self.features.dtype)  # [N, m*d]

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        """Up to num_tokens[i] (at most the block size less the forced tokens) drafts per request, one batch."""
        cfg = self.drafter.config
        drafts = [Draft([], []) for _ in reqs]
        # the block starts at the last token with features before it (kv_len) and its positions must have
        # RoPE entries; forced tokens after it take the block's first slots, at least one slot must be left
        forced_of = [_forced_tokens(r) for r in reqs]
        active = [
            i
            for i, (r, n) in enumerate(zip(reqs, num_tokens))
            if n > 0 and len(forced_of[i]) < cfg.block_size and r.kv_len + cfg.block_size <= cfg.max_position_embeddings
        ]
        if not active:
            return drafts
        batch = [reqs[i] for i in active]
        forced = [forced_of[i] for i in active]
        states = self._extend_context(batch)
        anchors = torch.tensor([_token_at(r, r.kv_len) for r in batch], device=self.device)  # [R]
        positions = torch.tensor([r.kv_len for r in batch], device=self.device)  # [R]
        temps = torch.tensor([draft_temperature(r) for r in batch], device=self.device)  # [R], 0 = greedy
        walk = DraftGrammarWalk(batch, cfg.vocab_size, cfg.block_size, forced)
        mask_fn = walk if walk.active else None
        out = self.drafter.draft(states, anchors, positions, temps, mask_fn=mask_fn, generator=self.generator)
        sampled = temps > 0  # [R]
        if out.confidence_logits is None:  # no confidence head (DFlash): offer the whole block
            conf = torch.ones(out.tokens.shape, device=self.device)  # [R, G]
        else:
            conf = self.calibration(out.confidence_logits, sampled)  # [R, G]
        if walk.active:
            conf = conf.masked_fill(walk.forced.to(self.device), 1.0)
        for j, i in enumerate(active):
            lo = len(forced[j])
            hi = lo + min(num_tokens[i], cfg.block_size - lo)
            probs = out.probs[j, lo:hi] if sampled[j] else None  # [n, V]
            source = "dspark" if probs is None else "dspark/sampled"
            drafts[i] = Draft(out.tokens[j, lo:hi].tolist(), conf[j, lo:hi].tolist(), probs, source)
        return drafts

    def _extend_context(self, reqs: list[SpecRequest]) -> list[DrafterState]:
        """Append the stored features of each request's committed positions not yet in its state."""
        states, grow, feats, positions = [], [], [], []
        for r in reqs:
            state = self.states.setdefault(r.rid, DrafterState())
            states.append(state)
            end = r.kv_len  # positions before the block's first token
            if state.length < end:
                slots = self.req_to_token[r.req_pool_idx, state.length : end]  # [n]
                grow.append(state)
                feats.append(self.features[slots])  # [n, m*d]
                positions.append(torch.arange(state.length, end, device=self.device))  # [n]
        if grow:
            self.drafter.append_context(grow, feats, positions)
        return states

    def release(self, rid: str) -> None:
        self.states.pop(rid, None)

    def request_states(self) -> int:
        return len(self.states)


class DraftGrammarWalk:
    """The drafter's MaskFn for a batch: the grammar requests' allowed tokens at each draft step.

    Row r's first len(forced[r]) steps allow exactly those tokens (grammar-forced tokens already committed
    and accepted by the request's grammar); each later step of a grammar request gets the mask of a fork of
    its grammar (the request's own state is never touched) walked along the tokens drafted after them. Where
    a drafted token makes the grammar force tokens (jump-forward), the next steps allow exactly that forced
    tokenization, the one plain decoding appends and the scheduler's valid_draft carries, so the draft goes
    on after it. Rows without a grammar, or whose fork terminated, are unconstrained (the scheduler cuts
    those drafts). ``forced[r, k]``: step k of row r allowed exactly one token."""

    def __init__(
        self, reqs: list[SpecRequest], vocab_size: int, block_size: int, forced: list[list[int]] | None = None
    ) -> None:
        self.vocab_size = vocab_size
        self.prefixes = {i: p for i, p in enumerate(forced or []) if p}
        self.forks = {i: r.grammar.fork() for i, r in enumerate(reqs) if r.grammar is not None}
        self.runs: dict[int, list[int]] = {}  # row -> forced tokens still to come after a drafted token
        self.forced = torch.zeros(len(reqs), block_size, dtype=torch.bool)  # [R, G]

    @property
    def active(self) -> bool:
        return bool(self.forks) or bool(self.prefixes)

    def __call__(self, step: int, drafted: torch.Tensor) -> torch.Tensor:
        """drafted [R, step] -> allowed [R, V] bool."""
        bitmask = allocate_bitmask(drafted.shape[0], self.vocab_size)  # [R, W], all allowed
        pinned = {row: p[step] for row, p in self.prefixes.items() if step < len(p)}  # row -> its only token
        for row, grammar in list(self.forks.items()):
            start = len(self.prefixes.get(row, ()))
            if step < start:
                continue
            if step > start and not grammar.accept_token(int(drafted[row, step - 1])):
                del self.forks[row]  # cannot happen for a masked token unless the grammar ended
                continue
            if grammar.is_terminated():
                del self.forks[row]
                continue
            run = self.runs.get(row) or (grammar.jump_forward_tokens() if step > start else [])
            if run:
                pinned[row], self.runs[row] = run[0], run[1:]
            else:
                grammar.fill_mask(bitmask, row)
        allowed = allowed_from_bitmask(bitmask, self.vocab_size)  # [R, V]
        for row, token in pinned.items():
            allowed[row] = False
            allowed[row, token] = True
        rows = torch.tensor(sorted(set(self.forks) | set(pinned)), dtype=torch.int64)
        self.forced[rows, step] = torch.count_nonzero(allowed[rows], dim=1) == 1
        return allowed


def _forced_tokens(req: SpecRequest) -> list[int]:
    """The committed tokens after position kv_len (the block's first token): the grammar-forced tokens that
    run with this round's verify (none outside jump-forward)."""
    start, n = req.kv_len + 1, len(req.origin_input_ids)
    return req.output_ids[start - n :] if start >= n else req.origin_input_ids[start:] + req.output_ids


def _token_at(req: SpecRequest, position: int) -> int:
    n = len(req.origin_input_ids)
    return req.origin_input_ids[position] if position < n else req.output_ids[position - n]
