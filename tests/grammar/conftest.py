import pytest
from transformers import AutoTokenizer

from sglang_dspark.grammar import create_backend
from sglang_dspark.models.model_source import resolve_model_path

VOCAB = 49152  # SmolLM2's logits width
EOS = 2


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(None))


@pytest.fixture(scope="session")
def backends(tokenizer):
    """name -> backend, built once (each takes 1-5 s)."""
    return {name: create_backend(name, tokenizer, VOCAB, [EOS]) for name in ("xgrammar", "llguidance", "outlines")}
