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
(``rejection_sample(..., draft_probs=None, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

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


def _vote(continuations: list[list[int]], num_tokens: int, prior: float) -> tuple[list[int], list[float]]:
    """Majority vote along the continuations (ordered by preference for ties)."""
    tokens: list[int] = []
    confidences: list[float] = []
    alive = continuations
    for j in range(num_tokens):
        alive = [c for c in alive if len(c) > j]
        if not alive:
            break
        votes: dict[int, int] = {}
        for c in alive:
            votes[c[j]] = votes.get(c[j], 0) + 1
        token = max(votes, key=votes.__getitem__)  # first maximum: the most preferred among ties
        tokens.append(token)
        confidences.append(votes[token] / (len(alive) + prior))
        alive = [c for c in alive if c[j] == token]
    return tokens, confidences


def propose(
    context: NGramIndex, num_tokens: int, corpora: Corpora = (), max_matches: int = 64, prior: float = 1.0
) -> NGramProposal:
    """Draft up to ``num_tokens`` tokens after ``context`` from its longest earlier-seen suffix.

    ``corpora``: ``NGramIndex``es (searched with the context's suffix), or a callable taking the context
    tokens and returning token sequences, indexed on the fly (cost linear in their length).
    ``max_matches`` caps the occurrences per source that vote; ``prior`` shrinks the confidences.
    """
    if callable(corpora):
        corpora = [NGramIndex.build(seq, context.min_n, context.max_n) for seq in corpora(context.tokens)]
    sources = [context, *corpora]
    for n in range(min(context.max_n, len(context.tokens)), context.min_n - 1, -1):
        key = tuple(context.tokens[-n:])
        found = [c for source in sources for c in source.continuations(key, num_tokens, max_matches)]
        if found:
            return NGramProposal(*_vote(found, num_tokens, prior), match_len=n)
    return NGramProposal([], [], 0)
