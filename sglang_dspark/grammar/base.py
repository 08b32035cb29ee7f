"""The grammar interface: constraints, the per-request grammar object, and a backend.

A *backend* (xgrammar, outlines-core, llguidance) compiles a :class:`Constraint` once into an
immutable, shareable compiled grammar; every request gets its own :class:`BaseGrammarObject` (a
matcher) made from it. Token masks are *bitmasks*: int32 tensors ``[rows, ceil(V / 32)]`` where bit
``t % 32`` of word ``t // 32`` is 1 iff token ``t`` is allowed (the layout all three libraries use).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sglang_dspark.grammar.json_bounds import JsonBounds

ANY_OBJECT_SCHEMA = '{"type": "object"}'  # what OpenAI's response_format json_object means


class GrammarError(ValueError):
    """A constraint that cannot be compiled (invalid, unsupported, or too slow); the message is user-facing."""


@dataclass(frozen=True)
class CompileLimits:
    """What one compile may take. xgrammar and llguidance bound their own work; outlines-core compiles
    in a child process that is killed at the time limit and dies past the memory limit."""

    timeout: float = 60.0  # seconds (--grammar-compile-timeout)
    memory_gb: float = 4.0  # address space of a compile process (--grammar-compile-memory-limit); 0 = none


DEFAULT_LIMITS = CompileLimits()


class ConstraintKind(str, Enum):
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"  # any JSON object (OpenAI response_format {"type": "json_object"})
    REGEX = "regex"
    EBNF = "ebnf"
    STRUCTURAL_TAG = "structural_tag"  # xgrammar's structural tag (JSON): free text with constrained tagged parts


@dataclass(frozen=True)
class Constraint:
    kind: ConstraintKind
    text: str  # the schema (JSON string), regex or EBNF; empty for JSON_OBJECT

    @classmethod
    def from_fields(
        cls,
        regex: str | None = None,
        json_schema: str | None = None,
        ebnf: str | None = None,
        structural_tag: str | None = None,
    ) -> Constraint | None:
        """The constraint of SGLang's sampling params (at most one field set), or None.

        A json_schema equal to ``{"type": "object"}`` (how SGLang's OpenAI layer passes
        ``response_format: json_object``) is the JSON_OBJECT kind."""
        if regex is not None:
            return cls(ConstraintKind.REGEX, regex)
        if ebnf is not None:
            return cls(ConstraintKind.EBNF, ebnf)
        if structural_tag is not None:
            return cls(ConstraintKind.STRUCTURAL_TAG, structural_tag)
        if json_schema is not None:
            if _parse_json(json_schema) == json.loads(ANY_OBJECT_SCHEMA):
                return cls(ConstraintKind.JSON_OBJECT, "")
            return cls(ConstraintKind.JSON_SCHEMA, json_schema)
        return None

    def schema(self) -> dict | bool:
        """The JSON schema of a JSON_SCHEMA / JSON_OBJECT constraint (parsed, checked to be a schema)."""
        if self.kind == ConstraintKind.JSON_OBJECT:
            return json.loads(ANY_OBJECT_SCHEMA)
        schema = _parse_json(self.text)
        if not isinstance(schema, dict | bool):
            raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
        return schema


STRUCTURAL_TAG_NEEDS_XGRAMMAR = "structural_tag constraints (and tool calling) need --grammar-backend xgrammar"
JSON_BOUNDS_NEED_XGRAMMAR = "max_json_string_length and max_json_array_items need --grammar-backend xgrammar"


def compile_timeout_error(constraint: Constraint, timeout: float) -> GrammarError:
    return GrammarError(
        f"compiling the {constraint.kind.value} took longer than the {timeout:g} s limit "
        f"(--grammar-compile-timeout); simplify it"
    )


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise GrammarError(f"json_schema is not valid JSON: {e}") from None


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed bitmask [rows, ceil(V / 32)] int32."""
    return torch.full((rows, bitmask_width(vocab_size)), -1, dtype=torch.int32)


class BaseGrammarObject(ABC):
    """One request's position in its grammar. Not thread-safe; every method is cheap (µs to ms).

    The end of generation is part of the grammar: a stop token is allowed by ``fill_mask`` only
    where the grammar may end, and accepting it makes ``is_terminated()`` true."""

    @abstractmethod
    def accept_token(self, token: int) -> bool:
        """Advance by one token; False (and no state change) if the grammar does not allow it."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (a stop token counts as one)."""

    @abstractmethod
    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]`` ([R, W] int32, CPU, contiguous)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once a stop token was accepted: nothing more may be generated."""

    @abstractmethod
    def fork(self) -> BaseGrammarObject:
        """An independent copy at the same position (e.g. to walk a draft without touching this one)."""

    @abstractmethod
    def jump_forward_tokens(self) -> list[int]:
        """Tokens the grammar forces from here (a fixed continuation, never a stop token); not accepted."""

    def accept_tokens(self, tokens: Sequence[int]) -> int:
        """Accept tokens in order until one is rejected; returns how many were accepted."""
        for i, tok in enumerate(tokens):
            if not self.accept_token(tok):
                return i
        return len(tokens)

    def validate_tokens(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of ``tokens`` the grammar accepts; the state is unchanged."""
        n = self.accept_tokens(tokens)
        if n:
            self.rollback(n)
        return n

    def fill_draft_masks(self, draft: Sequence[int], bitmask: torch.Tensor, row: int) -> int:
        """Masks for a draft chain in one call: ``bitmask[row + i]`` gets the mask after ``draft[:i]``,
        for i = 0 .. len(draft). Stops at the first draft token the grammar rejects (or after a stop
        token); returns how many rows were filled (>= 1). Rows past that are left as they were. The
        state is unchanged."""
        self.fill_mask(bitmask, row)
        n = 0
        for tok in draft:
            if self.is_terminated() or not self.accept_token(tok):
                break
            n += 1
            if not self.is_terminated():
                self.fill_mask(bitmask, row + n)
            else:
                bitmask[row + n].zero_()
        if n:
            self.rollback(n)
        return n + 1


class GrammarBackend(ABC):
    """Compiles constraints for one tokenizer; makes grammar objects; fills masks in batches.

    ``compile`` may be slow and runs in a worker thread; its result is cached and shared, so it must
    be immutable. Everything else runs on the scheduler thread."""

    name: str

    def __init__(self, vocab_size: int, stop_token_ids: Sequence[int], limits: CompileLimits = DEFAULT_LIMITS) -> None:
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(set(stop_token_ids))
        self.limits = limits

    @abstractmethod
    def compile(self, constraint: Constraint) -> Any:
        """Constraint -> a compiled grammar; raises GrammarError with the reason if it cannot."""

    @abstractmethod
    def make_grammar(self, compiled: Any, bounds: JsonBounds | None = None) -> BaseGrammarObject:
        """A fresh grammar object at the start of a compiled grammar; ``bounds`` (xgrammar only, else a
        GrammarError) narrow its masks (grammar/json_bounds.py)."""

    def close(self) -> None:  # noqa: B027 - optional: only outlines holds something to release
        """Release what the backend holds outside this process (outlines' compile processes)."""

    def fill_masks(self, grammars: Sequence[BaseGrammarObject], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
        """``bitmask[rows[i]]`` <- mask of ``grammars[i]``, for a whole batch."""
        for grammar, row in zip(grammars, rows, strict=True):
            grammar.fill_mask(bitmask, row)

    def fill_draft_masks(
        self,
        grammars: Sequence[BaseGrammarObject],
        drafts: Sequence[Sequence[int]],
        bitmask: torch.Tensor,
        rows: Sequence[int],
    ) -> list[int]:
        """:meth:`BaseGrammarObject.fill_draft_masks` for a batch; request i uses rows
        ``rows[i] .. rows[i] + len(drafts[i])``. Returns the rows filled per request."""
        return [g.fill_draft_masks(d, bitmask, r) for g, d, r in zip(grammars, drafts, rows, strict=True)]
