"""The matmul over block-quantized weights (``--quantization``): native AVX-512 kernel, csrc_avx512/.

Formats: every one of kernels/quant_formats.py (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K,
Q6_K), each decoded exactly as gguf-py dequantizes it.

Why native and not torch's built-in ops (measured on the 2-core Sapphire Rapids host, 2 threads, a
576 x 1536 weight): ``torch.ops.aten._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` beat bf16
``F.linear`` only at batch 1 (364 / 423 us vs 1018 us) and slow down almost linearly with the rows of x
(at 64 rows 5500 / 4437 us vs 724 us for bf16): they re-read the weights per row, so verify chains, batched
decode and prefill would lose; their scales are also bf16 where GGUF's are fp16 (int4pack would round every
Q4_1 scale and minimum) and they have no K-quant or 5-bit layout. This kernel reads GGUF's blocks as stored
(no repacking, fp16 scales exact), decodes each weight row once per call (per 64 rows of x) into fp32 and
multiplies it with the whole tile of rows (see quant_linear.cpp), each output row computed the same way
whatever the batch: at 1 / 4 / 16 / 64 rows of a 3072 x 576 Q4_1 weight 119 / 119 / 277 / 894 us (bf16
``F.linear``: 213 / 121 / 119 / 197 us; at 64 rows and more torch's bf16 GEMM runs on AMX and is faster:
prefill is where the dense path wins). At batch 1 it is compute-bound (nibble-to-float conversion) at about
half the machine's bandwidth; an int8 activation path (VPDPBUSD, as llama.cpp) would convert 4x fewer values
per weight but rounds activations.

The kernel needs AVX-512 (F, BW, VL) and F16C; ``load_quant_kernel`` raises on other CPUs (checked on every
call, from ``CPUINFO``) and the model runner then falls back to dense weights with one log line.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from sglang_dspark.kernels.cpu_ops import build_extension
from sglang_dspark.kernels.quant_formats import (
    FORMATS,
    AnyQuantizedWeight,
    QuantizedWeight,
    dequantize,
    random_blocks,
)

# (x [M, K], weight [N, bytes] uint8, kernel format id, K, bias [N] | None, float_out) -> [M, N]
QuantLinearKernel = Callable[[Tensor, Tensor, int, int, Tensor | None, bool], Tensor]
SOURCE = Path(__file__).parent / "csrc_avx512" / "quant_linear.cpp"
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "f16c")
CPUINFO = Path("/proc/cpuinfo")


def missing_cpu_flags() -> list[str]:
    """The instruction-set extensions the kernel needs that this CPU lacks (from ``CPUINFO``)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return list(REQUIRED_CPU_FLAGS)
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    return [f for f in REQUIRED_CPU_FLAGS if f not in flags]


def load_quant_kernel() -> QuantLinearKernel:
    """The kernel (built and checked once per process); RuntimeError if this CPU or toolchain can't run it."""
    missing = missing_cpu_flags()
    if missing:
        raise RuntimeError(f"the quantized matmul kernel needs {', '.join(missing)}, which this CPU lacks")
    return _build_quant_kernel()


@cache
def _build_quant_kernel() -> QuantLinearKernel:
    module = build_extension(
        "sglang_dspark_quant_linear", [SOURCE], ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mf16c", "-mfma"]
    )
    kernel: QuantLinearKernel = module.quant_linear
    _check_against_dequantized(kernel)
    return kernel


def quant_linear(x: Tensor, weight: AnyQuantizedWeight, bias: Tensor | None, float_out: bool = False) -> Tensor:
    """x [M, K] (bf16 or fp32) -> x W^T + b [M, N] in x's dtype, or fp32 with ``float_out`` (the kernel
    must have loaded: ``load_quant_kernel``)."""
    return _run(_build_quant_kernel(), x, weight, bias, float_out)


def _run(
    kernel: QuantLinearKernel, x: Tensor, weight: AnyQuantizedWeight, bias: Tensor | None, float_out: bool = False
) -> Tensor:
    x = x.contiguous()
    if isinstance(weight, QuantizedWeight):
        return kernel(x, weight.data, weight.fmt.kernel_id, weight.cols, bias, float_out)
    outs, start = [], 0
    for part in weight.parts:  # one call per format, each row of the output from one part
        end = start + part.shape[0]
        part_bias = None if bias is None else bias[start:end]
        outs.append(kernel(x, part.data, part.fmt.kernel_id, part.cols, part_bias, float_out))
        start = end
    return torch.cat(outs, dim=1)


def _check_against_dequantized(kernel: QuantLinearKernel) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 512, generator=gen)
    for fmt in FORMATS.values():
        w = random_blocks(fmt, 7, 512, gen)
        got = _run(kernel, x, w, None)
        want = x @ dequantize(w).T
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-3):
            raise RuntimeError(f"native {fmt.name} matmul disagrees with the dequantized reference")
