"""Gemma 3 (text-only Gemma3ForCausalLM, e.g. Gemma 3 270M): the Llama decoder's attention and MLP with

- sliding-window and global attention layers (``DecoderConfig.layer_types``), each kind with its own RoPE base;
- per-head q/k RMSNorm and attention scaled by ``query_pre_attn_scalar ** -0.5``;
- RMSNorms before and after both the attention and the MLP, all scaling by ``1 + weight``;
- a GeGLU MLP (``gelu_pytorch_tanh``);
- the token embedding scaled by sqrt(hidden_size) in the model's dtype, tied to the LM head;
- optional final logit soft-capping.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from sglang_dspark.distributed.parallel_state import TpGroup
from sglang_dspark.kernels.fused_decoder import FusedLayerWeights
from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import (
    ACTIVATIONS,
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    NormFactory,
    fused_weights,
)

GemmaRMSNorm: NormFactory = partial(RMSNorm, unit_offset=True)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer_id: int, tp: TpGroup | None) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        if cfg.attention_bias:
            raise ValueError("Gemma 3 with attention biases is not supported")
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = LlamaAttention(cfg, layer_id, False, GemmaRMSNorm, tp)
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = LlamaMLP(cfg, tp)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        fb: ForwardBatch,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (layer output before the residual add, residual), as LlamaDecoderLayer does."""
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(x, fb, cos_sin))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual

    def fused_weights(self) -> FusedLayerWeights | None:
        """This layer in the fused stack (its norms run as torch ops there too)."""
        return fused_weights(
            self.self_attn,
            self.mlp,
            ACTIVATIONS["gelu_pytorch_tanh"],
            input_norm=self.input_layernorm.weight,
            post_norm=self.post_attention_layernorm.weight,
            eps=self.input_layernorm.eps,
            gemma=True,
            pre_ff_norm=self.pre_feedforward_layernorm.weight,
            post_ff_norm=self.post_feedforward_layernorm.weight,
        )


class Gemma3ForCausalLM(LlamaForCausalLM):
    norm_factory = GemmaRMSNorm

    def __init__(self, cfg: DecoderConfig, tp: TpGroup | None = None) -> None:
        super().__init__(cfg, tp)
        self.embed_scale = cfg.hidden_size**0.5

    def decoder_layer(self, cfg: DecoderConfig, layer_id: int, tp: TpGroup | None) -> nn.Module:
        return Gemma3DecoderLayer(cfg, layer_id, tp)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        return x * torch.tensor(self.embed_scale, dtype=x.dtype)  # HF rounds the scale to the model dtype

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
