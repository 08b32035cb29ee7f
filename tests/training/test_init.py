"""A fresh drafter starts as a copy of its target's last layers, dense or quantized (the default GGUF target)."""

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


def test_a_gemma3_target_leaves_the_drafter_as_initialised(caplog):
    """Gemma 3's layers (norms around both sublayers' outputs, GeGLU) do not map onto the drafter's."""
    target = tiny_random_gemma3()
    drafter = make_drafter(target)
    before = {k: v.clone() for k, v in drafter.state_dict().items()}
    init_from_target(drafter, target)
    assert all(torch.equal(before[k], v) for k, v in drafter.state_dict().items())
    assert "random initialisation" in caplog.text
