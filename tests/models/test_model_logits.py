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

from sglang_dspark.layers.attention import build_attention_metadata
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.forward_batch import ForwardBatch
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


class Runner:
    """Drives a model through ragged extends on a private KV pool (rows = sequences)."""

    def __init__(self, model, rows: int = 4, size: int = 1024) -> None:
        cfg = model.config
        self.model = model
        self.pool = KVPool(size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32)
        self.req_to_token = torch.zeros(rows, 256, dtype=torch.int64)
        self.next_slot = 1
        self.lens = [0] * rows

    def extend(self, chunks: dict[int, list[int]], capture=()) -> tuple[torch.Tensor, list]:
        """chunks: row -> new tokens. Returns logits of every new token [N, V] in row order."""
        ids, pos, locs, rows, seq, ext = [], [], [], [], [], []
        for row, toks in chunks.items():
            start = self.lens[row]
            slots = torch.arange(self.next_slot, self.next_slot + len(toks))
            self.next_slot += len(toks)
            self.req_to_token[row, start : start + len(toks)] = slots
            ids += toks
            pos += range(start, start + len(toks))
            locs.append(slots)
            rows.append(row)
            self.lens[row] += len(toks)
            seq.append(self.lens[row])
            ext.append(len(toks))
        fb = ForwardBatch(
            input_ids=torch.tensor(ids),
            positions=torch.tensor(pos),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(rows),
            seq_lens=seq,
            extend_lens=ext,
            logits_indices=torch.arange(len(ids)),
            kv_pool=self.pool,
            req_to_token=self.req_to_token,
            capture_layers=tuple(capture),
        )
        fb.attn_metadata = build_attention_metadata(fb)
        out = self.model(fb)
        return out.logits, out.hidden_states


@pytest.mark.parametrize("name", sorted(CASES))
def test_prefill_logits_match_hf(name):
    hf, ours = build_pair(name)
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True)
    logits, hidden = Runner(ours).extend({0: ids}, capture=(-1, 0, 2))
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
    r = Runner(ours)
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
