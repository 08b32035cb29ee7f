"""Linear layers named after their tensor-parallel role (SGLang's names).

Checkpoints keep q/k/v and gate/up as separate tensors; the merged layers load each one into
its own shard of one weight, so a forward runs one matmul instead of three (or two). A later
tensor-parallel change shards these along the output (column) or input (row) dimension
without touching the models.

Every layer computes ``linear_fn(x, weight, bias)``: ``F.linear`` unless the model runner picks a
faster kernel for the hardware (sglang_dspark/kernels/cpu_ops.py); a layer whose weight is kept
block-quantized (``--quantization``) holds it as ``qweight`` instead and multiplies with the quantized
matmul (sglang_dspark/kernels/quant_linear.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.kernels.cpu_ops import LinearFn
from sglang_dspark.kernels.quant_formats import QuantizedWeight, concat_rows
from sglang_dspark.kernels.quant_linear import quant_linear


class LinearBase(nn.Module):
    """y = x W^T (+ b) with W [out_features, in_features], dense (``weight``) or quantized (``qweight``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.linear_fn: LinearFn = F.linear
        self.qweight: QuantizedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        flat = x.reshape(-1, x.shape[-1])
        if self.qweight is not None:
            return quant_linear(flat, self.qweight, self.bias).view(*x.shape[:-1], -1)
        return self.linear_fn(flat, self.weight, self.bias).view(*x.shape[:-1], -1)

    def set_quantized(self, qweight: QuantizedWeight) -> None:
        """Use ``qweight`` [out, in] and drop the dense weight."""
        if qweight.shape != (self.out_features, self.in_features):
            expected = (self.out_features, self.in_features)
            raise ValueError(f"quantized weight of shape {qweight.shape}, expected {expected}")
        self.weight = None
        self.qweight = qweight


class ReplicatedLinear(nn.Linear):
    """``nn.Linear`` (same initialisation and state-dict names, so trainable drafter modules keep their
    checkpoint format) whose matmul is ``linear_fn``, like LinearBase."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.linear_fn: LinearFn = F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        flat = x.reshape(-1, x.shape[-1])
        return self.linear_fn(flat, self.weight, self.bias).view(*x.shape[:-1], -1)


class ColumnParallelLinear(LinearBase):
    """The output dimension is split into named shards."""

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool = False) -> None:
        offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in shard_sizes.items():
            offsets[name] = (offset, size)
            offset += size
        super().__init__(in_features, offset, bias)
        self.shard_offsets = offsets
        self._quantized_shards: dict[str, QuantizedWeight] = {}

    def load_shard(self, shard: str, tensor: torch.Tensor | QuantizedWeight, is_bias: bool = False) -> None:
        start, size = self.shard_offsets[shard]
        if isinstance(tensor, QuantizedWeight):  # kept until every shard is there, then merged row-wise
            if tensor.shape != (size, self.in_features):
                raise ValueError(f"shard {shard!r}: expected {size} x {self.in_features}, got {tensor.shape}")
            self._quantized_shards[shard] = tensor
            if len(self._quantized_shards) == len(self.shard_offsets):
                self.set_quantized(concat_rows([self._quantized_shards.pop(s) for s in self.shard_offsets]))
            return
        target = self.bias if is_bias else self.weight
        if tensor.shape[0] != size or (not is_bias and tensor.shape[1:] != target.shape[1:]):
            raise ValueError(f"shard {shard!r}: expected {size} x {tuple(target.shape[1:])}, got {tuple(tensor.shape)}")
        with torch.no_grad():
            target[start : start + size].copy_(tensor)


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool) -> None:
        super().__init__(
            hidden,
            {"q": num_heads * head_dim, "k": num_kv_heads * head_dim, "v": num_kv_heads * head_dim},
            bias,
        )
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim


class MergedColumnParallelLinear(ColumnParallelLinear):
    """gate and up projections of a gated MLP in one weight."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__(hidden, {"gate": intermediate, "up": intermediate})


class RowParallelLinear(LinearBase):
    """Input dimension is the one a tensor-parallel run would split (o_proj, down_proj)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)
