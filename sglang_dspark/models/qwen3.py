"""Qwen3: the Llama decoder with per-head RMSNorm on q and k (no q/k/v bias by default)."""

from __future__ import annotations

from sglang_dspark.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
