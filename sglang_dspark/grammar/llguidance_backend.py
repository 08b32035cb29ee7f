"""llguidance backend: Earley parser over a lazy lexer DFA; fast-forward tokens; parallel batch masks.

A compiled grammar is a validated template ``LLMatcher``; each request gets a ``deep_copy``. Tokens
are checked with ``try_consume_tokens`` (a plain ``consume_token`` of a disallowed token would put the
matcher in its sticky error state). llguidance's tokenizer knows the stop tokens, so its masks set
their bits wherever the grammar may end.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from sglang_dspark.grammar.base import (
    DEFAULT_LIMITS,
    JSON_BOUNDS_NEED_XGRAMMAR,
    STRUCTURAL_TAG_NEEDS_XGRAMMAR,
    CompileLimits,
    Constraint,
    ConstraintKind,
    GrammarBackend,
    GrammarError,
)
from sglang_dspark.grammar.external_stop import ExternalStopGrammar
from sglang_dspark.grammar.json_bounds import JsonBounds
from sglang_dspark.grammar.schema_support import SchemaSupport

# Compact JSON (no whitespace between tokens) like the other backends; oneOf as anyOf once
# SchemaSupport has checked that the branches are disjoint.
JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True}
SCHEMA_SUPPORT = SchemaSupport("llguidance", frozenset())  # llguidance itself rejects what it cannot enforce


class LLGuidanceGrammar(ExternalStopGrammar):
    def __init__(self, matcher: llguidance.LLMatcher, stop_token_ids: Sequence[int]) -> None:
        super().__init__(stop_token_ids)
        self.matcher = matcher

    def _accept(self, token: int) -> bool:
        return self.matcher.try_consume_tokens([token]) == 1

    def _rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)

    def _is_accepting(self) -> bool:
        return self.matcher.is_accepting()

    def _fill(self, bitmask: torch.Tensor, row: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, row)

    def fork(self) -> LLGuidanceGrammar:
        copy = LLGuidanceGrammar(self.matcher.deep_copy(), self.stop_token_ids)
        copy.terminated = self.terminated
        return copy

    def jump_forward_tokens(self) -> list[int]:
        return [] if self.terminated else self.matcher.compute_ff_tokens()


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"

    def __init__(
        self,
        tokenizer,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        limits: CompileLimits = DEFAULT_LIMITS,
        num_threads: int = 1,
    ) -> None:
        super().__init__(vocab_size, stop_token_ids, limits)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.stop_token_ids)
        self.executor = llguidance.LLExecutor(num_threads=num_threads)

    def compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        kind = constraint.kind
        if kind in (ConstraintKind.JSON_SCHEMA, ConstraintKind.JSON_OBJECT):
            schema = constraint.schema()
            SCHEMA_SUPPORT.check(schema)
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        elif kind == ConstraintKind.REGEX:
            grammar = llguidance.LLMatcher.grammar_from_regex(constraint.text)
        elif kind == ConstraintKind.STRUCTURAL_TAG:
            raise GrammarError(STRUCTURAL_TAG_NEEDS_XGRAMMAR)
        else:
            try:
                grammar = llguidance.grammar_from("ebnf", constraint.text)
            except ValueError as e:
                raise GrammarError(f"invalid EBNF grammar: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise GrammarError(f"invalid {kind.value}: {messages[0]}")
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"invalid {kind.value}: {matcher.get_error()}")
        return matcher

    def make_grammar(self, compiled: llguidance.LLMatcher, bounds: JsonBounds | None = None) -> LLGuidanceGrammar:
        if bounds:
            raise GrammarError(JSON_BOUNDS_NEED_XGRAMMAR)
        return LLGuidanceGrammar(compiled.deep_copy(), self.stop_token_ids)

    def fill_masks(self, grammars: Sequence[LLGuidanceGrammar], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
        live = [(g.matcher, r) for g, r in zip(grammars, rows, strict=True) if not g.terminated]
        if live:
            llguidance.torch.fill_next_token_bitmask_par(self.executor, live, bitmask)
        for g, r in zip(grammars, rows, strict=True):
            if g.terminated:
                bitmask[r].zero_()

    def fill_draft_masks(
        self,
        grammars: Sequence[LLGuidanceGrammar],
        drafts: Sequence[Sequence[int]],
        bitmask: torch.Tensor,
        rows: Sequence[int],
    ) -> list[int]:
        """One parallel call for all requests: llguidance walks each draft (only its valid prefix is
        passed) and writes the mask after each token into the following rows."""
        items, filled = [], []
        for g, draft, row in zip(grammars, drafts, rows, strict=True):
            valid = g.validate_tokens(draft)
            stops = valid > 0 and draft[valid - 1] in g.stop_token_ids
            if not g.terminated:
                items.append((g.matcher, row, list(draft[: valid - stops])))
            filled.append(valid + 1)
        if items:
            llguidance.torch.fill_next_token_bitmask_par_with_draft_tokens(self.executor, items, bitmask)
        for g, draft, row, n in zip(grammars, drafts, rows, filled, strict=True):
            if g.terminated:
                bitmask[row].zero_()
            elif n > 1 and draft[n - 2] in g.stop_token_ids:
                bitmask[row + n - 1].zero_()  # nothing after a stop token
        return filled
