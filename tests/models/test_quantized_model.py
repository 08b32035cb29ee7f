"""The quantized default model (SmolLM2-135M-Instruct, Q4_1 layers + Q8_0 tied embedding / LM head) against
the same weights dequantized to bf16 (``--quantization none``), and ``int8`` on a dense checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

from sglang_dspark import Engine
from sglang_dspark.kernels.quant_linear import missing_cpu_flags
from sglang_dspark.layers.linear import LinearBase
from sglang_dspark.model_executor.sequence_forward import forward_sequences, score_next_tokens
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.llama import LlamaForCausalLM
from sglang_dspark.models.quantization import quantize_to_int8, quantized_bytes

pytestmark = pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")

PROMPTS = [
    "Write a python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "Explain in two sentences why the sky is blue.",
]


@pytest.fixture(scope="module")
def engines():
    quant = Engine(quantization="auto", max_total_tokens=4096, log_level="warning")
    dense = Engine(quantization="none", max_total_tokens=4096, log_level="warning")
    yield quant, dense
    quant.shutdown()
    dense.shutdown()


def test_default_model_keeps_the_gguf_quantization(engines):
    quant, dense = engines
    model = quant.scheduler.runner.model
    assert quant.scheduler.runner.quantization == "gguf"
    assert model.fused_decoder is not None and dense.scheduler.runner.model.fused_decoder is None
    assert model.embed_tokens.qweight.fmt.name == "Q8_0x16"  # the tied embedding / LM head too, tiled
    layers = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert layers and all(m.qweight is not None and m.weight is None for m in layers)
    assert {m.qweight.fmt.name for m in layers} == {"Q4_1x16"}  # the file's Q4_1, in the matmul's tiles
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.scheduler.runner.model.parameters())
    quant_bytes = quantized_bytes(model) + sum(p.numel() * p.element_size() for p in model.parameters())
    assert dense_bytes > 2.5 * quant_bytes  # 269 MB of bf16 vs 97 MB of blocks


def test_greedy_and_perplexity_match_the_dequantized_model(engines):
    """Teacher-forced on the dense model's greedy continuations: the quantized model picks the same token at
    >= 95% of the positions, and its perplexity over them is within 1% (both bf16; the quantized matmul
    rounds activations to int8 per 32 values, the dense path multiplies the weights rounded to bf16)."""
    quant, dense = engines
    seqs, starts = [], []
    for prompt in PROMPTS:
        ids = quant.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        out = dense.generate(input_ids=ids, sampling_params={"temperature": 0, "max_new_tokens": 48})
        seqs.append(ids + out["output_ids"])
        starts.append(len(ids) - 1)
    ref = score_next_tokens(dense.scheduler.runner.model, seqs, starts)
    got = score_next_tokens(quant.scheduler.runner.model, seqs, starts)
    agree = sum(int((g.argmax == r.argmax).sum()) for g, r in zip(got, ref)) / sum(len(r.argmax) for r in ref)
    assert agree >= 0.95
    nll_ref = torch.cat([r.logprob for r in ref]).mean()
    nll_got = torch.cat([g.logprob for g in got]).mean()
    assert abs(float(torch.exp(nll_ref - nll_got)) - 1) < 0.01  # perplexity ratio
    assert not torch.equal(torch.cat([g.logprob for g in got]), torch.cat([r.logprob for r in ref]))


def test_int8_quantizes_a_dense_checkpoint():
    """--quantization int8 on an HF model: every linear layer and the tied embedding become Q8_0, and the logits
    stay close to the dense model's (int8 per 32 weights: about 0.4% relative error per weight)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    hf = HFLlama(cfg).eval()
    ours_cfg = DecoderConfig.from_hf(cfg.to_dict())
    dense, quant = LlamaForCausalLM(ours_cfg).eval(), LlamaForCausalLM(ours_cfg).eval()
    dense.load_weights(hf.state_dict().items())
    quant.load_weights(hf.state_dict().items())
    quantize_to_int8(quant)
    assert quant.embed_tokens.qweight.fmt.name == "Q8_0x16" and not list(quant.embed_tokens.parameters())
    assert all(m.qweight is not None for m in quant.modules() if isinstance(m, LinearBase))
    ids = torch.randint(0, 128, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    (want,) = forward_sequences(dense, [ids])
    (got,) = forward_sequences(quant, [ids])
    assert not torch.equal(got.logits, want.logits)
    torch.testing.assert_close(got.logits, want.logits, atol=0.05 * want.logits.abs().max().item(), rtol=0)
    # the quantized table still serves consumers that need it dense (a drafter sharing the embedding)
    torch.testing.assert_close(quant.lm_head_weight, dense.lm_head_weight, atol=0.01, rtol=0)
