"""One native call per forward for a decoder stack with block-quantized weights (csrc_avx512/decoder_layer.cpp).

A decode step of the 30-layer SmolLM2 called about 20 small ops per layer from Python (norms, the three
quantized matmuls, splits and views, rotary, the KV writes, pool attention, SiLU * up): 3-4 ms of a 9 ms step
on the 2-core Zen 4 host was Python and op dispatch, not math. ``FusedDecoder`` runs the whole stack in C++
over the same kernels and torch ops, in the same order, so its output is bit for bit the modules' (checked
by tests/kernels/test_fused_decoder.py) and batch-invariant like them.

It takes Llama-family layers (Llama / SmolLM2, Qwen2 with q/k/v biases, Qwen3 with per-head q/k norms) and
Gemma 3's (norms scaling by 1 + weight in fp32, around the attention and the MLP; GeGLU; sliding-window layers
attending through the windowed metadata) whose four linear layers are block-quantized, on one process (no
tensor parallelism), over the all-in-pool attention that quantized models run (layers/attention.py,
``PoolShortGroup``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sglang_dspark.kernels.quant_formats import AnyQuantizedWeight, QuantizedRowStack
from sglang_dspark.kernels.quant_linear import load_quant_module

# cos, sin [N, 1, D]; then query n attends to the first kv_lens[n] slots of kv_slots[q_rows[n]]:
# (cos, sin, kv_slots [B, S], q_rows [N], kv_lens [N])
PoolBatch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class FusedLayerWeights:
    """What one decoder layer needs, as the modules hold it."""

    input_norm: Tensor  # [d]
    post_norm: Tensor  # [d]
    qkv: AnyQuantizedWeight  # [q + 2 kv, d]
    qkv_bias: Tensor | None
    o: AnyQuantizedWeight
    gate_up: AnyQuantizedWeight  # [2 i, d], gate rows first
    down: AnyQuantizedWeight
    q_norm: Tensor | None  # [head_dim] (Qwen3, Gemma 3)
    k_norm: Tensor | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    scale: float
    native_rotary: bool  # the native rotary kernel (bf16); False: torch's elementwise ops (fp32)
    gemma: bool = False  # Gemma 3's norms (1 + weight, fp32), sandwich norms and GeGLU
    pre_ff_norm: Tensor | None = None  # Gemma 3: before the MLP (post_norm is after the attention)
    post_ff_norm: Tensor | None = None  # Gemma 3: after the MLP
    sliding: bool = False  # a sliding-window layer: attends through the windowed batch


class FusedDecoder:
    """The decoder stack as one native object; ``forward`` runs its first ``num_layers`` layers."""

    def __init__(self, layers: list[FusedLayerWeights], module=None) -> None:
        """``module``: the compiled extension to run (default: this checkout's; benchmarks/bench_fused_ab.py
        passes another commit's)."""
        self._module = module or load_quant_module()
        self._stack = self._module.DecoderStack([native_layer(self._module, w) for w in layers])

    def forward(
        self,
        x: Tensor,
        kv_pool,
        loc: Tensor,
        full: PoolBatch | tuple[()],
        windowed: PoolBatch | tuple[()],
        num_layers: int,
        capture: list[int],
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """x [N, d] embeddings; kv_pool's buffers take the new keys at ``loc`` [N]; global layers attend with
        ``full``, sliding-window layers with ``windowed`` (``()`` where the model has no layers of that kind).
        Returns (the last layer's output before its residual add, the residual, x + residual after each layer in
        ``capture``)."""
        pool = kv_pool.k_buffer, kv_pool.v_buffer
        return self._stack.forward(x, *pool, loc, list(full), list(windowed), num_layers, capture)


def native_linear(module, weight: AnyQuantizedWeight, bias: Tensor | None = None):
    """The extension's QuantLinear over ``weight`` (one part per format of a row stack)."""
    parts = weight.parts if isinstance(weight, QuantizedRowStack) else [weight]
    return module.QuantLinear([p.data for p in parts], [p.fmt.kernel_id for p in parts], parts[0].cols, bias)


def native_layer(module, w: FusedLayerWeights):
    """The extension's DecoderLayer over ``w``."""
    return module.DecoderLayer(
        w.input_norm,
        w.post_norm,
        w.q_norm,
        w.k_norm,
        native_linear(module, w.qkv, w.qkv_bias),
        native_linear(module, w.o),
        native_linear(module, w.gate_up),
        native_linear(module, w.down),
        w.num_heads,
        w.num_kv_heads,
        w.head_dim,
        w.eps,
        w.scale,
        w.native_rotary,
        w.gemma,
        w.pre_ff_norm,
        w.post_ff_norm,
        w.sliding,
    )
