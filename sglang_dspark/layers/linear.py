"""Linear layers named after their tensor-parallel role (SGLang's names).

Checkpoints keep q/k/v and gate/up as separate tensors; the merged layers load each one into
its own shard of one weight, so a forward runs one matmul instead of three (or two).

Under tensor parallelism (a ``TpGroup``) each rank keeps its slice of the checkpoint's tensors
(sglang_dspark/distributed/partition.py): column-parallel layers the rows of their output dimension,
row-parallel layers the columns of their input dimension, summed over the ranks by an all-reduce. Quantized
weights are sliced the same way, block by block: rows freely, columns only at block boundaries.

Every layer computes ``linear_fn(x, weight, bias)``: ``F.linear`` unless the model runner picks a
faster kernel for the hardware (sglang_dspark/kernels/cpu_ops.py); a layer whose weight is kept
block-quantized (``--quantization``) holds it as ``qweight`` instead and multiplies with the quantized
matmul (sglang_dspark/kernels/quant_linear.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.distributed.parallel_state import TpGroup
from sglang_dspark.distributed.partition import HeadShard, Span, even_span, head_shard
from sglang_dspark.kernels.cpu_ops import LinearFn
from sglang_dspark.kernels.quant_formats import (
    AnyQuantizedWeight,
    QuantizedWeight,
    concat_rows,
    interleave,
    quantize_q8_0,
)
from sglang_dspark.kernels.quant_linear import quant_linear


def slice_rows(w: torch.Tensor | QuantizedWeight, rows: Span) -> torch.Tensor | QuantizedWeight:
    """Rows [start, end) of w [N, K] (or of a bias [N])."""
    if isinstance(w, QuantizedWeight):
        return QuantizedWeight(w.fmt, w.data[rows.start : rows.end], w.cols)
    return w[rows.start : rows.end]


def slice_cols(w: torch.Tensor | QuantizedWeight, cols: Span) -> torch.Tensor | QuantizedWeight:
    """Columns [start, end) of w [N, K]; a quantized weight only at whole blocks."""
    if not isinstance(w, QuantizedWeight):
        return w[:, cols.start : cols.end]
    block = w.fmt.block_weights
    if cols.start % block or cols.size % block:
        raise ValueError(
            f"a {w.fmt.name} weight splits only at multiples of {block} input columns, not [{cols.start}, "
            f"{cols.end}); run this --tp-size with --quantization none"
        )
    per_block = w.fmt.block_bytes
    data = w.data[:, cols.start // block * per_block : cols.end // block * per_block].contiguous()
    return QuantizedWeight(w.fmt, data, cols.size)


class LinearBase(nn.Module):
    """y = x W^T (+ b) with W [out_features, in_features], dense (``weight``) or quantized (``qweight``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.linear_fn: LinearFn = F.linear
        self.qweight: AnyQuantizedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        if x.dim() == 2:  # the runtime's [tokens, in]: no reshapes (a decode step makes hundreds of these calls)
            return self._matmul(x, self.bias)
        return self._matmul(x.reshape(-1, x.shape[-1]), self.bias).view(*x.shape[:-1], -1)

    def _matmul(self, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """flat [M, in] -> [M, out]."""
        if self.qweight is not None:
            return quant_linear(flat, self.qweight, bias)
        return self.linear_fn(flat, self.weight, bias)

    def load_weight(self, tensor: torch.Tensor | QuantizedWeight) -> None:
        """Load this layer's weight [out, in], dense or quantized."""
        if isinstance(tensor, QuantizedWeight):
            self.set_quantized(tensor)
            return
        if tensor.shape != self.weight.shape:
            raise ValueError(f"weight of shape {tuple(tensor.shape)}, expected {tuple(self.weight.shape)}")
        with torch.no_grad():
            self.weight.copy_(tensor)

    def set_quantized(self, qweight: AnyQuantizedWeight) -> None:
        """Use ``qweight`` [out, in] (Q4_x / Q5_x / Q8_0 repacked in the matmul's 16-row tiles) and drop the dense
        weight."""
        if qweight.shape != (self.out_features, self.in_features):
            expected = (self.out_features, self.in_features)
            raise ValueError(f"quantized weight of shape {qweight.shape}, expected {expected}")
        self.weight = None
        self.qweight = interleave(qweight)


class ReplicatedLinear(nn.Linear):
    """``nn.Linear`` (same initialisation and state-dict names, so trainable drafter modules keep their
    checkpoint format) whose matmul is ``linear_fn``, like LinearBase; for inference its weight can be
    quantized to Q8_0 (``quantize``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.linear_fn: LinearFn = F.linear
        self.qweight: AnyQuantizedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]."""
        flat = x.reshape(-1, x.shape[-1])
        if self.qweight is not None:
            return quant_linear(flat, self.qweight, self.bias).view(*x.shape[:-1], -1)
        return self.linear_fn(flat, self.weight, self.bias).view(*x.shape[:-1], -1)

    def quantize(self) -> None:
        """Multiply with the weight in Q8_0 blocks from now on (inference only: the dense weight is dropped)."""
        self.qweight = interleave(quantize_q8_0(self.weight))
        self.weight = None


class ColumnParallelLinear(LinearBase):
    """The output dimension is split into named shards; under tensor parallelism each rank holds the rows
    ``shards[name]`` of every checkpoint tensor ``name`` (the whole tensor without)."""

    def __init__(self, in_features: int, shards: dict[str, Span], bias: bool = False) -> None:
        offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, span in shards.items():
            offsets[name] = (offset, span.size)
            offset += span.size
        super().__init__(in_features, offset, bias)
        self.shards = shards
        self.shard_offsets = offsets
        self._quantized_shards: dict[str, QuantizedWeight] = {}

    def load_shard(self, shard: str, tensor: torch.Tensor | QuantizedWeight, is_bias: bool = False) -> None:
        """Load this rank's rows of the checkpoint tensor ``shard`` (q, k, v, gate or up)."""
        tensor = slice_rows(tensor, self.shards[shard])
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
    """q, k and v of this rank's attention heads (all heads without tensor parallelism)."""

    def __init__(
        self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool, tp: TpGroup | None = None
    ) -> None:
        if tp is None:
            self.heads = HeadShard(Span(0, num_heads), Span(0, num_kv_heads))
        else:
            self.heads = head_shard(num_heads, num_kv_heads, tp.size, tp.rank)
        q, kv = self.heads.q_heads, self.heads.kv_heads
        super().__init__(
            hidden,
            {
                "q": Span(q.start * head_dim, q.size * head_dim),
                "k": Span(kv.start * head_dim, kv.size * head_dim),
                "v": Span(kv.start * head_dim, kv.size * head_dim),
            },
            bias,
        )
        self.q_size = q.size * head_dim
        self.kv_size = kv.size * head_dim


class MergedColumnParallelLinear(ColumnParallelLinear):
    """gate and up projections of a gated MLP in one weight (this rank's part of the intermediate size)."""

    def __init__(self, hidden: int, intermediate: int, tp: TpGroup | None = None) -> None:
        part = even_span(intermediate, tp.size, tp.rank, "MLP channels") if tp else Span(0, intermediate)
        super().__init__(hidden, {"gate": part, "up": part})


class RowParallelLinear(LinearBase):
    """The input dimension is split (o_proj, down_proj): each rank multiplies its columns ``cols`` of the
    weight with its part of the input, and the all-reduce sums the partial outputs; the bias is added once,
    after the sum."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp: TpGroup | None = None,
        cols: Span | None = None,
    ) -> None:
        """``cols``: this rank's columns of the full [out, in_features] weight (all of them by default)."""
        self.cols = cols or Span(0, in_features)
        super().__init__(self.cols.size, out_features, bias)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in / tp] -> [..., out], summed over the ranks."""
        if self.tp is None:
            return super().forward(x)
        out = self.tp.all_reduce(self._matmul(x.reshape(-1, x.shape[-1]), None))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], -1)

    def load_weight(self, tensor: torch.Tensor | QuantizedWeight) -> None:
        """Load this rank's columns of the checkpoint's full weight [out, in]."""
        super().load_weight(slice_cols(tensor, self.cols))
