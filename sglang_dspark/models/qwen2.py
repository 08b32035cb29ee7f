"""Qwen2 / Qwen2.5: the Llama decoder with biases on the q/k/v projections."""

from __future__ import annotations

from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def qkv_bias(cfg: DecoderConfig) -> bool:
        return True
