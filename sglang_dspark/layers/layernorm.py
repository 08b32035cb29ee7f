"""RMSNorm with an optional fused residual add (SGLang's fused_add_rmsnorm contract).

Gemma's variant (``unit_offset``) scales by ``1 + weight`` and, as HF computes it, normalizes and scales in
float32 before casting back; it runs in torch (the native kernels implement Llama's rounding order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglang_dspark.kernels.cpu_ops import CpuOps


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size) if unit_offset else torch.ones(hidden_size))
        self.eps = eps
        self.unit_offset = unit_offset
        self.cpu_ops: CpuOps | None = None  # native kernels, set by the model runner

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [..., d] -> normed [..., d]; with residual: (norm(x + residual), x + residual)."""
        if self.cpu_ops is not None and not self.unit_offset:
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            if residual is None:
                return self.cpu_ops.rms_norm(flat, self.weight, self.eps).view(x.shape)
            normed, total = self.cpu_ops.add_rms_norm(flat, residual.reshape(flat.shape), self.weight, self.eps)
            return normed.view(x.shape), total.view(x.shape)
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.unit_offset:
            return (F.rms_norm(x.float(), (x.shape[-1],), None, self.eps) * (1.0 + self.weight.float())).to(x.dtype)
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # HF's order: normalize in float32, cast back, then scale; also far faster on CPU than torch's
        # reduced-precision rms_norm kernel.
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype) * self.weight
