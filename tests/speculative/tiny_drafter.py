"""A randomised DSpark drafter on the tiny random target, and that target's features, for drafter tests."""

from __future__ import annotations

import torch

from sglang_dspark.model_executor.sequence_forward import forward_sequences
from sglang_dspark.speculative.dspark import DSparkConfig, DSparkDrafter

LAYERS = (-1, 1, 3)


def make_drafter(target, markov_type: str = "vanilla", rank: int = 8, seed: int = 0) -> DSparkDrafter:
    c = target.config
    cfg = DSparkConfig(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        max_position_embeddings=512,
        block_size=4,
        target_layer_ids=LAYERS,
        num_target_layers=c.num_layers,
        mask_token_id=3,
        markov_rank=rank,
        markov_head_type=markov_type,
        enable_confidence_head=rank > 0,
        confidence_head_with_markov=rank > 0,
    )
    torch.manual_seed(seed)
    d = DSparkDrafter(cfg, target.embed_tokens.weight, target.lm_head_weight)
    with torch.no_grad():
        for p in d.parameters():  # the Markov W2 starts at zero; randomise so the test sees its effect
            p.add_(0.05 * torch.randn_like(p))
    return d.eval()


def features(target, ids: list[int]) -> torch.Tensor:
    (out,) = forward_sequences(target, [ids], LAYERS)
    return torch.cat(out.hidden_states, dim=-1)
