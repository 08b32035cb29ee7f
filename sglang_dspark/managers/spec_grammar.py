"""The grammar steps of a speculative round, in the round's order, for requests with a regex / JSON schema /
EBNF: cut each draft where the grammar rejects it (carrying the tokens it forces), mask each verify row by
the grammar state after the drafts before it, and advance over the committed tokens, then jump forward.
Verification then accepts exactly what masked plain decoding would produce."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglang_dspark.grammar import allocate_bitmask
from sglang_dspark.grammar.mask import apply_bitmask_
from sglang_dspark.managers.grammar_manager import GrammarManager
from sglang_dspark.managers.schedule_batch import Req


@dataclass
class VerifyDraft:
    """A request's tokens to verify after its anchor in this round."""

    tokens: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # indices of tokens the grammar forces (accepted as given)


class SpecGrammar:
    def __init__(self, grammars: GrammarManager) -> None:
        self.grammars = grammars

    def mask_draft_logits(self, reqs: list[Req], drafts: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        """In place: logits [sum(len(d) + 1), V], rows of each request's anchor + drafts in order; the row
        after drafts[:i] gets the mask of the grammar state after them. Drafts must be grammar-valid
        (see valid_draft). Returns logits."""
        starts, rows, grammars, chains = 0, [], [], []
        for req, d in zip(reqs, drafts, strict=True):
            if req.grammar is not None:
                rows.append(starts)
                grammars.append(req.grammar)
                chains.append(d)
            starts += len(d) + 1
        if grammars:
            bitmask = allocate_bitmask(logits.shape[0], self.grammars.vocab_size)  # [T, W]
            filled = self.grammars.compiler.backend.fill_draft_masks(grammars, chains, bitmask, rows)
            masked = [r + i for r, n in zip(rows, filled, strict=True) for i in range(n)]
            apply_bitmask_(logits, bitmask, masked)
        return logits

    def valid_draft(self, req: Req, draft: list[int], limit: int) -> VerifyDraft:
        """The tokens to verify, at most ``limit``, and the indices among them that the grammar forces: the
        longest prefix of draft that req's grammar accepts (all of it without a grammar). When jump-forward
        is on and the grammar forces tokens after a draft token, plain decoding appends the forced
        tokenization there instead of sampling: those tokens follow in the draft (verify accepts them as
        given, see SpecWorker.verify) and the draft goes on only if its next tokens are exactly them. If
        they do not fit in ``limit``, or the grammar ends after them, the draft stops before the token that
        forces them (its verify row would sample where plain decoding forces)."""
        grammar = req.grammar
        if grammar is None:
            return VerifyDraft(draft[:limit])
        jump = self.grammars.jumps_forward(req)
        out: list[int] = []
        forced: list[int] = []
        walked = i = 0  # tokens the grammar accepted (to roll back); next draft token
        while i < len(draft) and len(out) < limit:
            if grammar.is_terminated() or not grammar.accept_token(draft[i]):
                break
            walked += 1
            out.append(draft[i])
            i += 1
            run = grammar.jump_forward_tokens() if jump and not grammar.is_terminated() else []
            if not run:
                continue
            accepted = grammar.accept_tokens(run) if len(out) + len(run) <= limit else 0
            walked += accepted
            if accepted < len(run) or grammar.is_terminated():
                out.pop()
                break
            forced += range(len(out), len(out) + len(run))
            out += run
            if draft[i : i + len(run)] != run:
                break
            i += len(run)
        if walked:
            grammar.rollback(walked)
        return VerifyDraft(out, forced)

    def commit(self, req: Req, token: int) -> None:
        """Advance req's grammar by a committed token (finishes req where the grammar terminates)."""
        if req.grammar is not None:
            self.grammars.accept(req, token)

    def jump_forward(self, req: Req) -> int:
        """After a round's commit: append the tokens req's grammar forces (their KV comes with the next
        extend); returns how many."""
        if req.grammar is None or req.finished:
            return 0
        n = len(req.output_ids)
        self.grammars.jump_forward(req)
        return len(req.output_ids) - n
