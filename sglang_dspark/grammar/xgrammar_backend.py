"""xgrammar backend (the default): pushdown automaton with an adaptive token-mask cache.

The matcher knows the stop tokens itself (accepting one terminates it) and rolls back without limit.
Jump-forward tokenizes ``find_jump_forward_string``; a draft chain's masks come from one
``traverse_draft_tree`` call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import torch
import xgrammar

from sglang_dspark.grammar.base import (
    DEFAULT_LIMITS,
    BaseGrammarObject,
    CompileLimits,
    Constraint,
    ConstraintKind,
    GrammarBackend,
    GrammarError,
)
from sglang_dspark.grammar.json_bounds import JsonBounds, JsonBoundsTracker, JsonBoundsVocab, Search
from sglang_dspark.grammar.schema_support import NOT_ENFORCEABLE, SchemaSupport
from sglang_dspark.grammar.vocab import token_bytes

# xgrammar ignores these (allOf: the whole schema becomes "any JSON"); multipleOf only works on integers.
SCHEMA_SUPPORT = SchemaSupport(
    "xgrammar",
    NOT_ENFORCEABLE | {"allOf"},
    multiple_of_numbers=False,
    combinator_siblings=False,
    enum_siblings=False,
    length_with_pattern=False,
    pattern_lookaround=False,
    required_undeclared=False,
)
SEARCH_STATES = 256  # distinct grammar states one shortest_step search visits at most
SEARCH_STEPS = 4096  # tokens it tries at most
# "[08:12:10] /project/cpp/json_schema_converter.cc:4944: Unsupported type ..." -> "Unsupported type ..."
_CPP_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _reason(error: Exception) -> str:
    return _CPP_PREFIX.sub("", str(error).strip())


def shortest_step(matcher: xgrammar.GrammarMatcher, steps: Sequence[int], goal: torch.Tensor) -> int | None:
    """Breadth-first over ``steps`` (tokens of one byte each): the first token of a shortest path from the
    matcher's state to one where a token of ``goal`` ([W] bitmask row) is allowed, or None past the search
    limits. States are told apart by the matcher's parser state (xgrammar's debug description of it). The
    matcher ends where it began."""
    mask = torch.empty(1, goal.shape[0], dtype=torch.int32)
    seen: set[str] = set()
    frontier: list[tuple[int, ...]] = [()]
    tried = 0
    while frontier and len(seen) < SEARCH_STATES and tried < SEARCH_STEPS:
        deeper = []
        for path in frontier:
            tried += 1
            for tok in path:
                matcher.accept_token(tok)
            try:
                key = matcher._debug_print_internal_state().partition("Last step:")[2]
                if key in seen or matcher.is_terminated():
                    continue
                seen.add(key)
                matcher.fill_next_token_bitmask(mask, 0)
                if path and bool((mask[0] & goal).any()):
                    return path[0]
                words = mask[0].tolist()
                deeper += [(*path, t) for t in steps if (words[t >> 5] >> (t & 31)) & 1]
            finally:
                if path:
                    matcher.rollback(len(path))
        frontier = deeper
    return None


class XGrammarGrammar(BaseGrammarObject):
    def __init__(
        self,
        matcher: xgrammar.GrammarMatcher,
        encode: Callable[[str], list[int]],
        bounds: JsonBoundsTracker | None = None,
    ) -> None:
        self.matcher = matcher
        self.encode = encode
        self.bounds = bounds  # JSON length bounds narrowing the matcher's masks

    def accept_token(self, token: int) -> bool:
        accepted = self.matcher.accept_token(token)
        if accepted and self.bounds is not None:
            self.bounds.accept(token)
        return accepted

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.matcher.rollback(num_tokens)
            if self.bounds is not None:
                self.bounds.rollback(num_tokens)

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.matcher.is_terminated():  # xgrammar refuses to fill a terminated matcher's mask
            bitmask[row].zero_()
        else:
            self.matcher.fill_next_token_bitmask(bitmask, row)
            if self.bounds is not None:
                self.bounds.narrow(bitmask, row, self.search_after([]))

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    def fork(self) -> XGrammarGrammar:
        return XGrammarGrammar(self.matcher.fork(), self.encode, self.bounds and self.bounds.fork())

    def jump_forward_tokens(self) -> list[int]:
        try:
            text = self.matcher.find_jump_forward_string()
        except UnicodeDecodeError:  # the forced bytes end inside a UTF-8 character: let the model sample them
            return []
        if not text:
            return []
        tokens = self.encode(text)
        return tokens[: self.validate_tokens(tokens)]

    def fill_draft_masks(self, draft: Sequence[int], bitmask: torch.Tensor, row: int) -> int:
        valid = self.validate_tokens(draft)
        if self.is_terminated():
            bitmask[row].zero_()
            return 1
        # a chain: node 0 is the current position (its token is ignored), node i + 1 follows draft[i]
        n = valid + 1
        next_token = torch.tensor([*range(1, n), -1], dtype=torch.int64)
        sibling = torch.full((n,), -1, dtype=torch.int64)
        tokens = torch.tensor([0, *draft[:valid]], dtype=torch.int64)
        self.matcher.traverse_draft_tree(next_token, sibling, tokens, bitmask[row : row + n])
        if self.bounds is not None:
            self.bounds.narrow_chain(list(draft[:valid]), bitmask, row, n, self.search_after(draft[:valid]))
        return n

    def search_after(self, draft: Sequence[int]) -> Search:
        """The JSON bounds' search from the state after draft[:i] (the matcher is back where it was after it)."""

        def search(i: int, goal: torch.Tensor) -> int | None:
            for tok in draft[:i]:
                self.matcher.accept_token(tok)
            try:
                return shortest_step(self.matcher, self.bounds.vocab.single_bytes, goal)
            finally:
                if i:
                    self.matcher.rollback(i)

        return search


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"

    def __init__(
        self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int], limits: CompileLimits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(vocab_size, stop_token_ids, limits)
        self.token_bytes = token_bytes(tokenizer, vocab_size)
        self._bounds_vocab: JsonBoundsVocab | None = None  # built on the first request with JSON bounds
        info = xgrammar.TokenizerInfo(
            self.token_bytes,
            xgrammar.VocabType.RAW,
            vocab_size=vocab_size,
            stop_token_ids=self.stop_token_ids,
        )
        # one compile thread: the other core runs the model; our own cache replaces xgrammar's
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher(max_threads=1)
        self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)

    def compile(self, constraint: Constraint) -> xgrammar.CompiledGrammar:
        kind = constraint.kind
        try:
            if kind in (ConstraintKind.JSON_SCHEMA, ConstraintKind.JSON_OBJECT):
                schema = constraint.schema()
                SCHEMA_SUPPORT.check(schema)
                # compact JSON; strict_mode=False keeps JSON Schema's defaults (additional properties allowed)
                return self.compiler.compile_json_schema(
                    json.dumps(schema),
                    any_whitespace=False,
                    separators=(",", ":"),
                    strict_mode=False,
                )
            if kind == ConstraintKind.REGEX:
                return self.compiler.compile_regex(constraint.text)
            if kind == ConstraintKind.STRUCTURAL_TAG:
                return self.compiler.compile_structural_tag(constraint.text)
            return self.compiler.compile_grammar(constraint.text)
        except (RuntimeError, ValueError) as e:  # ValueError: a structural tag that does not parse
            raise GrammarError(f"invalid {kind.value}: {_reason(e)}") from None

    def make_grammar(self, compiled: xgrammar.CompiledGrammar, bounds: JsonBounds | None = None) -> XGrammarGrammar:
        tracker = None
        if bounds:
            if self._bounds_vocab is None:
                self._bounds_vocab = JsonBoundsVocab(self.token_bytes)
            tracker = JsonBoundsTracker(bounds, self._bounds_vocab)
        return XGrammarGrammar(xgrammar.GrammarMatcher(compiled), self.encode, tracker)

    def fill_masks(self, grammars: Sequence[XGrammarGrammar], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
        live = [(g.matcher, r) for g, r in zip(grammars, rows, strict=True) if not g.is_terminated()]
        if live:
            self.batch.batch_fill_next_token_bitmask([m for m, _ in live], bitmask, [r for _, r in live])
        for g, r in zip(grammars, rows, strict=True):
            if g.is_terminated():
                bitmask[r].zero_()
            elif g.bounds is not None:
                g.bounds.narrow(bitmask, r, g.search_after([]))
