"""Per-call speed of the quantized matmul (kernels/quant_linear.py) against torch's bf16 ``F.linear``.

Weights come from memory as in a decode step: 64 distinct random weights of one shape are cycled, more
than the caches hold. Prints, per format and rows of x, microseconds per call and the weight bytes read
per second.

    python benchmarks/bench_quant_kernel.py --formats Q4_1,Q4_1x16,Q8_0 --shape 1536x576

(``Q4_0x16`` .. ``Q6_Kx16``: those formats in the 16-row tiles the model loader repacks them into.)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sglang_dspark.kernels.quant_formats import ALL_FORMATS, random_blocks
from sglang_dspark.kernels.quant_linear import load_quant_kernel, quant_linear

COPIES = 64


def seconds_per_call(matmul, x: torch.Tensor, weights: list, repeats: int) -> float:
    """Fastest of ``repeats`` passes of matmul(x, w) over every weight, per call."""
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for w in weights:
            matmul(x, w)
        best = min(best, time.perf_counter() - start)
    return best / len(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="Q4_1,Q4_1x16,Q8_0,Q5_0,Q4_K,Q6_K")
    ap.add_argument("--shape", default="1536x768", help="N x K of the weight (K a multiple of 256 for K-quants)")
    ap.add_argument("--rows", default="1,4,16,64", help="rows of x")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_quant_kernel()
    n, k = (int(v) for v in args.shape.split("x"))
    rows = [int(r) for r in args.rows.split(",")]
    gen = torch.Generator().manual_seed(0)
    print(f"weight {n} x {k}, {args.threads} threads, {COPIES} weights cycled; us per call (GB/s of weights)")
    print("| weights | " + " | ".join(f"{m} row{'s' if m > 1 else ''}" for m in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    dense = [torch.randn(n, k, generator=gen).bfloat16() for _ in range(COPIES)]
    cells = []
    for m in rows:
        x = torch.randn(m, k, generator=gen).bfloat16()
        sec = seconds_per_call(F.linear, x, dense, args.repeats)
        cells.append(f"{sec * 1e6:.0f} ({n * k * 2 / sec / 1e9:.1f})")
    print("| bf16 `F.linear` | " + " | ".join(cells) + " |")
    del dense
    for name in args.formats.split(","):
        weights = [random_blocks(ALL_FORMATS[name], n, k, gen) for _ in range(COPIES)]
        cells = []
        for m in rows:
            x = torch.randn(m, k, generator=gen).bfloat16()
            sec = seconds_per_call(lambda x, w: quant_linear(x, w, None), x, weights, args.repeats)
            cells.append(f"{sec * 1e6:.0f} ({weights[0].nbytes / sec / 1e9:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
