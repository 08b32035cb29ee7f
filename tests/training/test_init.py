"""A fresh drafter starts as a copy of its target's last layers, dense or quantized (the default GGUF target), or
as the nearest Llama-shaped copy of a Gemma 3 layer."""

from __future__ import annotations

import torch

from sglang_dspark.kernels.quant_formats import dequantize
from sglang_dspark.models.quantization import quantize_to_int8
from sglang_dspark.models.tiny import tiny_random_gemma3, tiny_random_model
from sglang_dspark.speculative.dspark import DSparkConfig, DSparkDrafter
from sglang_dspark.training.init import init_from_target


def make_drafter(target) -> DSparkDrafter:
    c = target.config
    cfg = DSparkConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=1,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
        vocab_size=c.vocab_size, max_position_embeddings=512, block_size=4, target_layer_ids=(0, 2),
        num_target_layers=c.num_layers, mask_token_id=3,
    )  # fmt: skip
    return DSparkDrafter(cfg, target.embed_tokens.weight, target.lm_head_weight)


def test_draft_layers_copy_the_targets_last_layers_dense_or_quantized():
    dense = tiny_random_model()
    quant = tiny_random_model()
    quantize_to_int8(quant)
    for target in (dense, quant):
        drafter = make_drafter(target)
        init_from_target(drafter, target)
        src, dst = target.layers[-1], drafter.layers[-1]
        qkv = src.self_attn.qkv_proj
        full = qkv.weight if qkv.qweight is None else dequantize(qkv.qweight)
        q_size = qkv.q_size
        torch.testing.assert_close(dst.self_attn.q_proj.weight, full[:q_size].to(dst.self_attn.q_proj.weight.dtype))
        down = src.mlp.down_proj
        want = down.weight if down.qweight is None else dequantize(down.qweight)
        torch.testing.assert_close(dst.mlp.down_proj.weight, want.to(dst.mlp.down_proj.weight.dtype))
        assert torch.equal(drafter.norm.weight, target.norm.weight)


def test_a_gemma3_layer_becomes_the_drafters_with_its_norms_scales():
    target = tiny_random_gemma3()
    for norm in target.modules():
        if getattr(norm, "unit_offset", False):
            norm.weight.data.normal_(0, 0.1)  # random ones zero-initialised: make `1 + weight` visible
    drafter = make_drafter(target)
    init_from_target(drafter, target)
    src, dst = target.layers[-1], drafter.layers[-1]
    assert torch.equal(dst.input_layernorm.weight, src.input_layernorm.weight + 1)
    assert torch.equal(dst.post_attention_layernorm.weight, src.pre_feedforward_layernorm.weight + 1)
    assert torch.equal(dst.self_attn.q_norm.weight, src.self_attn.q_norm.weight + 1)
    assert torch.equal(dst.self_attn.k_norm.weight, src.self_attn.k_norm.weight + 1)
    assert torch.equal(drafter.norm.weight, target.norm.weight + 1)
    # the drafter's first layer normalises and scales as the target's last layer: same q projection of a row
    x = torch.randn(2, target.config.hidden_size)
    torch.testing.assert_close(
        dst.self_attn.q_proj(dst.input_layernorm(x)),
        src.self_attn.qkv_proj(src.input_layernorm(x))[:, : src.self_attn.qkv_proj.q_size],
    )
