"""Tiny randomly initialised models (Llama, Gemma 3), for CI-sized tests and smoke runs."""

from __future__ import annotations

import torch

from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import LlamaForCausalLM


def tiny_random_model(
    vocab_size: int = 97, hidden_size: int = 64, num_layers: int = 4, seed: int = 0
) -> LlamaForCausalLM:
    cfg = DecoderConfig(
        architecture="LlamaForCausalLM",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_layers=num_layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=hidden_size // 4,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attention_bias=False,
        eos_token_ids=(),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.fill_(1.0)
    return model.eval()


def tiny_random_gemma3(head_dim: int = 16, seed: int = 0):
    """A 3-layer random Gemma 3 (sliding, full, sliding attention; window 8), fp32, ours."""
    from transformers import Gemma3TextConfig

    from sglang_dspark.models.registry import model_class

    hf = Gemma3TextConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model = model_class("Gemma3ForCausalLM")(DecoderConfig.from_hf(hf.to_dict()))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()
