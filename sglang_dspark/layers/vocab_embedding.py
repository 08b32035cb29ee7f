"""Token embedding and LM head over the vocabulary (SGLang's VocabParallelEmbedding / ParallelLMHead role).

The table [V, d] is dense (``weight``) or kept block-quantized (``qweight``, ``--quantization``): a lookup then
dequantizes only the rows it reads, and the LM head multiplies with the quantized matmul, so a tied
embedding/LM head (a third of SmolLM2's weights) is read quantized once per decode step. ``weight`` of a
quantized table dequantizes the whole table on each access: for consumers that need it dense once (a
drafter sharing the target's embedding and LM head), not for the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.kernels.quant_formats import QuantizedWeight, dequantize, interleave
from sglang_dspark.kernels.quant_linear import quant_linear, quantized_rows


class VocabParallelEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        self.qweight: QuantizedWeight | None = None
        self.dense_dtype = torch.get_default_dtype()
        super().__init__(num_embeddings, embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        dense = self._parameters.get("weight")
        if dense is not None:
            return dense
        if self.qweight is None:
            raise AttributeError("weight")  # while nn.Embedding.__init__ registers the parameter
        return dequantize(self.qweight).to(self.dense_dtype)

    def set_quantized(self, qweight: QuantizedWeight) -> None:
        """Use ``qweight`` [V, d] (in the matmul's 16-row tiles where it has them) and drop the dense table (its
        dtype stays the lookups' dtype)."""
        if qweight.shape != (self.num_embeddings, self.embedding_dim):
            expected = (self.num_embeddings, self.embedding_dim)
            raise ValueError(f"quantized table of shape {qweight.shape}, expected {expected}")
        self.dense_dtype = self._parameters["weight"].dtype
        self._parameters["weight"] = None
        self.qweight = interleave(qweight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N] -> [N, d]."""
        if self.qweight is None:
            return F.embedding(ids, self.weight)
        return quantized_rows(self.qweight, ids).to(self.dense_dtype)

    def logits(self, hidden: torch.Tensor, linear_fn) -> torch.Tensor:
        """As the LM head: hidden [M, d] -> [M, V] float32 (``linear_fn`` for a dense table)."""
        if self.qweight is None:
            return linear_fn(hidden, self.weight, None).float()
        return quant_linear(hidden, self.qweight, None, float_out=True)
