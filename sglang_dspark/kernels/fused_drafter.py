"""The DSpark drafter with block-quantized weights as three native calls per draft (csrc_avx512/drafter.cpp).

A draft of the shipped one-layer drafter called about 280 small ops from Python: the context keys/values of
the new positions, the layer over the block, the draft vocabulary's LM head, then per draft step the Markov
head's embedding lookup, its W2 product, the sum and the argmax, and the confidence head. On the 2-core Zen 4
host that was about 2.9 ms per round against a 5 ms target step, most of it dispatch, and it decided whether
speculation paid at all on code (benchmarks/results/spec.md). ``FusedDrafter`` runs the same layer as the
fused decoder (decoder_layer.cpp, attending over each request's context buffers and its own block), the LM
head in fp32, and the greedy Markov walk with the confidence head in one loop.

Drafts are the modules' up to the attention's summation order (torch's SDPA there, the pool-attention kernel
here): tests/kernels/test_fused_drafter.py checks the tokens and confidences against the modules. Sampled and
grammar-masked drafts take the block from here and walk the Markov head in Python (drafter.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sglang_dspark.kernels.fused_decoder import FusedLayerWeights, native_layer, native_linear
from sglang_dspark.kernels.quant_formats import AnyQuantizedWeight, QuantizedWeight
from sglang_dspark.kernels.quant_linear import load_quant_module


@dataclass(frozen=True)
class FusedDrafterWeights:
    """What the drafter's backbone and heads need, as its modules hold them."""

    fc: AnyQuantizedWeight  # [d, m d]
    hidden_norm: Tensor  # [d]
    layers: list[FusedLayerWeights]
    context_kv: list[AnyQuantizedWeight]  # per layer its k and v projection rows [2 kv, d]
    norm: Tensor  # [d]
    rope_cos: Tensor  # [positions, D] in the layers' dtype
    rope_sin: Tensor
    lm_head: QuantizedWeight  # [K, d], the draft vocabulary's rows
    vocab: Tensor  # [K] int64
    markov_w1: Tensor | None  # [V, r] (a vanilla Markov head), None without one
    markov_w2: Tensor | None  # [K, r]
    conf_weight: Tensor | None  # [d] or [d + r], None without a confidence head
    conf_bias: Tensor | None  # [1]


class FusedDrafter:
    def __init__(self, w: FusedDrafterWeights) -> None:
        m = load_quant_module()
        heads = m.DraftHeads(native_linear(m, w.lm_head), w.vocab, w.markov_w1, w.markov_w2, w.conf_weight, w.conf_bias)
        layers = [native_layer(m, layer) for layer in w.layers]
        context_kv = [native_linear(m, kv) for kv in w.context_kv]
        self._stack = m.DraftStack(
            native_linear(m, w.fc), w.hidden_norm, layers, context_kv, w.norm, w.rope_cos, w.rope_sin, heads
        )

    def context(self, feats: Tensor, positions: Tensor) -> list[tuple[Tensor, Tensor]]:
        """feats [T, m d] target features, positions [T] -> per layer (keys, values) [T, Hkv, D]."""
        kv = self._stack.context(feats, positions)
        return list(zip(kv[0::2], kv[1::2], strict=True))

    def block(
        self,
        embeds: Tensor,
        positions: Tensor,
        keys: list[list[Tensor]],
        values: list[list[Tensor]],
        lengths: list[int],
    ) -> tuple[Tensor, Tensor]:
        """embeds [R G, d], positions [R G]; keys[r] / values[r]: request r's context buffers per layer, their
        first lengths[r] rows valid and G more rows free (the block's keys go there) -> (hidden [R G, d], base
        logits [R G, K] fp32)."""
        flat_k = [t for per_request in keys for t in per_request]
        flat_v = [t for per_request in values for t in per_request]
        return self._stack.block(embeds, positions, flat_k, flat_v, lengths)

    def greedy_walk(self, hidden: Tensor, base: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor | None]:
        """hidden [R, G, d], base [R, G, K], anchors [R] -> (tokens [R, G], confidence logits [R, G] or None)."""
        return self._stack.greedy_walk(hidden, base, anchors)  # an undefined tensor comes back as None
