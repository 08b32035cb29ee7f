"""The matmul over block-quantized weights (``--quantization``): native AVX-512 kernel, csrc_avx512/.

Why native and not torch's built-in ops (measured on the 2-core Sapphire Rapids host, 2 threads, a
576 x 1536 weight): ``torch.ops.aten._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` beat bf16
``F.linear`` only at batch 1 (364 / 423 us vs 1018 us) and slow down almost linearly with the rows of x
(at 64 rows 5500 / 4437 us vs 724 us for bf16): they re-read the weights per row, so verify chains, batched
decode and prefill would lose; their scales are also bf16 where GGUF's are fp16 (int4pack would round every
Q4_1 scale and minimum). This kernel reads GGUF's blocks as stored (no repacking, fp16 scales exact),
decodes each weight row once per call (per 64 rows of x) into fp32 and multiplies it with the whole tile of
rows (see quant_linear.cpp), each output row computed the same way whatever the batch: at 1 / 4 / 16 / 64
rows of a 3072 x 576 Q4_1 weight 119 / 119 / 277 / 894 us (bf16 ``F.linear``: 213 / 121 / 119 / 197 us;
at 64 rows and more torch's bf16 GEMM runs on AMX and is faster: prefill is where the dense path wins).
At batch 1 it is compute-bound (nibble-to-float conversion) at about half the machine's bandwidth; an int8
activation path (VPDPBUSD, as llama.cpp) would convert 4x fewer values per weight but rounds activations.

The kernel needs AVX-512 (F, BW, VL) and F16C; ``load_quant_kernel`` raises on other CPUs and the model runner
then falls back to dense weights with one log line.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from sglang_dspark.kernels.cpu_ops import build_extension
from sglang_dspark.kernels.quant_formats import FORMATS, QuantizedWeight, dequantize

# (x [M, K], weight [N, bytes] uint8, kernel format id, K, bias [N] | None) -> [M, N]
QuantLinearKernel = Callable[[Tensor, Tensor, int, int, Tensor | None], Tensor]
SOURCE = Path(__file__).parent / "csrc_avx512" / "quant_linear.cpp"
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "f16c")


def missing_cpu_flags() -> list[str]:
    """The instruction-set extensions the kernel needs that this CPU lacks (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return list(REQUIRED_CPU_FLAGS)
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    return [f for f in REQUIRED_CPU_FLAGS if f not in flags]


@cache
def load_quant_kernel() -> QuantLinearKernel:
    """Build (once per process) and check the kernel; RuntimeError if this CPU or toolchain can't run it."""
    missing = missing_cpu_flags()
    if missing:
        raise RuntimeError(f"the quantized matmul kernel needs {', '.join(missing)}, which this CPU lacks")
    module = build_extension(
        "sglang_dspark_quant_linear", [SOURCE], ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mf16c", "-mfma"]
    )
    kernel: QuantLinearKernel = module.quant_linear
    _check_against_dequantized(kernel)
    return kernel


def quant_linear(x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
    """x [M, K] -> x W^T + b [M, N] in x's dtype (the kernel must have loaded: ``load_quant_kernel``)."""
    return _run(load_quant_kernel(), x, weight, bias)


def _run(kernel: QuantLinearKernel, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
    return kernel(x.contiguous(), weight.data, weight.fmt.kernel_id, weight.cols, bias)


def _check_against_dequantized(kernel: QuantLinearKernel) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen)
    for fmt in FORMATS.values():
        data = torch.randint(0, 256, (7, 2 * fmt.block_bytes), generator=gen, dtype=torch.uint8)
        scales = (torch.rand(7, 2, 2, generator=gen) * 0.1).to(torch.float16).view(torch.uint8)  # d (and m)
        data.view(7, 2, fmt.block_bytes)[..., :4] = scales.view(7, 2, 4)
        w = QuantizedWeight(fmt, data, 64)
        got = _run(kernel, x, w, None)
        want = x @ dequantize(w).T
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"native {fmt.name} matmul disagrees with the dequantized reference")
