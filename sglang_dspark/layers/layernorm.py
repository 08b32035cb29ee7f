"""RMSNorm with an optional fused residual add (SGLang's fused_add_rmsnorm contract)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [..., d] -> normed [..., d]; with residual: (norm(x + residual), x + residual)."""
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # one fused op; torch accumulates bf16 inputs in float32 internally
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
