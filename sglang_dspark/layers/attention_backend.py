"""Which attention kernel a model runs (``--attention-backend``, SGLang's names) and the metadata it needs.

- ``native`` (what ``auto`` is on the CPU): the C++ pool-attention kernel (kernels/cpu_ops.py) for decode,
  verify and short extends, SDPA for prefill chunks; every query through the kernel when the model runs
  batch-invariant (quantized weights, ``--enable-deterministic-inference``).
- ``torch_native``: torch's SDPA over keys gathered from the pool; the reference.
- ``triton``: the Triton pool-attention kernel (kernels/pool_attention_triton.py) for every query; on a GPU,
  or on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``, for tests only: it is very slow).
- ``flashinfer``: FlashInfer's paged prefill kernel over the pool (layers/flashinfer_attention.py), a GPU's
  ``auto`` where the package imports.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from sglang_dspark.kernels.cpu_ops import PoolAttentionFn
from sglang_dspark.layers.attention import AttentionMetadata, build_attention_metadata
from sglang_dspark.layers.flashinfer_attention import FlashInferPlanner
from sglang_dspark.model_executor.forward_batch import ForwardBatch


@dataclass
class AttentionBackend:
    name: str  # native | torch_native | triton | flashinfer
    pool_attention: PoolAttentionFn | None  # the kernel short groups attend with; None = SDPA
    all_in_pool: bool  # every query, prefill chunks included, through pool_attention
    sliding_window: int | None  # the window of the model's sliding layers, if it has any
    flashinfer: FlashInferPlanner | None = None

    def metadata(self, fb: ForwardBatch) -> AttentionMetadata:
        """The batch's attention metadata, for full and (with a window) sliding-window layers."""
        if self.flashinfer is None:
            return build_attention_metadata(fb, self.pool_attention, self.all_in_pool, self.sliding_window)
        groups = self.flashinfer.plan(fb)
        meta = AttentionMetadata(groups[None], [])
        if self.sliding_window is not None:
            meta.windowed = AttentionMetadata(groups[self.sliding_window], [], self.sliding_window)
        return meta


def select_attention_backend(
    requested: str,
    device: str,
    cpu_pool_attention: PoolAttentionFn | None,
    batch_invariant: bool,
    sliding_window: int | None = None,
    flashinfer_args: dict | None = None,
) -> AttentionBackend:
    """The backend for ``--attention-backend requested`` on ``device`` (cpu or cuda); raises ValueError naming
    the flag where the choice can't run. ``cpu_pool_attention``: the native kernel, where the CPU kernels
    loaded; ``batch_invariant``: every query must attend in one pool kernel (each row alone);
    ``flashinfer_args``: FlashInferPlanner's arguments (dtype, heads, head_dim, scale)."""
    if requested == "auto":
        if device == "cpu":
            requested = "native" if cpu_pool_attention is not None else "torch_native"
        else:
            requested = "flashinfer" if _imports("flashinfer") and not batch_invariant else "triton"
    if requested == "native":
        return AttentionBackend("native", cpu_pool_attention, batch_invariant, sliding_window)
    if requested == "torch_native":
        if batch_invariant:
            raise ValueError(
                "--attention-backend torch_native: this model runs batch-invariant (quantized weights or "
                "--enable-deterministic-inference), which attends in a pool kernel; use auto or triton"
            )
        return AttentionBackend("torch_native", None, False, sliding_window)
    if requested == "triton":
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "--attention-backend triton runs on a GPU (--device cuda), or on the CPU in Triton's "
                "interpreter with TRITON_INTERPRET=1 (tests only: very slow)"
            )
        if not _imports("triton"):
            raise ValueError("--attention-backend triton needs the triton package")
        from sglang_dspark.kernels.pool_attention_triton import pool_attention_triton

        return AttentionBackend("triton", pool_attention_triton, True, sliding_window)
    if requested == "flashinfer":
        if device != "cuda":
            raise ValueError("--attention-backend flashinfer runs on a GPU only (--device cuda)")
        if not _imports("flashinfer"):
            raise ValueError("--attention-backend flashinfer needs the flashinfer-python package")
        if batch_invariant:
            raise ValueError("--attention-backend flashinfer is not batch-invariant; use triton")
        planner = FlashInferPlanner(device, sliding_window=sliding_window, **(flashinfer_args or {}))
        return AttentionBackend("flashinfer", None, False, sliding_window, planner)
    raise ValueError(f"unknown --attention-backend {requested!r}")


def _imports(package: str) -> bool:
    return importlib.util.find_spec(package) is not None
