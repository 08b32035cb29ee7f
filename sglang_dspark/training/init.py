"""Initialise a drafter from its target: draft layers <- the target's last decoder layers (dequantized where the
target keeps them quantized), final norm <- the target's, `fc` <- "take the deepest captured layer". A fresh
drafter then starts close to a one-layer continuation of the target instead of from noise, which matters with a
CPU-sized training budget. A Gemma 3 target's layers do not map onto the drafter's (norms around both sublayers'
outputs, GeGLU); copied anyway, they start the drafter far worse than random weights do (docs/training_drafters.md),
so its drafter keeps its random initialisation.

Or grow a trained drafter: a deeper one starts as the trained one plus layers that add nothing yet."""

from __future__ import annotations

import dataclasses
import logging

import torch

from sglang_dspark.kernels.quant_formats import dequantize
from sglang_dspark.models.gemma3 import Gemma3DecoderLayer
from sglang_dspark.speculative.dspark import DSparkDrafter

logger = logging.getLogger(__name__)


def _dense(linear) -> torch.Tensor:
    """A target linear layer's weight [out, in], dequantized where the target keeps it quantized."""
    return linear.weight if linear.qweight is None else dequantize(linear.qweight)


def _shard(linear, name: str) -> torch.Tensor:
    start, size = linear.shard_offsets[name]
    return _dense(linear)[start : start + size]


@torch.no_grad()
def init_from_target(drafter: DSparkDrafter, target) -> None:
    if isinstance(target.layers[0], Gemma3DecoderLayer):
        logger.warning("the target's layers do not map onto the drafter's: it starts from its random initialisation")
        return
    src_layers = target.layers[len(target.layers) - len(drafter.layers) :]
    for dst, src in zip(drafter.layers, src_layers, strict=True):
        qkv, gate_up = src.self_attn.qkv_proj, src.mlp.gate_up_proj
        dst.self_attn.q_proj.weight.copy_(_shard(qkv, "q"))
        dst.self_attn.k_proj.weight.copy_(_shard(qkv, "k"))
        dst.self_attn.v_proj.weight.copy_(_shard(qkv, "v"))
        dst.self_attn.o_proj.weight.copy_(_dense(src.self_attn.o_proj))
        dst.mlp.gate_proj.weight.copy_(_shard(gate_up, "gate"))
        dst.mlp.up_proj.weight.copy_(_shard(gate_up, "up"))
        dst.mlp.down_proj.weight.copy_(_dense(src.mlp.down_proj))
        dst.input_layernorm.weight.copy_(src.input_layernorm.weight)
        dst.post_attention_layernorm.weight.copy_(src.post_attention_layernorm.weight)
        if src.self_attn.q_norm is not None:  # Qwen3's per-head q/k norms
            dst.self_attn.q_norm.weight.copy_(src.self_attn.q_norm.weight)
            dst.self_attn.k_norm.weight.copy_(src.self_attn.k_norm.weight)
    drafter.norm.weight.copy_(target.norm.weight)
    d = drafter.config.hidden_size
    drafter.fc.weight.zero_()
    drafter.fc.weight[:, -d:].copy_(torch.eye(d))  # the last (deepest) captured layer passes through
    deepest = drafter.config.target_layer_ids[-1]
    if deepest + 1 < len(target.layers):
        drafter.hidden_norm.weight.copy_(target.layers[deepest + 1].input_layernorm.weight)


@torch.no_grad()
def grow_from(drafter: DSparkDrafter, smaller: DSparkDrafter) -> None:
    """Start `drafter` as the trained `smaller` one with more layers: every parameter of `smaller` is copied
    (its layers become the first ones); each extra layer keeps its initialisation except its output
    projections (o_proj, down_proj), zeroed: it adds nothing to the residual stream, so the grown drafter
    drafts exactly what `smaller` did, and training goes on from there."""
    grown, base = drafter.config, smaller.config
    if dataclasses.replace(base, num_hidden_layers=grown.num_hidden_layers) != grown:
        diff = [
            f"{f.name} {getattr(base, f.name)} vs {getattr(grown, f.name)}"
            for f in dataclasses.fields(base)
            if f.name != "num_hidden_layers" and getattr(base, f.name) != getattr(grown, f.name)
        ]
        raise ValueError("a drafter grows only in depth; its configuration differs in " + ", ".join(diff))
    if base.num_hidden_layers > grown.num_hidden_layers:
        raise ValueError(f"cannot grow {base.num_hidden_layers} draft layers into {grown.num_hidden_layers}")
    mine = drafter.state_dict()
    for name, value in smaller.state_dict().items():
        mine[name].copy_(value)
    for layer in drafter.layers[base.num_hidden_layers :]:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
