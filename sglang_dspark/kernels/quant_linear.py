"""The matmul over block-quantized weights (``--quantization``): native AVX-512 VNNI kernel, csrc_avx512/.

Formats: every one of kernels/quant_formats.py (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K,
Q6_K) as stored in the GGUF file, and each repacked at load time into tiles of 16 weight rows (``interleave``;
scales exact either way). The tiles are what the model's layers use: one 512-bit byte dot product then serves
16 weight rows, which on the 2-core Zen 4 host made a 3072 x 576 Q4_1 call 1.3x faster at one row of x and
1.9x at eight, and on the Intel Xeon host Qwen2.5-Coder's 896 x 4864 Q4_K down projection 1.8x at one row and
2.6x at eight (Q6_K 1.5x, 2.3x; bench_quant_kernel.py, same runs: benchmarks/results/engine.md).

Activations are quantized to int8 per 32 values, as llama.cpp does for its dot products
(``int8_activations`` is the reference): each 32-weight group then costs one exact byte dot product
(VPDPBUSD) and one fp32 multiply-add per row of x, instead of converting every weight to fp32. On the 2-core
AMD EPYC (Zen 4) host a batch-1 call on a 1536 x 576 Q4_1 weight read from memory took 57 us with fp32
activations and 22-27 us with int8 ones; ``benchmarks/bench_quant_kernel.py`` times every format and batch
(results in benchmarks/results/engine.md, with the quality against the same weights dequantized).

Why native and not torch's built-in ops (measured on a Sapphire Rapids host, 2 threads, a 576 x 1536
weight): ``torch.ops.aten._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` slow down almost
linearly with the rows of x (they re-read the weights per row: verify chains, batched decode and prefill
would lose), their scales are bf16 where GGUF's are fp16, and they have no K-quant or 5-bit layout.

Why not AMX's TDPBSUD for the rows of x beyond the first (tried on an Intel Xeon host with AMX-INT8, 2
threads, a 1536 x 576 Q4_1x16 weight in cache): one tile product per 32-weight group, exact, so bit-identical to
this kernel, took 21 / 21 / 39 / 73 us at 1 / 2 / 8 / 16 rows against 10 / 13 / 37 / 69 here. Its tile loads,
product and store cost about 10 ns per group whatever the rows, and every row still needs each group's fp32
scaling, which costs about what the eight VNNI byte dot products it replaces cost.

The kernel needs AVX-512 (F, BW, VL, VNNI) and F16C; ``load_quant_kernel`` raises on other CPUs (checked on
every call, from ``CPUINFO``) and the model runner then falls back to dense weights with one log line.
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
    INTERLEAVED,
    K_SUPER,
    TILE_ROWS,
    AnyQuantizedWeight,
    QuantizedWeight,
    dequantize,
    dequantize_rows,
    random_blocks,
)

# (x [M, K], weight [N, bytes] uint8, kernel format id, K, bias [N] | None, float_out) -> [M, N]
QuantLinearKernel = Callable[[Tensor, Tensor, int, int, Tensor | None, bool], Tensor]
KERNELS = Path(__file__).parent
# the matmul, the fused decoder layer (kernels/fused_decoder.py) and the native kernels that layer calls
SOURCES = [
    *sorted((KERNELS / "csrc_avx512").glob("*.cpp")),
    *(KERNELS / "csrc" / name for name in ("activation.cpp", "pool_attention.cpp", "rms_norm.cpp", "rotary.cpp")),
]
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma"]
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c")
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


def load_quant_module():
    """The extension (built and its matmul checked once per process); RuntimeError as ``load_quant_kernel``."""
    load_quant_kernel()
    return _build_module()


@cache
def _build_module():
    return build_extension("sglang_dspark_quant_linear", SOURCES, CFLAGS)


@cache
def _build_quant_kernel() -> QuantLinearKernel:
    kernel: QuantLinearKernel = _build_module().quant_linear
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


def quantized_rows(w: QuantizedWeight, ids: Tensor) -> Tensor:
    """Rows ``ids`` [n] of w decoded, [n, K] float32 (an embedding lookup): natively for a tiled 32-weight format
    (the kernel must have loaded), else ``dequantize_rows`` (no model here keeps its embedding in a K-quant)."""
    if w.fmt.tile_rows == 1 or w.fmt.block_weights == K_SUPER:
        return dequantize_rows(w, ids)
    return _build_module().tiled_rows(w.data, ids, w.fmt.kernel_id, w.cols)


def int8_activations(x: Tensor) -> Tensor:
    """x [M, K] as the kernel multiplies it: per 32 values, scale d = max |x| / 127 and q = round(x / d)
    (ties to even); returns q d [M, K] fp32."""
    groups = x.float().reshape(x.shape[0], -1, 32)
    d = groups.abs().amax(dim=-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    return (torch.round(groups * inv) * d).reshape(x.shape)


def _check_against_dequantized(kernel: QuantLinearKernel) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 512, generator=gen)
    weights = [random_blocks(fmt, 7, 512, gen) for fmt in FORMATS.values()]
    weights += [random_blocks(fmt, TILE_ROWS, 512, gen) for fmt in INTERLEAVED.values()]
    for w in weights:
        got = _run(kernel, x, w, None)
        want = int8_activations(x) @ dequantize(w).T
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-3):
            raise RuntimeError(f"native {w.fmt.name} matmul disagrees with the dequantized reference")
