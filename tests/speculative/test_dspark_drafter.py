"""DSpark drafter: incremental drafting matches the teacher-forced block, masks, checkpoint round trip."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_drafter import features, make_drafter

from sglang_dspark.kernels.quant_linear import missing_cpu_flags
from sglang_dspark.layers.linear import ReplicatedLinear
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.speculative.dspark import DrafterState, load_drafter, save_drafter


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_incremental_draft_matches_teacher_forced_block(kind):
    target = tiny_random_model()
    d = make_drafter(target, kind)
    ids = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    feats = features(target, ids)
    states = [DrafterState(), DrafterState()]
    # request 0 gets its context in two chunks, request 1 in one (different lengths: padding is exercised)
    d.append_context(states[:1], [feats[:10]], [torch.arange(10)])
    d.append_context(states, [feats[10:20], feats[:12]], [torch.arange(10, 20), torch.arange(12)])
    out = d.draft(states, torch.tensor([ids[20], ids[12]]), torch.tensor([20, 12]))
    for r, anchor in enumerate((20, 12)):
        seq = ids[: anchor + 1] + out.tokens[r].tolist()  # teacher-force the drafted tokens
        tf = d.teacher_forced(features(target, seq), torch.tensor(seq), torch.tensor([anchor]))
        assert torch.equal(tf.logits[0].argmax(-1), out.tokens[r])
        torch.testing.assert_close(tf.confidence_logits[0], out.confidence_logits[r], atol=1e-4, rtol=1e-4)
    # a request drafted alone (its context used in place, no mask) drafts what it drafts in the padded batch
    alone = d.draft(states[:1], torch.tensor([ids[20]]), torch.tensor([20]))
    assert torch.equal(alone.tokens[0], out.tokens[0])
    torch.testing.assert_close(alone.confidence_logits[0], out.confidence_logits[0], atol=1e-4, rtol=1e-4)


def test_sampling_probs_and_mask_callback():
    target = tiny_random_model()
    d = make_drafter(target)
    feats = features(target, list(range(10, 25)))
    state = DrafterState()
    d.append_context([state], [feats], [torch.arange(15)])
    allowed = torch.zeros(1, 97, dtype=torch.bool)
    allowed[0, 40:45] = True
    seen = []

    def mask_fn(k, drafted):
        seen.append(drafted.shape)
        return allowed

    out = d.draft(
        [state], torch.tensor([25]), torch.tensor([15]), torch.tensor([1.0]), mask_fn, torch.Generator().manual_seed(0)
    )
    assert seen == [(1, k) for k in range(4)]
    assert ((out.tokens >= 40) & (out.tokens < 45)).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(1, 4))
    assert float(out.probs[..., :40].sum()) == 0.0
    assert out.confidences.shape == (1, 4) and ((out.confidences > 0) & (out.confidences < 1)).all()


def test_checkpoint_round_trip(tmp_path):
    target = tiny_random_model()
    d = make_drafter(target, "gated")
    path = save_drafter(d, tmp_path / "drafter")
    cfg = json.loads((path / "config.json").read_text())
    for key in (
        "architectures",
        "block_size",
        "target_layer_ids",
        "num_target_layers",
        "mask_token_id",
        "markov_rank",
        "markov_head_type",
        "enable_confidence_head",
        "confidence_head_with_markov",
    ):
        assert key in cfg
    loaded = load_drafter(path, target.embed_tokens.weight, target.lm_head_weight)
    names = set(loaded.state_dict())
    assert {
        "fc.weight",
        "hidden_norm.weight",
        "norm.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.1.self_attn.k_norm.weight",
        "layers.0.mlp.gate_proj.weight",
        "markov_head.markov_w1.weight",
        "markov_head.markov_w2.weight",
        "confidence_head.proj.weight",
    } <= names
    assert not any("embed" in n or "lm_head" in n for n in names)
    ids = list(range(5, 25))
    feats = features(target, ids)
    a = d.teacher_forced(feats, torch.tensor(ids), torch.tensor([3, 9]))
    b = loaded.teacher_forced(feats, torch.tensor(ids), torch.tensor([3, 9]))
    torch.testing.assert_close(a.logits, b.logits)
    # bf16 export is half the size and loads back as bf16
    small = load_drafter(
        save_drafter(d, tmp_path / "bf16", dtype=torch.bfloat16), target.embed_tokens.weight, target.lm_head_weight
    )
    assert small.dtype == torch.bfloat16


def test_dflash_variant_has_no_heads():
    target = tiny_random_model()
    d = make_drafter(target, rank=0)
    assert d.markov_head is None and d.confidence_head is None
    state = DrafterState()
    d.append_context([state], [features(target, list(range(12)))], [torch.arange(12)])
    out = d.draft([state], torch.tensor([1]), torch.tensor([12]))
    assert out.tokens.shape == (1, 4) and out.confidence_logits is None


def drafter_with_context(kind: str = "vanilla"):
    target = tiny_random_model()
    d = make_drafter(target, kind)
    state = DrafterState()
    d.append_context([state], [features(target, list(range(10, 25)))], [torch.arange(15)])
    return d, state


@pytest.mark.parametrize("kind", ["vanilla", "rnn"])
def test_draft_vocabulary_drafts_what_the_full_vocabulary_masked_to_it_drafts(kind):
    d, state = drafter_with_context(kind)
    vocab = torch.arange(5, 97, 3)  # [31] ascending ids
    only_vocab = torch.zeros(1, 97, dtype=torch.bool)
    only_vocab[0, vocab] = True
    full = d.draft([state], torch.tensor([25]), torch.tensor([15]))
    masked = d.draft([state], torch.tensor([25]), torch.tensor([15]), mask_fn=lambda k, drafted: only_vocab)
    assert not torch.equal(full.tokens, masked.tokens)  # the restriction matters for this drafter
    d.restrict_vocab(vocab)
    restricted = d.draft([state], torch.tensor([25]), torch.tensor([15]))
    assert torch.isin(restricted.tokens, vocab).all()
    assert torch.equal(restricted.tokens, masked.tokens)
    torch.testing.assert_close(restricted.confidence_logits, masked.confidence_logits)
    assert restricted.probs is None  # greedy drafts carry no distributions
    # sampled drafts: distributions over the whole vocabulary, zero outside the draft vocabulary
    sampled = d.draft([state], torch.tensor([25]), torch.tensor([15]), torch.tensor([1.0]))
    torch.testing.assert_close(sampled.probs.sum(-1), torch.ones(1, 4))
    outside = torch.ones(97, dtype=torch.bool)
    outside[vocab] = False
    assert float(sampled.probs[..., outside].sum()) == 0.0 and torch.isin(sampled.tokens, vocab).all()
    d.restrict_vocab(None)
    assert torch.equal(d.draft([state], torch.tensor([25]), torch.tensor([15])).tokens, full.tokens)


@pytest.mark.parametrize("kind", ["vanilla", "rnn"])
def test_teacher_forced_logits_over_a_vocabulary_are_those_columns_of_the_whole_ones(kind):
    target = tiny_random_model()
    d = make_drafter(target, kind)
    ids = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(3))
    feats, anchors, vocab = features(target, ids.tolist()), torch.tensor([2, 9, 15]), torch.arange(1, 97, 4)
    whole, part = d.teacher_forced(feats, ids, anchors), d.teacher_forced(feats, ids, anchors, vocab)
    torch.testing.assert_close(part.logits, whole.logits[..., vocab])
    assert torch.equal(part.labels, whole.labels) and torch.equal(part.valid, whole.valid)
    torch.testing.assert_close(part.confidence_logits, whole.confidence_logits)


def test_a_mask_outside_the_draft_vocabulary_drafts_its_first_allowed_token_with_confidence_zero():
    d, state = drafter_with_context()
    d.restrict_vocab(torch.arange(0, 50))
    allowed = torch.zeros(2, 97, dtype=torch.bool)
    allowed[0, [60, 70]] = True  # row 0: two allowed tokens, both outside the draft vocabulary
    allowed[1, 20:90] = True  # row 1: some inside
    out = d.draft(
        [state, state], torch.tensor([25, 25]), torch.tensor([15, 15]), torch.tensor([0.0, 1.0]), lambda k, t: allowed
    )
    assert (out.tokens[0] == 60).all() and (out.confidences[0] == 0).all()
    assert ((out.tokens[1] >= 20) & (out.tokens[1] < 50)).all() and (out.confidences[1] > 0).all()
    assert torch.equal(out.probs[0], torch.nn.functional.one_hot(out.tokens[0], 97).float())


def test_restrict_vocab_rejects_bad_ids():
    d, _ = drafter_with_context()
    empty = torch.tensor([], dtype=torch.int64)
    for bad in (torch.tensor([3, 2]), torch.tensor([1, 1]), empty, torch.tensor([96, 97]), torch.tensor([-1, 4])):
        with pytest.raises(ValueError, match="draft vocabulary"):
            d.restrict_vocab(bad)


@pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")
def test_quantized_drafter_multiplies_in_q8_0_and_drafts_close_to_the_dense_one():
    """``quantize`` (a quantized target's drafter): the backbone's linear layers and the draft vocabulary's LM head
    rows in Q8_0, the Markov W2 dense; logits within the int8 rounding of the dense drafter's."""
    d, state = drafter_with_context("vanilla")
    d.restrict_vocab(torch.arange(0, 97, 2))
    dense = d.draft([state], torch.tensor([25]), torch.tensor([15]))
    fresh = DrafterState()
    d.quantize()
    linears = [m for m in d.modules() if isinstance(m, ReplicatedLinear)]
    assert [m.qweight is None for m in linears] == [m is d.markov_head.markov_w2 for m in linears]
    assert all(m.weight is None for m in linears if m.qweight is not None)
    target = tiny_random_model()
    d.append_context([fresh], [features(target, list(range(10, 25)))], [torch.arange(15)])
    quant = d.draft([fresh], torch.tensor([25]), torch.tensor([15]))
    torch.testing.assert_close(quant.confidence_logits, dense.confidence_logits, atol=0.05, rtol=0.05)
    assert torch.isin(quant.tokens, d.draft_vocab).all()


def test_sharded_checkpoint_round_trip(tmp_path):
    """max_shard_bytes: HF's sharded layout (an index naming each tensor's file), every file's tensors within
    the limit, loaded back to the same weights; a tensor larger than a shard is an error naming it."""
    target = tiny_random_model()
    d = make_drafter(target)
    limit = max(v.numel() * v.element_size() for v in d.state_dict().values())  # the largest tensor
    path = save_drafter(d, tmp_path / "drafter", max_shard_bytes=limit)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (path / "model.safetensors").exists()
    state = d.state_dict()
    for file in files:
        names = [k for k, f in index["weight_map"].items() if f == file]
        assert sum(state[k].numel() * state[k].element_size() for k in names) <= limit
    loaded = load_drafter(path, target.embed_tokens.weight, target.lm_head_weight)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="larger than a shard"):
        save_drafter(d, tmp_path / "tiny_shards", max_shard_bytes=64)
