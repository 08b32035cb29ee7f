"""Our Llama / Qwen2 / Qwen3 implementations against HF transformers on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from sglang_dspark.model_executor.sequence_forward import SequenceRunner, forward_sequences
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.registry import model_class

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)
CASES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(tie_word_embeddings=False, head_dim=24)),
}


def build_pair(name: str):
    cfg_cls, hf_cls, extra = CASES[name]
    torch.manual_seed(0)
    hf_cfg = cfg_cls(**TINY, **extra, architectures=[hf_cls.__name__])
    hf = hf_cls(hf_cfg).eval()
    ours_cfg = DecoderConfig.from_hf(hf_cfg.to_dict())
    ours = model_class(ours_cfg.architecture)(ours_cfg)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_prefill_logits_match_hf(name):
    hf, ours = build_pair(name)
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True)
    (out,) = forward_sequences(ours, [ids], capture_layers=(-1, 0, 2))
    logits, hidden = out.logits, out.hidden_states
    torch.testing.assert_close(logits, ref.logits[0], atol=1e-4, rtol=1e-4)
    # HF hidden_states[0] = embeddings, [i + 1] = output of layer i (the last one is after the final norm)
    torch.testing.assert_close(hidden[0], ref.hidden_states[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[1], ref.hidden_states[1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ragged_extend_on_prefix_and_batched_decode(name):
    """Chunked prefill, extends on cached prefixes and padded decode give the single-pass logits."""
    hf, ours = build_pair(name)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (30, 45, 12)]
    with torch.no_grad():
        refs = [hf(torch.tensor([s])).logits[0] for s in seqs]
    r = SequenceRunner(ours, rows=4, max_tokens=1024, max_len=256)
    # step 1: row 0 prefill 20 (long), row 1 prefill 10 (short, padded group), row 2 prefill 12
    logits, _ = r.extend({0: seqs[0][:20], 1: seqs[1][:10], 2: seqs[2]})
    torch.testing.assert_close(logits[:20], refs[0][:20], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[20:30], refs[1][:10], atol=1e-4, rtol=1e-4)
    # step 2: row 0 extends 10 on its 20-token prefix, row 1 extends 35 (long with prefix)
    logits, _ = r.extend({0: seqs[0][20:], 1: seqs[1][10:]})
    torch.testing.assert_close(logits[:10], refs[0][20:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[10:], refs[1][10:], atol=1e-4, rtol=1e-4)
    # step 3: batched decode of one token each, different lengths
    nxt = [5, 6, 7]
    logits, _ = r.extend({0: [5], 1: [6], 2: [7]})
    for i in range(3):
        with torch.no_grad():
            ref = hf(torch.tensor([seqs[i] + [nxt[i]]])).logits[0, -1]
        torch.testing.assert_close(logits[i], ref, atol=1e-4, rtol=1e-4)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported model architecture 'GPT2LMHeadModel'"):
        model_class("GPT2LMHeadModel")
