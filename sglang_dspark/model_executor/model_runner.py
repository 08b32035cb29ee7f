"""ModelRunner: loads a model, owns the KV memory, runs forwards.

With ``--tp-size N`` every rank has a ModelRunner over its shard of the model and of the KV pool (its KV
heads). Rank 0's scheduler calls ``forward``, which first broadcasts the batch (``TpBatch``); the other ranks
sit in ``follow`` and run the same forward, their all-reduces meeting rank 0's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sglang_dspark.distributed.cpu_binding import bind_rank_to_cores
from sglang_dspark.distributed.net import free_port
from sglang_dspark.distributed.parallel_state import TpGroup, init_tp_group
from sglang_dspark.distributed.partition import even_span, head_shard
from sglang_dspark.kernels.cpu_ops import CpuOps, describe_cpu_ops, select_cpu_ops
from sglang_dspark.kernels.quant_linear import load_quant_kernel
from sglang_dspark.layers.attention_backend import select_attention_backend
from sglang_dspark.layers.layernorm import RMSNorm
from sglang_dspark.layers.linear import LinearBase
from sglang_dspark.mem_cache.memory_pool import KVPool, ReqToTokenPool, TokenAllocator
from sglang_dspark.model_executor.cuda_graph_runner import CudaGraphRunner
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.tp_processes import TpRanks, local_ranks, start_tp_ranks
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import ModelOutput
from sglang_dspark.models.quantization import prepare_weights, quantize_to_int8, quantized_bytes
from sglang_dspark.models.registry import model_class
from sglang_dspark.models.weights import checkpoint_quant_types, load_hf_config, load_safetensors_state
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

MAX_AUTO_KV_TOKENS = 1 << 18


def physical_memory_bytes(device: str = "cpu") -> int:
    """The memory the KV pool's share (--mem-fraction-static) is taken of: the GPU's, or the machine's."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def release_freed_memory() -> None:
    """Hand the heap memory freed while loading (dense weights replaced by quantized ones) back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def use_cpu_ops(model: nn.Module, ops: CpuOps) -> None:
    """Route the model's matmuls (LinearBase layers and the LM head), RMSNorms, rotary embeddings and SiLU MLP
    activations through native kernels."""
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.cpu_ops = ops
        elif isinstance(module, LinearBase) or "linear_fn" in vars(module):
            module.linear_fn = ops.linear
        if "rotary_fn" in vars(module) and ops.rotary is not None:
            module.rotary_fn = ops.rotary
        if "silu_mul_fn" in vars(module):
            module.silu_mul_fn = ops.silu_mul


@dataclass
class TpBatch:
    """What the other tensor-parallel ranks need of one forward: rank 0's ForwardBatch with the request
    rows of its req_to_token table copied in (they keep no table of their own)."""

    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    out_cache_loc: torch.Tensor  # [N] int64
    seq_lens: list[int]  # [B]
    extend_lens: list[int]  # [B]
    kv_slots: torch.Tensor  # [B, max(seq_lens)] int64, the KV slot of every position of each request
    num_layers: int | None  # ForwardBatch.num_layers: the decoder layers run (self-drafting), None = all

    @classmethod
    def of(cls, fb: ForwardBatch) -> TpBatch:
        slots = fb.req_to_token[fb.req_pool_indices, : max(fb.seq_lens)]
        return cls(fb.input_ids, fb.positions, fb.out_cache_loc, fb.seq_lens, fb.extend_lens, slots, fb.num_layers)

    def forward_batch(self, kv_pool: KVPool) -> ForwardBatch:
        """The batch over this rank's KV pool; no logits (only rank 0 samples)."""
        return ForwardBatch(
            input_ids=self.input_ids,
            positions=self.positions,
            out_cache_loc=self.out_cache_loc,
            req_pool_indices=torch.arange(len(self.seq_lens)),
            seq_lens=self.seq_lens,
            extend_lens=self.extend_lens,
            logits_indices=torch.zeros(0, dtype=torch.int64),
            kv_pool=kv_pool,
            req_to_token=self.kv_slots,
            num_layers=self.num_layers,
        )


def check_tp_split(cfg: DecoderConfig, tp_size: int) -> None:
    """Raise ValueError, naming the numbers, if the model's heads or MLP cannot be split over tp_size ranks."""
    for rank in range(tp_size):
        head_shard(cfg.num_heads, cfg.num_kv_heads, tp_size, rank)
    even_span(cfg.intermediate_size, tp_size, 0, "MLP channels (intermediate_size)")


class ModelRunner:
    def __init__(self, server_args: ServerArgs, model_dir: Path, tp_rank: int = 0) -> None:
        """``tp_rank``: this process's global tensor-parallel rank; rank 0 starts the other ranks of its node."""
        self.device = server_args.resolved_device()
        if self.device != "cpu" and server_args.tp_size > 1:
            raise ValueError("--tp-size > 1 runs on the CPU only (torch.distributed over gloo); use --tp-size 1")
        self.dtype = getattr(torch, server_args.torch_dtype_name)
        self.tp: TpGroup | None = None
        self.tp_ranks: TpRanks | None = None  # the processes of the other ranks rank 0 started
        self.hf_config = load_hf_config(model_dir)
        self.config = DecoderConfig.from_hf(self.hf_config)
        if server_args.tp_size > 1:
            check_tp_split(self.config, server_args.tp_size)  # before any rank starts
            server_args = self._join_tp_group(server_args, model_dir, tp_rank)
        self.server_args = server_args
        if server_args.num_threads:
            torch.set_num_threads(server_args.num_threads)
        cls = model_class(self.config.architecture)
        self.context_len = server_args.context_length or self.config.max_position_embeddings
        self.model = cls(self.config, self.tp).to(device=self.device, dtype=self.dtype)
        self.quantization = self._quantization(server_args.quantization, model_dir)
        weights = load_safetensors_state(model_dir)
        self.model.load_weights(prepare_weights(weights, keep_blocks=self.quantization == "gguf"))
        if self.quantization == "int8":
            quantize_to_int8(self.model)
        release_freed_memory()
        self.model.eval()
        # The quantized matmul rounds its input to int8, which turns a last-bit difference between a token's
        # activations in two batches into a whole rounding step and, layers later, into different logits at
        # near-ties. So quantized models run batch-invariant (as --enable-deterministic-inference does):
        # every token's result is the same whatever the batch, chunking or cached prefix around it, which
        # keeps greedy speculative decoding token-identical to plain decoding.
        self.batch_invariant = server_args.enable_deterministic_inference or self.quantization != "none"
        self.cpu_ops = select_cpu_ops(server_args.cpu_kernels, self.device, self.dtype, self.batch_invariant)
        if self.cpu_ops is not None:
            use_cpu_ops(self.model, self.cpu_ops)
        self.fused = self.quantization != "none" and self.model.fuse_decoder()
        attn = self.model.layers[0].self_attn
        self.attention = select_attention_backend(
            server_args.attention_backend,
            self.device,
            self.cpu_ops.pool_attention if self.cpu_ops is not None else None,
            self.batch_invariant,
            self.config.sliding_window,
            {
                "dtype": self.dtype,
                "num_heads": attn.num_heads,
                "num_kv_heads": attn.num_kv_heads,
                "head_dim": attn.head_dim,
                "scale": attn.scale,
            },
        )
        self.kernels = describe_cpu_ops(self.cpu_ops, quantized=self.quantization != "none", fused=self.fused)
        if self.device != "cpu":
            self.kernels = f"{self.device} torch"
        self.kernels += f", {self.attention.name} attention"

        cfg = self.config
        kv_heads = cfg.num_kv_heads
        if self.tp is not None:  # every rank sizes its pool like the rank with the most KV heads: same slots
            kv_heads = max(
                head_shard(cfg.num_heads, kv_heads, self.tp.size, r).kv_heads.size for r in range(self.tp.size)
            )
        per_token = KVPool.bytes_per_token(cfg.num_layers, kv_heads, cfg.head_dim, self.dtype)
        if server_args.max_total_tokens is not None:
            self.max_total_tokens = server_args.max_total_tokens
        else:
            budget = int(server_args.mem_fraction_static * physical_memory_bytes(self.device)) // per_token
            cap = server_args.max_running_requests * self.context_len
            self.max_total_tokens = max(1, min(budget, cap, MAX_AUTO_KV_TOKENS))
        local_kv_heads = self.model.layers[0].self_attn.num_kv_heads
        self.kv_pool = KVPool(
            self.max_total_tokens, cfg.num_layers, local_kv_heads, cfg.head_dim, self.dtype, self.device
        )
        self.token_allocator = TokenAllocator(self.max_total_tokens)
        # two rows per running request leave room for requests that are being retracted and re-admitted
        self.req_to_token_pool = ReqToTokenPool(2 * server_args.max_running_requests, self.context_len, self.device)
        self.graph_runner = None
        if self.device == "cuda" and not server_args.disable_cuda_graph and self.attention.name == "triton":
            self.graph_runner = CudaGraphRunner(
                self.model,
                self.kv_pool,
                self.attention.pool_attention,
                min(server_args.cuda_graph_max_bs, server_args.max_running_requests),
                self.context_len,
                cfg.sliding_window,
                self.device,
            )
        logger.info(
            "%smodel %s (%s), dtype %s, weights %s (%.1f MiB quantized), %s kernels, KV pool %d tokens (%.1f MiB), "
            "context %d",
            f"tensor-parallel rank {self.tp.rank} of {self.tp.size}: " if self.tp else "",
            model_dir.name,
            cfg.architecture,
            self.dtype,
            self.quantization,
            quantized_bytes(self.model) / 2**20,
            self.kernels,
            self.max_total_tokens,
            self.max_total_tokens * per_token / 2**20,
            self.context_len,
        )

    def _join_tp_group(self, server_args: ServerArgs, model_dir: Path, tp_rank: int) -> ServerArgs:
        """Pin this rank to its cores, start the node's other ranks (rank 0), meet them all. Returns the
        arguments with the rendezvous address filled in."""
        ranks = local_ranks(server_args)
        self._unbound = (os.sched_getaffinity(0), torch.get_num_threads())  # restored by close()
        if tp_rank == 0:
            if server_args.dist_init_addr is None:
                server_args = dataclasses.replace(server_args, dist_init_addr=f"127.0.0.1:{free_port()}")
            self.tp_ranks = start_tp_ranks(server_args, model_dir, ranks[1:])  # before binding: they inherit it
        cores = bind_rank_to_cores(ranks.index(tp_rank), len(ranks))
        if not server_args.num_threads:
            server_args = dataclasses.replace(server_args, num_threads=len(cores))
        logger.info("tensor-parallel rank %d computes on cores %s", tp_rank, cores)
        try:
            self.tp = init_tp_group(
                tp_rank, server_args.tp_size, server_args.dist_init_addr, server_args.dist_timeout, self.device
            )
        except Exception:
            if self.tp_ranks is not None:
                self.tp_ranks.stop()
            raise
        if self.tp_ranks is not None:
            self.tp_ranks.watch()
        return server_args

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
        if self.tp is not None:
            self.tp.broadcast_from_rank0(TpBatch.of(fb))
        fb.attn_metadata = self.attention.metadata(fb)
        if self.graph_runner is not None and self.graph_runner.can_run(fb):
            return self.graph_runner.replay(fb)
        return self.model(fb)

    def follow(self) -> None:
        """A rank other than 0: run every forward rank 0 broadcasts, until it sends None."""
        while True:
            batch = self.tp.broadcast_from_rank0(None)
            if batch is None:
                return
            fb = batch.forward_batch(self.kv_pool)
            fb.attn_metadata = self.attention.metadata(fb)
            self.model(fb)

    def close(self) -> None:
        """Rank 0: release the other ranks (they return from ``follow``) and wait for them to exit."""
        if self.tp is None or self.tp.rank != 0:
            return
        self.tp.broadcast_from_rank0(None)
        if self.tp_ranks is not None:
            self.tp_ranks.stop()
        self.tp.close()
        self.tp = None
        os.sched_setaffinity(0, self._unbound[0])
        torch.set_num_threads(self._unbound[1])
