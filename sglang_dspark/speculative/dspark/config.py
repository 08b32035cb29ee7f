"""Drafter configuration and its DeepSpec-compatible config.json form (docs/design.md "Drafter checkpoint")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")


@dataclass(frozen=True)
class DSparkConfig:
    # decoder shape (HF names)
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    # DSpark
    block_size: int = 7  # gamma: the anchor plus block_size - 1 mask tokens give block_size drafts
    target_layer_ids: tuple[int, ...] = (-1,)  # -1 = the target's embedding output
    num_target_layers: int = 1
    mask_token_id: int = 0
    markov_rank: int = 256  # 0 = no Markov head (DFlash)
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    num_anchors: int = 32  # training: anchor blocks sampled per sequence
    architectures: tuple[str, ...] = field(default=("Qwen3DSparkModel",))

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_layer_ids", tuple(int(i) for i in self.target_layer_ids))
        object.__setattr__(self, "architectures", tuple(self.architectures))
        ids = self.target_layer_ids
        if not ids or any(b <= a for a, b in zip(ids, ids[1:])):
            raise ValueError(f"target_layer_ids must be non-empty and strictly increasing, got {ids}")
        if ids[0] < -1 or ids[-1] >= self.num_target_layers:
            raise ValueError(f"target_layer_ids {ids} out of range [-1, {self.num_target_layers - 1}]")
        if self.markov_rank > 0 and self.markov_head_type not in MARKOV_HEAD_TYPES:
            raise ValueError(f"markov_head_type must be one of {MARKOV_HEAD_TYPES}, got {self.markov_head_type!r}")
        if self.confidence_head_with_markov and self.enable_confidence_head and self.markov_rank == 0:
            raise ValueError("confidence_head_with_markov needs a Markov head (markov_rank > 0)")
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")

    @property
    def has_markov(self) -> bool:
        return self.markov_rank > 0

    def to_hf_dict(self) -> dict:
        out = asdict(self)
        out["target_layer_ids"] = list(self.target_layer_ids)
        out["architectures"] = list(self.architectures)
        out.update(model_type="qwen3", attention_bias=False, tie_word_embeddings=False, hidden_act="silu")
        return out

    @classmethod
    def from_hf_dict(cls, config: dict) -> DSparkConfig:
        """Read a DeepSpec-style config.json; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        heads = config["num_attention_heads"]
        kwargs.setdefault("head_dim", config["hidden_size"] // heads)
        kwargs.setdefault("num_key_value_heads", heads)
        if "rope_theta" not in config and isinstance(config.get("rope_parameters"), dict):
            kwargs["rope_theta"] = config["rope_parameters"].get("rope_theta", 10000.0)
        return cls(**kwargs)
