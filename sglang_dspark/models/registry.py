"""Architecture name (HF config `architectures[0]`) -> model class."""

from __future__ import annotations

from sglang_dspark.models.gemma3 import Gemma3ForCausalLM
from sglang_dspark.models.llama import LlamaForCausalLM
from sglang_dspark.models.qwen2 import Qwen2ForCausalLM
from sglang_dspark.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[LlamaForCausalLM]] = {
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(architecture: str) -> type[LlamaForCausalLM]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"unsupported model architecture {architecture!r}; supported: {sorted(MODEL_REGISTRY)}"
        ) from None
