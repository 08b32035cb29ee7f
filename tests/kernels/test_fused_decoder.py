"""The fused decoder stack (kernels/fused_decoder.py) computes bit for bit what the model's modules compute:
logits, captured hidden states and the keys and values it writes, over prefill chunks, decode steps and
verify chains, for Llama, Qwen2 (q/k/v biases, a merged projection in three formats), Qwen3 (q/k norms) and
Gemma 3 (sandwich norms scaling by 1 + weight, GeGLU, sliding-window layers with their own RoPE base)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sglang_dspark.kernels.cpu_ops import batch_invariant_ops
from sglang_dspark.kernels.quant_formats import FORMATS, concat_rows, random_blocks
from sglang_dspark.kernels.quant_linear import missing_cpu_flags
from sglang_dspark.model_executor.model_runner import use_cpu_ops
from sglang_dspark.model_executor.sequence_forward import SequenceRunner
from sglang_dspark.models.config import FULL, SLIDING
from sglang_dspark.models.quantization import quantize_to_int8
from sglang_dspark.models.registry import model_class
from sglang_dspark.models.tiny import tiny_random_model

pytestmark = pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")


def quantized_model(architecture: str, dtype: torch.dtype, **config):
    """A tiny random model of ``architecture``, Q8_0 weights, on the kernels a quantized ModelRunner picks."""
    cfg = dataclasses.replace(tiny_random_model().config, architecture=architecture, **config)
    torch.manual_seed(0)
    model = model_class(architecture)(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.normal_(1.0, 0.1) if "norm" in name else p.normal_(0, 0.1)
    model = model.to(dtype).eval()
    quantize_to_int8(model)
    ops = batch_invariant_ops("cpu", dtype)
    use_cpu_ops(model, ops)
    return model, ops


def run_steps(model, ops, num_layers=None):
    """Prefill two prompts (one in two chunks), then a decode step and a 4-token verify chain; returns the
    outputs and the KV pool's written slots of the layers that ran."""
    runner = SequenceRunner(model, 2, 128, 64, ops.pool_attention, all_in_pool=True)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (40,), generator=gen).tolist()
    steps = [{0: tokens[:20], 1: tokens[20:27]}, {0: tokens[27:30]}, {0: [5], 1: [6]}, {1: tokens[30:34]}]
    capture = (-1, 0, model.config.num_layers - 1) if num_layers is None else (-1, num_layers - 1)
    outs = [runner.extend(chunks, capture, num_layers=num_layers) for chunks in steps]
    used, ran = runner.next_slot, num_layers or model.config.num_layers  # slots 1 .. used - 1 of these layers
    return outs, [buf[:used] for buf in runner.pool.k_buffer[:ran] + runner.pool.v_buffer[:ran]]


GEMMA3 = dict(  # three sliding-window layers of 8 keys with their own RoPE base, then a global one
    hidden_act="gelu_pytorch_tanh",
    layer_types=(SLIDING, SLIDING, SLIDING, FULL),
    sliding_window=8,
    local_rope_theta=10000.0,
    rope_theta=1e6,
    query_pre_attn_scalar=32.0,
)
ARCHITECTURES = {
    "LlamaForCausalLM": {},
    "Qwen2ForCausalLM": {},
    "Qwen3ForCausalLM": {},
    "Gemma3ForCausalLM": GEMMA3,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_fused_stack_equals_the_modules(architecture, dtype, monkeypatch):
    model, ops = quantized_model(architecture, dtype, **ARCHITECTURES[architecture])
    layer_calls = []
    layer_cls = type(model.layers[0])
    module_forward = layer_cls.forward
    monkeypatch.setattr(layer_cls, "forward", lambda *a: layer_calls.append(1) or module_forward(*a))
    if architecture == "Qwen2ForCausalLM":  # q, k and v quantized differently (as Q4_K_M files do)
        gen = torch.Generator().manual_seed(2)
        for layer in model.layers:
            qkv = layer.self_attn.qkv_proj
            q, kv = qkv.q_size, qkv.kv_size
            parts = [random_blocks(FORMATS[f], n, 64, gen) for f, n in (("Q4_1", q), ("Q8_0", kv), ("Q5_0", kv))]
            qkv.qweight = concat_rows(parts)
            assert len(qkv.qweight.parts) == 3 and qkv.bias is not None
    assert model.fuse_decoder()
    fused = model.fused_decoder
    for num_layers in (None, 2):  # all layers, and the first two as self-drafting runs them
        got, got_pool = run_steps(model, ops, num_layers)
        assert not layer_calls  # the modules did not run
        model.fused_decoder = None
        want, want_pool = run_steps(model, ops, num_layers)
        assert layer_calls
        layer_calls.clear()
        model.fused_decoder = fused
        for (logits, hidden), (ref_logits, ref_hidden) in zip(got, want, strict=True):
            assert torch.equal(logits, ref_logits)
            assert len(hidden) == len(ref_hidden) and all(map(torch.equal, hidden, ref_hidden))
        assert all(map(torch.equal, got_pool, want_pool))  # the keys and values written
        assert got[-1][0].abs().sum() > 0


def test_dense_weights_are_not_fused():
    dense = tiny_random_model()
    use_cpu_ops(dense, batch_invariant_ops("cpu", torch.float32))
    assert not dense.fuse_decoder() and dense.fused_decoder is None
