"""N-gram / suffix proposer: draft the next tokens by matching the context's suffix against earlier text.

Each request keeps an ``NGramIndex`` of its own tokens (prompt + output), extended as tokens are
committed, so a proposal never rescans the context. ``propose`` tries suffix lengths n = max_n..min_n
and takes the longest one that occurred before, in the context or in extra corpora: static ones
indexed once, or a callable returning token sequences to search now (e.g. cached continuations from
the radix tree; a sequence must contain the tokens it shares with the context, which are what match).

The draft follows the continuations of all occurrences by majority vote, position by position (ties go
to the most recent occurrence, context before corpora). Confidence of draft j = votes for it / (the
occurrences still agreeing with drafts < j, + ``prior``): an estimate of P(draft j right | drafts < j
right), the planner's c[r, j]. Drafts are deterministic: verify them with one-hot p_d
(``rejection_sample(..., draft_probs=None, ...)``). For a grammar request the vote is masked (docs/design.md
"Grammar-aware drafting"): only tokens its grammar allows are voted for, and grammar-forced runs are drafted exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from sglang_dspark.mem_cache.radix_cache import RadixCache
from sglang_dspark.speculative.draft import Draft, SpecRequest

Corpora = Iterable["NGramIndex"] | Callable[[Sequence[int]], Iterable[Sequence[int]]]


@dataclass
class NGramIndex:
    """A token sequence and, for every n-gram in it (min_n <= n <= max_n), the positions right after
    each occurrence, oldest first."""

    min_n: int = 1
    max_n: int = 4
    tokens: list[int] = field(default_factory=list)
    follows: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")

    @classmethod
    def build(cls, tokens: Iterable[int], min_n: int = 1, max_n: int = 4) -> NGramIndex:
        index = cls(min_n, max_n)
        index.extend(tokens)
        return index

    def extend(self, new_tokens: Iterable[int]) -> None:
        """Append tokens: O(max_n - min_n + 1) dictionary updates each."""
        for token in new_tokens:
            self.tokens.append(int(token))
            end = len(self.tokens)
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.follows.setdefault(tuple(self.tokens[end - n : end]), []).append(end)

    def continuations(self, key: tuple[int, ...], length: int, limit: int) -> list[list[int]]:
        """The up to ``length`` tokens after each of the latest ``limit`` occurrences of ``key`` that are
        followed by something, most recent first."""
        out = []
        for pos in reversed(self.follows.get(key, ())):
            if pos < len(self.tokens):
                out.append(self.tokens[pos : pos + length])
                if len(out) == limit:
                    break
        return out


@dataclass(frozen=True)
class NGramProposal:
    tokens: list[int]  # [k] drafted token ids, k <= num_tokens
    confidences: list[float]  # [k] c[j] = P(draft j right | drafts < j right), estimated
    match_len: int  # n of the matched suffix, 0 when nothing matched


class DraftGrammar(Protocol):
    """What the vote uses of a request's grammar (it walks a fork; the request's own state is untouched)."""

    def fork(self) -> DraftGrammar: ...

    def accept_token(self, token: int) -> bool: ...

    def accept_tokens(self, tokens: Sequence[int]) -> int: ...

    def validate_tokens(self, tokens: Sequence[int]) -> int: ...

    def is_terminated(self) -> bool: ...

    def jump_forward_tokens(self) -> list[int]: ...


def _longest_match(
    sources: list[NGramIndex], suffix: Sequence[int], min_n: int, max_n: int, num_tokens: int, max_matches: int
) -> tuple[list[list[int]], int]:
    """The continuations of suffix's longest tail (max_n..min_n tokens) seen in sources, and its length."""
    for n in range(min(max_n, len(suffix)), min_n - 1, -1):
        key = tuple(suffix[len(suffix) - n :])
        found = [c for source in sources for c in source.continuations(key, num_tokens, max_matches)]
        if found:
            return found, n
    return [], 0


def _pick(votes: dict[int, int], prior: float, grammar: DraftGrammar | None) -> tuple[int | None, float]:
    """The most voted token (first among ties) that grammar accepts (advancing it), and its confidence:
    its votes / (the votes for tokens the grammar allows + prior)."""
    if grammar is None:
        token = max(votes, key=votes.__getitem__)
        return token, votes[token] / (sum(votes.values()) + prior)
    if grammar.is_terminated():
        return None, 0.0
    allowed = [t for t in sorted(votes, key=votes.__getitem__, reverse=True) if grammar.validate_tokens([t])]
    if not allowed:
        return None, 0.0
    grammar.accept_token(allowed[0])
    return allowed[0], votes[allowed[0]] / (sum(votes[t] for t in allowed) + prior)


def propose(
    context: NGramIndex,
    num_tokens: int,
    corpora: Corpora = (),
    max_matches: int = 64,
    prior: float = 1.0,
    grammar: DraftGrammar | None = None,
) -> NGramProposal:
    """Draft up to ``num_tokens`` tokens after ``context`` from its longest earlier-seen suffix.

    ``corpora``: ``NGramIndex``es (searched with the context's suffix), or a callable taking the context
    tokens and returning token sequences, indexed on the fly (cost linear in their length).
    ``max_matches`` caps the occurrences per source that vote; ``prior`` shrinks the confidences.
    ``grammar`` (the request's grammar; a fork of it is walked along the draft): each position takes the most
    voted token the grammar allows; where a drafted token makes the grammar force tokens (jump-forward),
    the draft carries exactly that forced tokenization (confidence 1, as the scheduler's valid_draft and
    plain decoding append it) and goes on with the continuations that agree with it, or with a new
    suffix match after it when none does.
    """
    if callable(corpora):
        corpora = [NGramIndex.build(seq, context.min_n, context.max_n) for seq in corpora(context.tokens)]
    sources = [context, *corpora]
    tail = context.tokens[-context.max_n :]
    alive, match_len = _longest_match(sources, tail, context.min_n, context.max_n, num_tokens, max_matches)
    tokens: list[int] = []
    confidences: list[float] = []
    grammar = grammar.fork() if grammar is not None and alive else None  # forked only when there is a vote
    while alive and len(tokens) < num_tokens:
        votes: dict[int, int] = {}
        for c in alive:
            votes[c[0]] = votes.get(c[0], 0) + 1
        token, confidence = _pick(votes, prior, grammar)
        if token is None:
            break
        tokens.append(token)
        confidences.append(confidence)
        alive = [c[1:] for c in alive if c[0] == token and len(c) > 1]
        run = grammar.jump_forward_tokens() if grammar is not None and not grammar.is_terminated() else []
        run = run[: num_tokens - len(tokens)]
        if not run:
            continue
        grammar.accept_tokens(run)  # all of it: jump_forward_tokens returns tokens the grammar accepts
        tokens += run
        confidences += [1.0] * len(run)
        alive = [c[len(run) :] for c in alive if c[: len(run)] == run and len(c) > len(run)]
        if not alive:
            suffix = (tail + tokens)[-context.max_n :]
            left = num_tokens - len(tokens)
            alive = _longest_match(sources, suffix, context.min_n, context.max_n, left, max_matches)[0] if left else []
    return NGramProposal(tokens, confidences, match_len)


@dataclass
class NGramProposer:
    """Suffix matches against each request's own context, indexed incrementally. With ``radix``, a
    request whose whole context is cached (an earlier request had the same tokens so far) drafts the
    radix tree's cached continuation instead (docs/design.md "Combining proposers"): it matches the whole
    context, not a few-token suffix, so it comes first, with confidence ``radix_confidence`` per token (a prior)."""

    min_n: int = 1
    max_n: int = 4
    radix: RadixCache | None = None
    radix_confidence: float = 0.9
    indexes: dict[str, NGramIndex] = field(default_factory=dict)
    capture_layers: tuple[int, ...] = ()

    def propose(self, reqs: list[SpecRequest], num_tokens: list[int]) -> list[Draft]:
        return [self._propose_one(r, n) for r, n in zip(reqs, num_tokens)]

    def _propose_one(self, req: SpecRequest, num_tokens: int) -> Draft:
        index = self.indexes.get(req.rid)
        if index is None:
            index = self.indexes[req.rid] = NGramIndex(self.min_n, self.max_n)
        n = len(req.origin_input_ids) + len(req.output_ids)
        if len(index.tokens) < n:
            fill = req.origin_input_ids + req.output_ids
            index.extend(fill[len(index.tokens) :])
        cached = self.radix.continuation(index.tokens, num_tokens) if self.radix is not None and num_tokens else []
        if cached:
            return Draft(cached, [self.radix_confidence] * len(cached), source="radix")
        proposal = propose(index, num_tokens, grammar=req.grammar)
        return Draft(proposal.tokens, proposal.confidences, source="ngram")

    def store_features(self, hidden_states: list[torch.Tensor], slots: torch.Tensor) -> None:
        raise RuntimeError("the n-gram proposer captures no hidden states")

    def release(self, rid: str) -> None:
        self.indexes.pop(rid, None)

    def request_states(self) -> int:
        return len(self.indexes)
