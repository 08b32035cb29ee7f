"""``--quantization`` on bad input: a GGUF tensor type the quantized kernel lacks, and a CPU without the
instructions it needs. The checkpoint is a real converted-GGUF directory (safetensors whose metadata marks the
tensors kept as GGUF blocks), loaded by the real model runner."""

from __future__ import annotations

import json
import logging

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

from sglang_dspark.kernels import quant_linear
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.models.model_source import ModelLoadError
from sglang_dspark.models.weights import QUANT_TYPES_KEY
from sglang_dspark.server_args import ServerArgs

GATE = "model.layers.0.mlp.gate_proj.weight"  # [256, 64]: Q4_0 blocks (supported)
DOWN = "model.layers.0.mlp.down_proj.weight"  # [64, 256]: one 256-weight block per row


def converted_gguf_dir(path, down_type: str):
    """A tiny Llama as a GGUF conversion stores it: gate_proj as Q4_0 blocks, down_proj as ``down_type`` blocks
    (all-zero bytes: weights 0 whatever the type), the rest float."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    state = {k: v.contiguous() for k, v in HFLlama(cfg).state_dict().items() if k != "lm_head.weight"}
    gate = gguf.quants.quantize(state[GATE].numpy(), gguf.GGMLQuantizationType.Q4_0)
    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[down_type]]
    state[GATE] = torch.from_numpy(np.array(gate))
    state[DOWN] = torch.zeros(64, 256 // block_size * type_size, dtype=torch.uint8)
    quant_types = {GATE: ["Q4_0", 64], DOWN: [down_type, 256]}
    path.mkdir()
    save_file(state, path / "model.safetensors", metadata={"format": "pt", QUANT_TYPES_KEY: json.dumps(quant_types)})
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    return path


def runner(model_dir, quantization: str) -> ModelRunner:
    args = ServerArgs(model_path=str(model_dir), quantization=quantization, max_total_tokens=64, dtype="float32")
    return ModelRunner(args, model_dir)


@pytest.mark.skipif(bool(quant_linear.missing_cpu_flags()), reason="the quantized kernel needs AVX-512")
def test_an_unsupported_gguf_type_names_the_type_and_the_tensor_and_offers_none(tmp_path):
    model_dir = converted_gguf_dir(tmp_path / "m", "Q3_K")
    with pytest.raises(ModelLoadError) as err:
        runner(model_dir, "auto")
    message = str(err.value)
    assert "Q3_K" in message and DOWN in message and "--quantization none" in message
    dense = runner(model_dir, "none")  # the suggested way out works: every tensor dequantized at load
    assert dense.quantization == "none"
    assert torch.equal(dense.model.layers[0].mlp.down_proj.weight, torch.zeros(64, 256))


def test_a_cpu_without_avx512_falls_back_to_dense_weights_with_one_log_line(tmp_path, monkeypatch, caplog):
    """The flags line of an AVX2-only CPU (a real Zen 2 /proc/cpuinfo) in place of this machine's."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr "
        "pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm "
        "constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf pni pclmulqdq monitor ssse3 fma cx16 "
        "sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a "
        "misalignsse 3dnowprefetch osvw topoext perfctr_core bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb "
        "sha_ni xsaveopt xsavec xgetbv1 xsaves clzero irperf xsaveerptr rdpru wbnoinvd arat umip rdpid\n"
    )
    monkeypatch.setattr(quant_linear, "CPUINFO", cpuinfo)
    model_dir = converted_gguf_dir(tmp_path / "m", "Q4_K")
    with caplog.at_level(logging.WARNING):
        loaded = runner(model_dir, "auto")
    assert loaded.quantization == "none"
    gate_up = loaded.model.layers[0].mlp.gate_up_proj
    assert gate_up.qweight is None  # dense: the GGUF blocks dequantized at load
    blocks = load_file(model_dir / "model.safetensors")[GATE].numpy()
    want_gate = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
    assert torch.equal(gate_up.weight[:256], torch.from_numpy(want_gate))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "--quantization auto" in warnings[0] and "avx512f" in warnings[0] and "dense weights" in warnings[0]
