"""Which weights a model keeps quantized (``--quantization``) and in what form.

- ``auto``: a converted GGUF keeps its own block-quantized tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
  Q6_K: kernels/quant_formats.py); a dense checkpoint stays dense, as with ``none``;
- ``none``: every weight dense (GGUF blocks dequantized at load, in the model's dtype);
- ``int8``: every linear weight and the embedding / LM head quantized to Q8_0 blocks (int8 per 32 weights
  with an fp16 scale) after loading, from any checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from sglang_dspark.kernels.quant_formats import FORMATS, QuantizedWeight, quantize_q8_0
from sglang_dspark.layers.linear import LinearBase
from sglang_dspark.layers.vocab_embedding import VocabParallelEmbedding
from sglang_dspark.models.model_source import ModelLoadError
from sglang_dspark.models.weights import GGUFBlocks


def prepare_weights(
    weights: Iterable[tuple[str, torch.Tensor | GGUFBlocks]], keep_blocks: bool
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """The checkpoint's tensors as the model loads them: GGUF blocks as QuantizedWeight (``keep_blocks``) or
    dequantized to float32. Raises ModelLoadError for blocks of a type the quantized kernel lacks."""
    for name, value in weights:
        if not isinstance(value, GGUFBlocks):
            yield name, value
        elif not keep_blocks:
            yield name, dequantize_blocks(value)
        elif value.ggml_type in FORMATS:
            yield name, QuantizedWeight(FORMATS[value.ggml_type], value.data, value.cols)
        else:
            raise ModelLoadError(
                f"tensor {name!r} is quantized as {value.ggml_type}, which the quantized path does not support "
                f"(supported: {', '.join(FORMATS)}); run with --quantization none to dequantize it at load"
            )


def dequantize_blocks(blocks: GGUFBlocks) -> torch.Tensor:
    """GGUF blocks of any GGML type -> float32 [rows, cols] (gguf-py's dequantizer)."""
    import gguf

    dense = gguf.quants.dequantize(blocks.data.numpy(), gguf.GGMLQuantizationType[blocks.ggml_type])
    return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))


def quantize_to_int8(model: nn.Module) -> None:
    """Quantize every dense linear weight and vocabulary table of ``model`` to Q8_0 (``--quantization int8``)."""
    for module in model.modules():
        if isinstance(module, (LinearBase, VocabParallelEmbedding)) and module.qweight is None:
            module.set_quantized(quantize_q8_0(module.weight))


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's quantized weights (what a decode step streams of them)."""
    return sum(m.qweight.nbytes for m in model.modules() if getattr(m, "qweight", None) is not None)
