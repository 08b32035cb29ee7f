"""The drafter's parallel backbone: decoder layers whose keys/values are [context ; block] (KV injection).

Context features (the target's hidden states of `target_layer_ids`, concatenated) go through `fc` and
`hidden_norm` once; every layer projects them with its own k/v projections. Those context keys/values
depend only on the context, so the runtime caches them per request and appends new positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.layers.linear import ReplicatedLinear
from sglang_dspark.speculative.dspark.config import DSparkConfig


def rope_tables(head_dim: int, max_position: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_position, head_dim] (neox / rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., H, D], positions [...] -> rotated x."""
    c = cos[positions].to(x.dtype).unsqueeze(-2)
    s = sin[positions].to(x.dtype).unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * c + rotated * s


class DraftAttention(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = ReplicatedLinear(d, self.num_heads * hd, bias=False)
        self.k_proj = ReplicatedLinear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = ReplicatedLinear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = ReplicatedLinear(self.num_heads * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def project_kv(
        self, x: torch.Tensor, positions: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., T, d], positions [..., T] -> rotated keys, values [..., T, Hkv, D]."""
        shape = (*x.shape[:-1], self.num_kv_heads, self.head_dim)
        k = apply_rope(self.k_norm(self.k_proj(x).view(shape)), positions, *rope)
        return k, self.v_proj(x).view(shape)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        ctx_kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [B, Q, d], positions [B, Q], ctx k/v [B, S, Hkv, D], mask [B, 1, Q, S + Q] bool or None (no mask)
        -> [B, Q, d]."""
        b, q_len, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(b, q_len, self.num_heads, self.head_dim)), positions, *rope)
        k, v = self.project_kv(x, positions, rope)
        k = torch.cat([ctx_kv[0].to(k.dtype), k], dim=1).transpose(1, 2)
        v = torch.cat([ctx_kv[1].to(v.dtype), v], dim=1).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, q_len, -1))


class DraftMLP(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.gate_proj = ReplicatedLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = ReplicatedLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = ReplicatedLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftDecoderLayer(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DraftAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DraftMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        ctx_kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, ctx_kv, mask, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class DraftBackbone(nn.Module):
    """Parameters `fc`, `hidden_norm`, `layers.{i}.*`, `norm` of the checkpoint format."""

    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        m = len(cfg.target_layer_ids)
        self.fc = ReplicatedLinear(m * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DraftDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope_cos, self.rope_sin

    def context_kv(self, feats: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feats [..., T, m*d] (raw target hidden states), positions [..., T] -> per layer (k, v) [..., T, Hkv, D]."""
        ctx = self.hidden_norm(self.fc(feats.to(self.hidden_norm.weight.dtype)))
        return [layer.self_attn.project_kv(ctx, positions, self.rope) for layer in self.layers]

    def forward(
        self,
        block: torch.Tensor,
        positions: torch.Tensor,
        ctx_kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """block [B, Q, d] embeddings, positions [B, Q], per-layer ctx k/v, mask [B, 1, Q, S + Q] or None (no
        mask) -> [B, Q, d]."""
        x = block
        for layer, kv in zip(self.layers, ctx_kv, strict=True):
            x = layer(x, positions, kv, mask, self.rope)
        return self.norm(x)
