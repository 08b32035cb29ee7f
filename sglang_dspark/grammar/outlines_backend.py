"""outlines-core backend: a regex compiled to a token-level DFA (the ``Index``) over the whole vocabulary.

JSON schemas become one regex (``build_regex_from_schema``, compact: no whitespace), EBNF is not
supported. The Index is built in a worker process (``outlines_compile_worker``), killed at the compile
time limit and bounded in memory: its construction cannot be interrupted otherwise. The Index knows one
EOS token; the end of generation is handled outside the Guide (see external_stop). There is no
jump-forward string: the forced continuation is the chain of states that allow exactly one token.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from sglang_dspark.grammar.base import (
    DEFAULT_LIMITS,
    JSON_BOUNDS_NEED_XGRAMMAR,
    STRUCTURAL_TAG_NEEDS_XGRAMMAR,
    CompileLimits,
    Constraint,
    ConstraintKind,
    GrammarBackend,
    GrammarError,
    allocate_bitmask,
)
from sglang_dspark.grammar.compile_process import CompileProcessPool
from sglang_dspark.grammar.external_stop import ExternalStopGrammar
from sglang_dspark.grammar.json_bounds import JsonBounds
from sglang_dspark.grammar.mask import allow_token_, single_allowed_token
from sglang_dspark.grammar.schema_support import NOT_ENFORCEABLE, SchemaSupport
from sglang_dspark.grammar.vocab import token_bytes

# outlines-core's schema-to-regex drops numeric bounds, property counts and allOf semantics.
SCHEMA_SUPPORT = SchemaSupport(
    "outlines",
    NOT_ENFORCEABLE
    | {
        "allOf",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minProperties",
        "maxProperties",
    },
    combinator_siblings=False,
    negated_pattern_classes=False,
    enum_siblings=False,
    pattern_alternation=False,
    required_undeclared=False,
)
MAX_ROLLBACK = 4096  # states a Guide remembers (speculation rolls back a draft length at most)
MAX_JUMP_FORWARD = 64
COMPILE_WORKER = Path(__file__).with_name("outlines_compile_worker.py")  # Index builds run there (killable)


class OutlinesGrammar(ExternalStopGrammar):
    def __init__(self, guide: Guide, stop_token_ids: Sequence[int], vocab_size: int) -> None:
        super().__init__(stop_token_ids)
        self.guide = guide
        self.vocab_size = vocab_size

    def _accept(self, token: int) -> bool:
        try:
            self.guide.advance(token, return_tokens=False)
        except ValueError:  # no transition: the Guide keeps its state
            return False
        return True

    def _rollback(self, num_tokens: int) -> None:
        self.guide.rollback_state(num_tokens)

    def _is_accepting(self) -> bool:
        return self.guide.is_finished()

    def _fill(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]
        self.guide.write_mask_into(target.data_ptr(), target.numel(), target.element_size())
        if self.guide.is_finished():  # the Index only knows one EOS id
            for tok in self.stop_token_ids:
                allow_token_(target, tok)

    def fork(self) -> OutlinesGrammar:
        forked = OutlinesGrammar(copy.copy(self.guide), self.stop_token_ids, self.vocab_size)
        forked.terminated = self.terminated
        return forked

    def jump_forward_tokens(self) -> list[int]:
        """Walks the Guide itself and rolls it back (copying a Guide costs milliseconds: it runs per token)."""
        scratch = allocate_bitmask(1, self.vocab_size)
        tokens: list[int] = []
        while len(tokens) < MAX_JUMP_FORWARD:
            self.fill_mask(scratch, 0)
            tok = single_allowed_token(scratch[0])
            if tok is None or tok in self.stop_token_ids or not self.accept_token(tok):
                break
            tokens.append(tok)
        if tokens:
            self.rollback(len(tokens))
        return tokens


class OutlinesBackend(GrammarBackend):
    name = "outlines"

    def __init__(
        self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int], limits: CompileLimits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(vocab_size, stop_token_ids, limits)
        by_bytes: dict[bytes, list[int]] = {}
        for tid, data in enumerate(token_bytes(tokenizer, vocab_size)):
            if data and tid not in self.stop_token_ids:
                by_bytes.setdefault(data, []).append(tid)
        self.processes = CompileProcessPool(COMPILE_WORKER, Vocabulary(self.stop_token_ids[0], by_bytes), limits)

    def compile(self, constraint: Constraint) -> Index:
        kind = constraint.kind
        if kind == ConstraintKind.EBNF:
            raise GrammarError("the outlines grammar backend does not support EBNF; use xgrammar or llguidance")
        if kind == ConstraintKind.STRUCTURAL_TAG:
            raise GrammarError(STRUCTURAL_TAG_NEEDS_XGRAMMAR)
        if kind == ConstraintKind.REGEX:
            regex = constraint.text
        else:
            schema = constraint.schema()
            SCHEMA_SUPPORT.check(schema)
            try:
                regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
            except (ValueError, TypeError) as e:
                raise GrammarError(f"invalid {kind.value}: {str(e).strip()}") from None
        status, result = self.processes.run((regex, self.limits.timeout), constraint)
        if status == "error":
            raise GrammarError(f"invalid {kind.value}: {result}")
        return result

    def close(self) -> None:
        self.processes.close()

    def make_grammar(self, compiled: Index, bounds: JsonBounds | None = None) -> OutlinesGrammar:
        if bounds:
            raise GrammarError(JSON_BOUNDS_NEED_XGRAMMAR)
        return OutlinesGrammar(Guide(compiled, max_rollback=MAX_ROLLBACK), self.stop_token_ids, self.vocab_size)
