"""Structured-output subsystem (installed as sglang_dspark.grammar).

JSON schema / json_object / regex / EBNF constraints through one interface (``base``), three
backends (xgrammar, outlines-core, llguidance), a compile cache with a thread pool and a time limit
(``compiler``), bitmask-to-logits masking (``mask``) and JSON length bounds that narrow masks (``json_bounds``).
"""

from sglang_dspark.grammar.base import (
    BaseGrammarObject,
    CompileLimits,
    Constraint,
    ConstraintKind,
    GrammarBackend,
    GrammarError,
    allocate_bitmask,
)
from sglang_dspark.grammar.compiler import GrammarCompiler, PendingGrammar
from sglang_dspark.grammar.json_bounds import JsonBounds
from sglang_dspark.grammar.registry import create_backend

__all__ = [
    "BaseGrammarObject",
    "CompileLimits",
    "Constraint",
    "ConstraintKind",
    "GrammarBackend",
    "GrammarCompiler",
    "GrammarError",
    "JsonBounds",
    "PendingGrammar",
    "allocate_bitmask",
    "create_backend",
]
