"""Llama-family decoder (Llama, SmolLM2) over a flat ragged batch; Qwen2/Qwen3 subclass it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.distributed.parallel_state import TpGroup
from sglang_dspark.distributed.partition import Span, even_span
from sglang_dspark.kernels.cpu_ops import LinearFn, RotaryFn
from sglang_dspark.kernels.fused_decoder import FusedDecoder, FusedLayerWeights
from sglang_dspark.kernels.quant_formats import QuantizedWeight
from sglang_dspark.layers.attention import PoolShortGroup, paged_attention
from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from sglang_dspark.layers.rotary_embedding import RotaryEmbedding, apply_rotary
from sglang_dspark.layers.vocab_embedding import VocabParallelEmbedding
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.models.config import FULL, SLIDING, DecoderConfig

NormFactory = Callable[[int, float], RMSNorm]  # (size, eps) -> the model's RMSNorm
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [M, V] float32, rows = forward_batch.logits_indices
    hidden_states: list[torch.Tensor]  # one [N, d] per forward_batch.capture_layers entry


class LlamaAttention(nn.Module):
    """This rank's attention heads (all of them without tensor parallelism); ``qk_norm``: the per-head
    norm of q and k (Qwen3, Gemma 3), or None."""

    def __init__(
        self, cfg: DecoderConfig, layer_id: int, qkv_bias: bool, qk_norm: NormFactory | None, tp: TpGroup | None
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = cfg.head_dim
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.sliding_window = cfg.sliding_window if cfg.layer_type(layer_id) == SLIDING else None
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, qkv_bias, tp)
        q_heads = self.qkv_proj.heads.q_heads
        self.num_heads, self.num_kv_heads = q_heads.size, self.qkv_proj.heads.kv_heads.size
        o_cols = Span(q_heads.start * cfg.head_dim, q_heads.size * cfg.head_dim)
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, tp=tp, cols=o_cols)
        self.q_norm = qk_norm(cfg.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.k_norm = qk_norm(cfg.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.rotary_fn: RotaryFn = apply_rotary  # the native kernel where the model runner loads it

    def forward(self, x: torch.Tensor, fb: ForwardBatch, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.qkv_proj.q_size, self.qkv_proj.kv_size, self.qkv_proj.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_fn(q, k, *cos_sin)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, self.layer_id, fb, self.scale, self.sliding_window)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, tp: TpGroup | None) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, tp)
        part = even_span(cfg.intermediate_size, tp.size, tp.rank, "MLP channels") if tp else None
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, tp=tp, cols=part)
        try:
            self.act = ACTIVATIONS[cfg.hidden_act]
        except KeyError:
            supported = sorted(ACTIVATIONS)
            raise ValueError(f"unsupported MLP activation {cfg.hidden_act!r}; supported: {supported}") from None
        # the native SiLU(gate) * up where the model runner loads it, for a SiLU activation
        self.silu_mul_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.silu_mul_fn is not None and self.act is F.silu:
            return self.down_proj(self.silu_mul_fn(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


def fused_weights(
    attn: LlamaAttention, mlp: LlamaMLP, act: Callable[[torch.Tensor], torch.Tensor], **norms
) -> FusedLayerWeights | None:
    """A layer's weights for the fused stack (kernels/fused_decoder.py), or None where it cannot run there:
    a dense linear layer, tensor parallelism, another activation, SiLU without its native kernel (the stack's).
    ``norms``: the layer's own norm weights and flags (FusedLayerWeights' fields)."""
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    if any(m.qweight is None for m in linears) or attn.o_proj.tp is not None or mlp.act is not act:
        return None
    if act is F.silu and mlp.silu_mul_fn is None:
        return None
    return FusedLayerWeights(
        qkv=attn.qkv_proj.qweight,
        qkv_bias=attn.qkv_proj.bias,
        o=attn.o_proj.qweight,
        gate_up=mlp.gate_up_proj.qweight,
        down=mlp.down_proj.qweight,
        q_norm=None if attn.q_norm is None else attn.q_norm.weight,
        k_norm=None if attn.k_norm is None else attn.k_norm.weight,
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        scale=attn.scale,
        native_rotary=attn.rotary_fn is not apply_rotary,
        sliding=attn.sliding_window is not None,
        **norms,
    )


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, cfg: DecoderConfig, layer_id: int, qkv_bias: bool, qk_norm: NormFactory | None, tp: TpGroup | None
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer_id, qkv_bias, qk_norm, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg, tp)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        fb: ForwardBatch,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (layer output before the residual add, residual); their sum is the layer's output."""
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, fb, cos_sin)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual

    def fused_weights(self) -> FusedLayerWeights | None:
        """This layer in the fused stack: it needs the native norm kernels (the model runner's)."""
        attn = self.self_attn
        norms = [self.input_layernorm, self.post_attention_layernorm, attn.q_norm, attn.k_norm]
        if any(n is not None and (n.cpu_ops is None or n.unit_offset) for n in norms):
            return None
        w = self.input_layernorm
        return fused_weights(attn, self.mlp, F.silu, input_norm=w.weight, post_norm=norms[1].weight, eps=w.eps)


class LlamaForCausalLM(nn.Module):
    """The whole model, or with ``tp`` this rank's share of it: every decoder layer split across the ranks,
    the embedding, the norms and the LM head replicated (so the residual stream, the captured hidden states
    and the logits are whole on every rank)."""

    qk_norm = False  # Qwen3 normalises q and k per head
    norm_factory: NormFactory = RMSNorm  # every RMSNorm of the model (Gemma: weights offset by one)

    def __init__(self, cfg: DecoderConfig, tp: TpGroup | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(self.decoder_layer(cfg, i, tp) for i in range(cfg.num_layers))
        self.norm = self.norm_factory(cfg.hidden_size, cfg.rms_norm_eps)
        # one RoPE table per layer type with its own base (Gemma 3's sliding and global layers)
        self.rotary = nn.ModuleDict(
            {
                kind: RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, *cfg.rope_of(kind))
                for kind in sorted({cfg.layer_type(i) for i in range(cfg.num_layers)})
            }
        )
        self.lm_head = None if cfg.tie_word_embeddings else VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.linear_fn: LinearFn = F.linear  # the LM head's matmul, like LinearBase.linear_fn
        self.fused_decoder: FusedDecoder | None = None  # the decoder layers as one native call (fuse_decoder)

    def decoder_layer(self, cfg: DecoderConfig, layer_id: int, tp: TpGroup | None) -> nn.Module:
        qk_norm = self.norm_factory if self.qk_norm else None
        return LlamaDecoderLayer(cfg, layer_id, self.qkv_bias(cfg), qk_norm, tp)

    @staticmethod
    def qkv_bias(cfg: DecoderConfig) -> bool:
        return cfg.attention_bias

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N] -> the first layer's input [N, d]."""
        return self.embed_tokens(ids)

    @property
    def lm_head_module(self) -> VocabParallelEmbedding:
        return self.embed_tokens if self.lm_head is None else self.lm_head

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The LM head [V, d], dense (dequantized on each access when kept quantized)."""
        return self.lm_head_module.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [M, d] (after the final norm) -> logits [M, V] float32."""
        return self.lm_head_module.logits(hidden, self.linear_fn)

    def fuse_decoder(self) -> bool:
        """Run the decoder layers as one native call per forward (kernels/fused_decoder.py), bit for bit what
        the modules compute, wherever the batch attends in the pool. Needs every layer's ``fused_weights``
        (block-quantized linear layers, no tensor parallelism); returns whether the model now runs fused."""
        weights = [layer.fused_weights() for layer in self.layers]
        if any(w is None for w in weights):
            return False
        self.fused_decoder = FusedDecoder(weights)
        return True

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> ModelOutput:
        capture = fb.capture_layers
        x = self.embed(fb.input_ids)
        cos_sin = {kind: rotary.cos_sin(fb.positions, x.dtype) for kind, rotary in self.rotary.items()}
        captured = {-1: x} if -1 in capture else {}
        num_layers = len(self.layers) if fb.num_layers is None else fb.num_layers
        batches = self._fused_batches(fb, cos_sin) if self.fused_decoder is not None else None
        if batches is not None:
            hidden = [i for i in capture if i >= 0]
            x, residual, states = self.fused_decoder.forward(
                x, fb.kv_pool, fb.out_cache_loc, *batches, num_layers, hidden
            )
            captured.update(zip(hidden, states))
        else:
            residual = None
            for i, layer in enumerate(self.layers[:num_layers]):
                x, residual = layer(x, residual, fb, cos_sin[self.config.layer_type(i)])
                if i in capture:
                    captured[i] = x + residual
        x, _ = self.norm(x, residual)
        logits = self.compute_logits(x[fb.logits_indices])
        return ModelOutput(logits, [captured[i] for i in capture])

    @staticmethod
    def _fused_batches(fb: ForwardBatch, cos_sin: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        """The fused stack's (full, windowed) pool batches; None where some query attends outside the pool."""
        batches = []
        for kind, meta in ((FULL, fb.attn_metadata), (SLIDING, getattr(fb.attn_metadata, "windowed", None))):
            if kind not in cos_sin:  # no layers of this kind
                batches.append(())
                continue
            short = getattr(meta, "short", None)
            if not isinstance(short, PoolShortGroup) or short.q_index is not None:
                return None
            batches.append((*cos_sin[kind], short.kv_slots, short.q_rows, short.kv_lens))
        return batches

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | QuantizedWeight]]) -> None:
        """Load HF-named tensors (model.layers.{i}.self_attn.q_proj.weight, ...). Raises on missing/extra.

        A QuantizedWeight replaces its linear layer's or embedding's dense weight (the layer keeps it quantized).
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        merged = {
            "q_proj": ("qkv_proj", "q"),
            "k_proj": ("qkv_proj", "k"),
            "v_proj": ("qkv_proj", "v"),
            "gate_proj": ("gate_up_proj", "gate"),
            "up_proj": ("gate_up_proj", "up"),
        }
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if "rotary_emb" in name or (name == "lm_head.weight" and self.lm_head is None):
                continue
            parts = name.split(".")
            if len(parts) >= 2 and parts[-2] in merged:
                module_name, shard = merged[parts[-2]]
                target = ".".join(parts[:-2] + [module_name])
                self.get_submodule(target).load_shard(shard, tensor, is_bias=parts[-1] == "bias")
                loaded.add(f"{target}.{parts[-1]}:{shard}")
                continue
            if name not in params:
                raise ValueError(f"unexpected weight {hf_name!r} for {type(self).__name__}")
            module = self.get_submodule(name.removesuffix(".weight"))
            if isinstance(module, RowParallelLinear) and name.endswith(".weight"):  # this rank's columns
                module.load_weight(tensor)
                loaded.add(name)
                continue
            if isinstance(tensor, QuantizedWeight):
                self.get_submodule(name.removesuffix(".weight")).set_quantized(tensor)
                loaded.add(name)
                continue
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"weight {hf_name!r}: expected shape {tuple(params[name].shape)}, got {tuple(tensor.shape)}"
                )
            with torch.no_grad():
                params[name].copy_(tensor)
            loaded.add(name)
        missing = [n for n in self._expected_weight_keys() if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")

    def _expected_weight_keys(self) -> list[str]:
        keys = []
        for name, module in self.named_modules():
            own = [n for n, _ in module.named_parameters(recurse=False)]
            shards = getattr(module, "shard_offsets", None)
            for p in own:
                keys += [f"{name}.{p}:{s}" for s in shards] if shards else [f"{name}.{p}"]
        return keys
