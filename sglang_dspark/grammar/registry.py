"""``--grammar-backend`` name -> backend instance. Each library is imported only when chosen."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from sglang_dspark.grammar.base import DEFAULT_LIMITS, CompileLimits, GrammarBackend

BACKENDS = {
    "xgrammar": ("sglang_dspark.grammar.xgrammar_backend", "XGrammarBackend", "xgrammar"),
    "outlines": ("sglang_dspark.grammar.outlines_backend", "OutlinesBackend", "outlines-core"),
    "llguidance": ("sglang_dspark.grammar.llguidance_backend", "LLGuidanceBackend", "llguidance"),
}


def create_backend(
    name: str, tokenizer, vocab_size: int, stop_token_ids: Sequence[int], limits: CompileLimits = DEFAULT_LIMITS
) -> GrammarBackend:
    """Raises ValueError for an unknown name, ImportError (with the install command) if missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown grammar backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name, package = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"the {name} grammar backend needs the '{package}' package (bash launch/install.sh installs it): {e}"
        ) from e
    return getattr(module, class_name)(tokenizer, vocab_size, stop_token_ids, limits)
