"""ModelRunner: loads a model, owns the KV memory, runs forwards."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch
from torch import nn

from sglang_dspark.kernels.cpu_ops import CpuOps, describe_cpu_ops, select_cpu_ops
from sglang_dspark.kernels.quant_linear import load_quant_kernel
from sglang_dspark.layers.attention import build_attention_metadata
from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.layers.linear import LinearBase
from sglang_dspark.mem_cache.memory_pool import KVPool, ReqToTokenPool, TokenAllocator
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import ModelOutput
from sglang_dspark.models.quantization import prepare_weights, quantize_to_int8, quantized_bytes
from sglang_dspark.models.registry import model_class
from sglang_dspark.models.weights import checkpoint_quant_types, load_hf_config, load_safetensors_state
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

MAX_AUTO_KV_TOKENS = 1 << 18


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def release_freed_memory() -> None:
    """Hand the heap memory freed while loading (dense weights replaced by quantized ones) back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def use_cpu_ops(model: nn.Module, ops: CpuOps) -> None:
    """Route the model's matmuls (LinearBase layers and the LM head) and RMSNorms through native kernels."""
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.cpu_ops = ops
        elif isinstance(module, LinearBase) or "linear_fn" in vars(module):
            module.linear_fn = ops.linear


class ModelRunner:
    def __init__(self, server_args: ServerArgs, model_dir: Path) -> None:
        self.server_args = server_args
        self.device = server_args.device
        self.dtype = getattr(torch, server_args.torch_dtype_name)
        if server_args.num_threads:
            torch.set_num_threads(server_args.num_threads)

        self.hf_config = load_hf_config(model_dir)
        self.config = DecoderConfig.from_hf(self.hf_config)
        cls = model_class(self.config.architecture)
        self.context_len = server_args.context_length or self.config.max_position_embeddings
        self.model = cls(self.config).to(device=self.device, dtype=self.dtype)
        self.quantization = self._quantization(server_args.quantization, model_dir)
        weights = load_safetensors_state(model_dir)
        self.model.load_weights(prepare_weights(weights, keep_blocks=self.quantization == "gguf"))
        if self.quantization == "int8":
            quantize_to_int8(self.model)
        release_freed_memory()
        self.model.eval()
        self.deterministic = server_args.enable_deterministic_inference
        self.cpu_ops = select_cpu_ops(server_args.cpu_kernels, self.device, self.dtype, self.deterministic)
        if self.cpu_ops is not None:
            use_cpu_ops(self.model, self.cpu_ops)

        cfg = self.config
        per_token = KVPool.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype)
        if server_args.max_total_tokens is not None:
            self.max_total_tokens = server_args.max_total_tokens
        else:
            budget = int(server_args.mem_fraction_static * physical_memory_bytes()) // per_token
            cap = server_args.max_running_requests * self.context_len
            self.max_total_tokens = max(1, min(budget, cap, MAX_AUTO_KV_TOKENS))
        self.kv_pool = KVPool(
            self.max_total_tokens, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device
        )
        self.token_allocator = TokenAllocator(self.max_total_tokens)
        # two rows per running request leave room for requests that are being retracted and re-admitted
        self.req_to_token_pool = ReqToTokenPool(2 * server_args.max_running_requests, self.context_len, self.device)
        logger.info(
            "model %s (%s), dtype %s, weights %s (%.1f MiB quantized), %s kernels, KV pool %d tokens (%.1f MiB), "
            "context %d",
            model_dir.name,
            cfg.architecture,
            self.dtype,
            self.quantization,
            quantized_bytes(self.model) / 2**20,
            describe_cpu_ops(self.cpu_ops, quantized=self.quantization != "none"),
            self.max_total_tokens,
            self.max_total_tokens * per_token / 2**20,
            self.context_len,
        )

    def _quantization(self, requested: str, model_dir: Path) -> str:
        """What the weights become: ``gguf`` (the checkpoint's own blocks kept), ``int8`` or ``none`` (dense).

        A quantized choice on a device or CPU the quantized kernel can't run on falls back to dense weights
        with one warning."""
        if requested == "none" or (requested == "auto" and not checkpoint_quant_types(model_dir)):
            return "none"
        try:
            if self.device != "cpu":
                raise RuntimeError(f"it runs on the CPU only (device {self.device})")
            load_quant_kernel()
        except Exception as e:  # no AVX-512, no compiler: the model still runs, dense
            logger.warning("--quantization %s: quantized matmul unavailable (%s); using dense weights", requested, e)
            return "none"
        return "gguf" if requested == "auto" else requested

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, fb: ForwardBatch) -> ModelOutput:
        pool_attention = self.cpu_ops.pool_attention if self.cpu_ops else None
        fb.attn_metadata = build_attention_metadata(fb, pool_attention, all_in_pool=self.deterministic)
        return self.model(fb)
