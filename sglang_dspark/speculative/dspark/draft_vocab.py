"""Draft vocabulary: the drafter drafts among the target's most frequent output tokens only (FR-Spec).

The drafter shares the target's LM head: on a CPU its [V, d] matmul is most of a draft's cost (49152
rows for SmolLM2, a fifth of the target's weights read again every round). Restricted to the K most
frequent tokens of the target's own outputs, the LM head (and the Markov head's output rows) shrink by
V / K, at the price of drafts that can never be a rare token. Lossless either way: drafts are only
proposals, verification is exact, and a sampled draft's distribution is simply zero outside the subset.

The frequencies are counted on the training data's regenerated responses (``python -m sglang_dspark.train``
writes ``token_frequencies.json`` next to the drafter) and read at start-up (``--speculative-dspark-draft-
vocab-size``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

FREQUENCIES_NAME = "token_frequencies.json"
DEFAULT_DRAFT_VOCAB_SIZE = 8192


@dataclass(frozen=True)
class TokenFrequencies:
    """Token ids by descending count (ties by id) and their counts."""

    token_ids: tuple[int, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.counts):
            raise ValueError("token frequencies need one count per token id")
        if len(set(self.token_ids)) != len(self.token_ids) or any(t < 0 for t in self.token_ids):
            raise ValueError("token frequencies need distinct non-negative token ids")

    @classmethod
    def count(cls, sequences: Iterable[Sequence[int]]) -> TokenFrequencies:
        counter: Counter[int] = Counter()
        for seq in sequences:
            counter.update(int(t) for t in seq)
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(tuple(t for t, _ in ranked), tuple(n for _, n in ranked))

    @property
    def counted_tokens(self) -> int:
        return sum(self.counts)

    def coverage(self, k: int) -> float:
        """Share of the counted tokens among the k most frequent ids."""
        return sum(self.counts[:k]) / max(self.counted_tokens, 1)

    def draft_vocab(self, k: int, vocab_size: int) -> torch.Tensor:
        """The k most frequent ids [k] int64, ascending; ids never counted fill up by ascending id (a BPE
        vocabulary lists earlier, i.e. more frequent, merges first)."""
        if not 0 < k <= vocab_size:
            raise ValueError(f"draft vocabulary size must be in [1, {vocab_size}], got {k}")
        if any(t >= vocab_size for t in self.token_ids):
            raise ValueError(f"token frequencies name ids beyond the vocabulary of {vocab_size}")
        chosen = list(self.token_ids[:k])
        if len(chosen) < k:
            seen = set(chosen)
            chosen += [t for t in range(vocab_size) if t not in seen][: k - len(chosen)]
        return torch.tensor(sorted(chosen), dtype=torch.int64)

    def save(self, path: str | Path) -> None:
        data = {"token_ids": list(self.token_ids), "counts": list(self.counts)}
        Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TokenFrequencies:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(tuple(data["token_ids"]), tuple(data["counts"]))
