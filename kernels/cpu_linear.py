"""bf16-weight linear layers on x86 CPUs without native bf16 GEMM (AVX2 + FMA, no AVX-512).

There PyTorch runs a bf16 ``x @ W^T`` as one matrix-vector product per row of ``x``, reading the
weights once per token: batch-8 decode is 8x slower than batch 1 and prefill slower still. The C++
kernel in ``csrc/bf16_linear.cpp`` reads every weight row once per tile of 4 rows of ``x`` and
accumulates in fp32. It is compiled on first use with torch's JIT extension builder (about a
minute; cached in ~/.cache/torch_extensions) and verified against ``F.linear`` before it is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

LinearFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (x [M, K], weight [N, K], bias [N]) -> [M, N]
SOURCE = Path(__file__).parent / "csrc" / "bf16_linear.cpp"


def cpu_lacks_bf16_gemm() -> bool:
    """True on CPUs where torch's bf16 matmul falls back to per-row products (below AVX-512)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT", "NO AVX")


@cache
def load_bf16_linear() -> LinearFn:
    """Build (once per process) and return the native kernel; raises RuntimeError if it can't be built."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise RuntimeError(f"the native bf16 linear kernel needs AVX2 + FMA (CPU capability: {capability})")
    from torch.utils.cpp_extension import load

    logger.info("building the native bf16 linear kernel (first use only, about a minute)")
    module = load(
        name="sglang_dspark_bf16_linear",
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],  # OpenMP: at::parallel_for threads
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    fn: LinearFn = module.bf16_linear
    _check_against_torch(fn)
    return fn


def _check_against_torch(fn: LinearFn) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 37, generator=gen).bfloat16()
    w = torch.randn(11, 37, generator=gen).bfloat16()
    b = torch.randn(11, generator=gen).bfloat16()
    want = F.linear(x.float(), w.float(), b.float())
    got = fn(x, w, b).float()
    if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
        raise RuntimeError(f"native bf16 linear kernel disagrees with torch (max error {(got - want).abs().max():.3g})")


def select_linear_fn(choice: str, device: str, dtype: torch.dtype) -> LinearFn:
    """The matmul for the model's linear layers: ``F.linear`` or the native bf16 kernel.

    ``auto`` takes the native kernel for bf16 on CPUs without native bf16 GEMM, and falls back to
    ``F.linear`` with a warning if it cannot be built; ``native`` insists on it (errors propagate).
    """
    wanted = device == "cpu" and dtype == torch.bfloat16 and choice != "torch"
    if not wanted or (choice == "auto" and not cpu_lacks_bf16_gemm()):
        return F.linear
    if choice == "native":
        return load_bf16_linear()
    try:
        return load_bf16_linear()
    except Exception as e:  # no compiler, no ninja, unexpected CPU: the model still runs, only slower
        logger.warning("native bf16 linear kernel unavailable (%s); using torch's bf16 matmul", e)
        return F.linear
