"""Decoder configuration read from an HF config.json (the fields our models use)."""

from __future__ import annotations

from dataclasses import dataclass

from sglang_dspark.layers.rotary_embedding import rope_theta_and_scaling

SLIDING, FULL = "sliding_attention", "full_attention"  # HF's layer_types


@dataclass(frozen=True)
class DecoderConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    hidden_act: str = "silu"  # the MLP's gate activation (HF hidden_act / hidden_activation)
    layer_types: tuple[str, ...] = ()  # SLIDING or FULL per layer; () = every layer FULL
    sliding_window: int | None = None  # keys a SLIDING layer's query sees, itself included
    local_rope_theta: float | None = None  # RoPE base of the SLIDING layers (no scaling); None = rope_theta
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5; None = head_dim ** -0.5
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)

    def layer_type(self, layer_id: int) -> str:
        return self.layer_types[layer_id] if self.layer_types else FULL

    def rope_of(self, layer_type: str) -> tuple[float, dict | None]:
        """(theta, scaling) of the RoPE that layers of ``layer_type`` use."""
        if layer_type == SLIDING and self.local_rope_theta is not None:
            return self.local_rope_theta, None
        return self.rope_theta, self.rope_scaling

    @classmethod
    def from_hf(cls, config: dict) -> DecoderConfig:
        archs = config.get("architectures") or ["<missing 'architectures'>"]
        heads = config["num_attention_heads"]
        eos = config.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        for unsupported in ("attn_logit_softcapping", "use_bidirectional_attention"):
            if config.get(unsupported):
                raise ValueError(f"unsupported model config: {unsupported}={config[unsupported]!r}")
        theta, scaling = rope_theta_and_scaling(config)
        layer_types = _layer_types(config)
        sliding = SLIDING in layer_types
        return cls(
            architecture=archs[0],
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            eos_token_ids=eos_ids,
            bos_token_id=config.get("bos_token_id"),
            hidden_act=config.get("hidden_activation") or config.get("hidden_act") or "silu",
            layer_types=layer_types if sliding else (),
            sliding_window=config["sliding_window"] if sliding else None,
            local_rope_theta=_local_rope_theta(config),
            query_pre_attn_scalar=config.get("query_pre_attn_scalar"),
            final_logit_softcapping=config.get("final_logit_softcapping"),
        )


def _layer_types(config: dict) -> tuple[str, ...]:
    """HF ``layer_types``, or Gemma 3's older ``sliding_window_pattern`` (every n-th layer global)."""
    if config.get("layer_types"):
        return tuple(config["layer_types"])
    pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern")
    if pattern is None and config.get("model_type") in ("gemma3", "gemma3_text"):
        pattern = 6
    if pattern is None:
        return ()
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(config["num_hidden_layers"]))


def _local_rope_theta(config: dict) -> float | None:
    """Gemma 3's RoPE base of the sliding layers: transformers 5.x ``rope_parameters`` per layer type, or
    4.x ``rope_local_base_freq``."""
    params = config.get("rope_parameters") or {}
    local = params.get(SLIDING) if isinstance(params.get(SLIDING), dict) else None
    if local is not None:
        if local.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope type {local['rope_type']!r} for the sliding-window layers")
        return float(local["rope_theta"])
    theta = config.get("rope_local_base_freq")
    return float(theta) if theta is not None else None
