"""A/B of the native kernels against another commit's, in one process: the fused decoder stack built from the
working tree and from ``--base``'s sources, on the same weights, timed on the same forwards in turns.

On a host whose speed drifts by tens of percent between minutes, two runs of ``bench_engine.py`` cannot show a
5% kernel change; alternating the two builds call by call can. Each timed call is one verify-shaped forward
(speculative/sps_profile.py's layout: B new tokens of one request over ``--context`` cached ones, or with
``--decode`` one new token for each of B requests: a batched decode step), the whole model
(embedding, fused stack, LM head) with only the stack swapped.

    python benchmarks/bench_fused_ab.py --base HEAD~1 --tokens 1,2,4,8

The base is built once into torch's extension cache under its own name (about a minute); its sources are the
``kernels/csrc_avx512`` files and those of ``kernels/csrc`` but the bindings of the AVX2 module.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from sglang_dspark import Engine
from sglang_dspark.kernels import quant_linear
from sglang_dspark.kernels.cpu_ops import build_extension
from sglang_dspark.kernels.fused_decoder import FusedDecoder
from sglang_dspark.speculative.sps_profile import verify_forward_fn

REPO = Path(__file__).resolve().parent.parent
KERNELS = "sglang_dspark/kernels"


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout


def build_base(rev: str):
    """The quantized-kernel extension as commit ``rev`` had it."""
    sha = git("rev-parse", "--short", rev).decode().strip()
    files = git("ls-tree", "--name-only", rev, f"{KERNELS}/csrc/", f"{KERNELS}/csrc_avx512/").decode().split()
    src = Path(tempfile.mkdtemp(prefix=f"kernels-{sha}-"))
    for name in files:
        path = src / Path(name).relative_to(KERNELS)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(git("show", f"{rev}:{name}"))
    sources = sorted((src / "csrc_avx512").glob("*.cpp")) + [
        p for p in sorted((src / "csrc").glob("*.cpp")) if p.name != "bindings.cpp"
    ]
    return build_extension(f"sglang_dspark_quant_linear_{sha}", sources, quant_linear.CFLAGS), sha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="the commit to compare the working tree with")
    ap.add_argument("--tokens", default="1,2,4,8", help="new tokens per forward (B)")
    ap.add_argument("--context", type=int, default=256, help="cached tokens before them")
    ap.add_argument("--decode", action="store_true", help="B requests of one new token each, not one of B")
    ap.add_argument("--calls", type=int, default=60, help="timed forwards per build and B")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.tokens.split(",")]

    engine = Engine(log_level="warning")
    runner = engine.scheduler.runner
    model = runner.model
    tree = model.fused_decoder
    if tree is None:
        raise SystemExit("the model does not run the fused stack here (it needs quantized weights and AVX-512 VNNI)")
    module, sha = build_base(args.base)
    base = FusedDecoder([layer.fused_weights() for layer in model.layers], module)
    attention = runner.attention
    per_request = 1 if args.decode else max(sizes)
    forward = verify_forward_fn(
        model, max(sizes), args.context, per_request, attention.pool_attention, attention.all_in_pool
    )
    print(f"| B tokens | {sha} ms | working tree ms | speed-up |\n|---:|---:|---:|---:|")
    for b in sizes:
        times = {"base": [], "tree": []}
        for call in range(args.calls + 6):  # the first 6 of each build: warm-up
            order = (("base", base), ("tree", tree)) if call % 2 else (("tree", tree), ("base", base))
            for name, stack in order:
                model.fused_decoder = stack
                start = time.perf_counter()
                forward(b)
                if call >= 6:
                    times[name].append(time.perf_counter() - start)
        before, after = (statistics.median(times[k]) * 1e3 for k in ("base", "tree"))
        print(f"| {b} | {before:.2f} | {after:.2f} | {before / after:.3f}x |", flush=True)
    model.fused_decoder = tree
    engine.shutdown()


if __name__ == "__main__":
    main()
