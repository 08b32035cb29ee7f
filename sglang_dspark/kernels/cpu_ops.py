"""Native C++ kernels for bf16 inference on x86 CPUs with AVX2 + FMA but no AVX-512 (csrc/).

On such CPUs PyTorch runs a bf16 ``x @ W^T`` as one matrix-vector product per row of ``x``, so the
weights are read once per token: batch-8 decode is 8x slower than batch 1 and prefill slower still;
and its bf16 ``rms_norm`` and per-layer K/V gathers cost more than the math they do. The kernels:

- ``linear``: reads every weight row once per tile of 4 rows of ``x``, fp32 accumulation;
- ``rms_norm`` / ``add_rms_norm``: HF's rounding order, one pass, residual add fused;
- ``pool_attention``: decode, verify and short-extend queries over K/V read in place from the token
  pool (causal: query n sees the first ``kv_lens[n]`` slots of its request's slot row); bf16 pools on CPUs
  with AVX512_BF16 take bf16 dot products there (chosen at run time, in this build and the quantized one);
- ``rotary``: the rotary embedding of q and k in place, HF's rounding (one call instead of a dozen ops);
- ``silu_mul``: SiLU(gate) * up of a merged gate/up output (one pass instead of a split and two ops).

They are compiled on first use with torch's JIT extension builder (about a minute; cached in
~/.cache/torch_extensions) and checked against torch before they are used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

LinearFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (x [M, K], weight [N, K], bias [N]) -> [M, N]
# (q [N, Hq, D], k_buf/v_buf [T, Hkv, D], slots [B, S], q_rows [N], kv_lens [N], scale) -> [N, Hq, D]
PoolAttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, float], Tensor]
# (q [N, Hq, D], k [N, Hkv, D], cos [N, 1, D], sin [N, 1, D]) -> rotated (q, k)
RotaryFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.cpp"))


@dataclass(frozen=True)
class CpuOps:
    linear: LinearFn
    rms_norm: Callable[[Tensor, Tensor, float], Tensor]  # x [N, d], weight [d], eps -> [N, d]
    add_rms_norm: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]  # -> (normed, x + residual)
    pool_attention: PoolAttentionFn
    rotary: RotaryFn | None  # in place on q and k; None: the model keeps torch's rotary
    # gate_up [N, 2 I] -> SiLU(gate) * up [N, I]; None: the model keeps torch's (its own exp, so not HF's bits)
    silu_mul: Callable[[Tensor], Tensor] | None


def cpu_lacks_bf16_gemm() -> bool:
    """True on CPUs where torch's bf16 matmul falls back to per-row products (below AVX-512)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT", "NO AVX")


@cache
def load_cpu_ops() -> CpuOps:
    """Build (once per process) and check the kernels; raises RuntimeError if they can't be built."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise RuntimeError(f"the native CPU kernels need AVX2 + FMA (CPU capability: {capability})")
    module = build_extension("sglang_dspark_cpu_ops", SOURCES, ["-O3", "-mavx2", "-mfma"])
    ops = CpuOps(
        module.bf16_linear, module.rms_norm, module.add_rms_norm, module.pool_attention, module.rotary, module.silu_mul
    )
    _check_against_torch(ops)
    return ops


def build_extension(name: str, sources: list[Path], cflags: list[str]):
    """Compile (or reuse the cached build of) a torch C++ extension with OpenMP (at::parallel_for threads).

    torch's builder waits, without a time-out, while a ``lock`` file sits in the build directory, and a
    builder that was killed leaves that file behind. Builds here hold an OS file lock instead (the
    kernel drops it when its process dies), so a ``lock`` file found while holding it is stale.
    """
    from torch.utils.cpp_extension import _get_build_directory, load

    build_dir = Path(_get_build_directory(name, verbose=False))
    with _ninja_on_path(), _exclusive(build_dir / "build.flock"):
        (build_dir / "lock").unlink(missing_ok=True)
        built = (build_dir / f"{name}.so").is_file()  # torch still rebuilds it if a source or flag changed
        logger.info("loading the native CPU kernels %s%s", name, "" if built else " (compiling: about a minute)")
        return load(
            name=name,
            sources=[str(p) for p in sources],
            extra_cflags=[*cflags, "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Holds an exclusive flock on ``path``: one builder per build directory across processes."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs `ninja` from PATH; the pip-installed one sits in the (maybe not activated) venv."""
    if shutil.which("ninja"):
        yield
        return
    import ninja

    old = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _check_against_torch(ops: CpuOps) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 40, generator=gen).bfloat16()
    w = torch.randn(11, 40, generator=gen).bfloat16()
    b = torch.randn(11, generator=gen).bfloat16()
    _expect_close("linear", ops.linear(x, w, b), F.linear(x.float(), w.float(), b.float()))
    g = torch.randn(40, generator=gen).bfloat16()
    _expect_close("rms_norm", ops.rms_norm(x, g, 1e-6), F.rms_norm(x.float(), (40,), g.float(), 1e-6))
    q = torch.randn(2, 4, 16, generator=gen).bfloat16()
    kv = torch.randn(2, 2, 7, 2, 16, generator=gen).bfloat16()  # [k/v, B, S, Hkv, D]
    slots = torch.arange(14).view(2, 7)
    k, v = kv.float().transpose(2, 3)  # [B, Hkv, S, D]
    want = F.scaled_dot_product_attention(q.float()[:, :, None], k, v, enable_gqa=True)[:, :, 0]
    k_buf, v_buf = kv[0].reshape(14, 2, 16), kv[1].reshape(14, 2, 16)
    got = ops.pool_attention(q, k_buf, v_buf, slots, torch.tensor([0, 1]), torch.tensor([7, 7]), 0.25)
    _expect_close("pool_attention", got, want)
    cos, sin = torch.randn(2, 2, 1, 16, generator=gen)
    rotated = torch.cat([-q[..., 8:], q[..., :8]], dim=-1)
    want = q.float() * cos + rotated.float() * sin
    got, _ = ops.rotary(q.clone(), q[:, :1].clone(), cos.bfloat16(), sin.bfloat16())
    _expect_close("rotary", got, want)
    gate_up = 4 * torch.randn(3, 2 * 20, generator=gen)
    _expect_close("silu_mul", ops.silu_mul(gate_up), F.silu(gate_up[:, :20]) * gate_up[:, 20:])


def _expect_close(name: str, got: Tensor, want: Tensor) -> None:
    if not torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2):
        raise RuntimeError(
            f"native {name} kernel disagrees with torch (max error {(got.float() - want).abs().max():.3g})"
        )


def select_cpu_ops(choice: str, device: str, dtype: torch.dtype, batch_invariant: bool = False) -> CpuOps | None:
    """The native kernels, or None for torch's ops (``--cpu-kernels``).

    ``auto`` takes the native kernels for bf16, except the matmul on CPUs with native bf16 GEMM
    (AVX-512: torch's oneDNN GEMM is faster there, while attending over the pool in place still beats
    gathering K/V for SDPA, about 3x per decode step at 1500 tokens of context), and falls back to
    torch with a warning if they cannot be built; ``native`` insists on all of them (build errors
    propagate); both leave other dtypes and devices to torch (the kernels are for bf16 weights).

    ``batch_invariant`` (``--enable-deterministic-inference``, and every quantized model) overrides the
    choice: batch-invariant ops only, see ``batch_invariant_ops``.
    """
    if batch_invariant:
        return batch_invariant_ops(device, dtype)
    if device != "cpu" or dtype != torch.bfloat16 or choice == "torch":
        return None
    if choice == "native":
        ops = load_cpu_ops()
    else:
        try:
            ops = load_cpu_ops()
        except Exception as e:  # no compiler, no ninja, unexpected CPU: the model still runs, only slower
            logger.warning("native CPU kernels unavailable (%s); using torch's bf16 ops", e)
            return None
        if not cpu_lacks_bf16_gemm():
            ops = dataclasses.replace(ops, linear=F.linear)
    return dataclasses.replace(ops, silu_mul=None)  # torch's SiLU: a dense bf16 model keeps HF's bits


def batch_invariant_ops(device: str, dtype: torch.dtype) -> CpuOps:
    """Kernels whose every output row is computed alone, in one fixed reduction order, whatever the batch.

    torch's GEMM (oneDNN/MKL) picks its blocking, and with it the order of the sums over K, from the
    number of rows: the same token's logits differ in the last bits with the batch around it, and greedy
    output flips at near-ties. The native kernels don't: the bf16 matmul accumulates each (row, column)
    over K in one fixed order (csrc/bf16_linear.cpp), the norm works row by row and the pool attention
    gives each (query, head) its own pass over the keys. Other dtypes multiply one row at a time with
    torch (the same matrix-vector call for every row). Raises where the kernels can't run.
    """
    if device != "cpu":
        raise ValueError(f"--enable-deterministic-inference runs on the CPU only (device {device})")
    ops = load_cpu_ops()
    if dtype == torch.bfloat16:
        return ops
    # fp32 keeps torch's rotary: with the native one, fp32 logprobs of verify rows and decode rows differed by
    # 1.5e-5 (tests/speculative/test_spec_decode.py, logprob requests), a cause not yet found
    return dataclasses.replace(ops, linear=rowwise_linear, rotary=None)


def rowwise_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [M, K], weight [N, K], bias [N] -> [M, N], one matrix-vector product per row of x."""
    return torch.cat([F.linear(row, weight, bias) for row in x.split(1)]) if len(x) else F.linear(x, weight, bias)


def describe_cpu_ops(ops: CpuOps | None, quantized: bool = False, fused: bool = False) -> str:
    """The kernels a model runs, for logs and benchmark labels; ``quantized``: its linear layers and LM head
    multiply block-quantized weights (kernels/quant_linear.py), whatever ``ops.linear`` is; ``fused``: its
    decoder layers run as one native call (kernels/fused_decoder.py)."""
    if fused:
        return "fused native decoder layers, quantized AVX-512 matmul"
    if quantized:
        return f"{'native CPU' if ops is not None else 'torch'} attention and norm, quantized AVX-512 matmul"
    if ops is None:
        return "torch"
    if ops.linear is rowwise_linear:
        return "native CPU attention and norm, row-by-row torch GEMM"
    return "native CPU" if ops.linear is not F.linear else "native CPU attention and norm, torch GEMM"
