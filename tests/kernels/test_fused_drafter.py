"""FusedDrafter (csrc_avx512/drafter.cpp) drafts what the drafter's modules draft on the same quantized weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sglang_dspark.kernels.quant_linear import missing_cpu_flags
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.speculative.dspark import DrafterState

sys.path.insert(0, str(Path(__file__).parents[1] / "speculative"))
from tiny_drafter import features, make_drafter  # noqa: E402

pytestmark = pytest.mark.skipif(bool(missing_cpu_flags()), reason="the quantized kernel needs AVX-512")

IDS = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1)).tolist()


def quantized_drafter(kind="vanilla", rank=16, dtype=torch.float32):
    target = tiny_random_model()
    d = make_drafter(target, kind, rank=rank).to(dtype)
    d.bind_target(target.embed_tokens.weight.to(dtype), target.lm_head_weight.to(dtype))
    d.restrict_vocab(torch.arange(1, 97, 2))
    d.quantize()
    return target, d


def contexts(target, d):
    """Two requests, one given its context in two chunks: states of 20 and 12 positions."""
    feats = features(target, IDS).to(d.dtype)
    states = [DrafterState(), DrafterState()]
    d.append_context(states[:1], [feats[:10]], [torch.arange(10)])
    d.append_context(states, [feats[10:20], feats[:12]], [torch.arange(10, 20), torch.arange(12)])
    return states


def native_and_modules(d, run):
    """run(d) with the native drafter, then with the modules (same weights, fresh states)."""
    fused = d.fused
    got = run(d)
    d.fused = None
    try:
        return got, run(d)
    finally:
        d.fused = fused


def test_the_quantized_drafter_runs_natively_where_it_can():
    _, d = quantized_drafter()
    assert d.fused is not None
    assert quantized_drafter("gated")[1].fused is None  # the native walk is the vanilla Markov head's
    target = tiny_random_model()
    whole_vocab = make_drafter(target, rank=16)
    whole_vocab.quantize()  # no draft vocabulary: the LM head stays the target's
    assert whole_vocab.fused is None


def test_context_keys_and_values_match_the_modules():
    target, d = quantized_drafter()
    native, modules = native_and_modules(d, lambda d: contexts(target, d))
    for a, b in zip(native, modules, strict=True):
        assert a.length == b.length
        for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True):
            torch.testing.assert_close(x[: a.length], y[: b.length], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_drafts_match_the_modules(batch):
    target, d = quantized_drafter()
    anchors, positions = torch.tensor([IDS[20], IDS[12]])[:batch], torch.tensor([20, 12])[:batch]

    def run(d):
        states = contexts(target, d)[:batch]
        return d.draft(states, anchors, positions), d._block(
            states, d._block_input(anchors), positions[:, None] + torch.arange(4)
        )

    (native, (hidden, base)), (modules, (want_hidden, want_base)) = native_and_modules(d, run)
    torch.testing.assert_close(hidden, want_hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(base, want_base, atol=1e-4, rtol=1e-4)
    assert torch.equal(native.tokens, modules.tokens)
    assert torch.isin(native.tokens, d.draft_vocab).all()
    torch.testing.assert_close(native.confidence_logits, modules.confidence_logits, atol=1e-4, rtol=1e-4)
    assert native.probs is None and modules.probs is None


def test_masked_and_sampled_drafts_walk_the_native_block_in_python():
    target, d = quantized_drafter()
    allowed = torch.zeros(2, 97, dtype=torch.bool)
    allowed[:, 41:60] = True

    def run(d):
        gen = torch.Generator().manual_seed(0)
        temps = torch.tensor([0.0, 1.0])
        return d.draft(contexts(target, d), torch.tensor([IDS[20], IDS[12]]), torch.tensor([20, 12]), temps,
                       lambda k, t: allowed, gen)  # fmt: skip

    native, modules = native_and_modules(d, run)
    assert ((native.tokens > 40) & (native.tokens < 60)).all()
    assert torch.equal(native.tokens[0], modules.tokens[0])  # the greedy row
    torch.testing.assert_close(native.probs.sum(-1), torch.ones(2, 4))


def test_bf16_drafts_stay_close_to_the_modules():
    target, d = quantized_drafter(dtype=torch.bfloat16)

    def run(d):
        states = contexts(target, d)
        anchors, positions = torch.tensor([IDS[20], IDS[12]]), torch.tensor([20, 12])
        return d._block(states, d._block_input(anchors), positions[:, None] + torch.arange(4))

    (hidden, base), (want_hidden, want_base) = native_and_modules(d, run)
    assert hidden.dtype == torch.bfloat16 and base.dtype == torch.float32
    torch.testing.assert_close(hidden.float(), want_hidden.float(), atol=0.05, rtol=0.05)
    # the LM head rounds its input to int8 per 32 values: a last-bit difference in a bf16 hidden state moves them
    torch.testing.assert_close(base, want_base, atol=0.05 * float(want_base.abs().max()), rtol=0)


def test_a_block_grows_a_full_context_buffer():
    """The block's keys go past the context's rows: a buffer the context fills grows first."""
    target, d = quantized_drafter()
    ids = IDS + IDS[:24]
    feats = features(target, ids).to(d.dtype)
    state = DrafterState()
    d.append_context([state], [feats[:32]], [torch.arange(32)])
    capacity = state.keys[0].shape[0]
    d.append_context([state], [feats[32:capacity]], [torch.arange(32, capacity)])
    assert state.length == capacity == state.keys[0].shape[0]
    out = d.draft([state], torch.tensor([ids[-1]]), torch.tensor([capacity]))
    assert state.keys[0].shape[0] >= capacity + 4 and out.tokens.shape == (1, 4)


def test_the_greedy_walk_takes_the_argmax_of_base_plus_markov_bias():
    """The walk prunes rows that cannot win (markov_argmax): against every row computed, on base logits spread
    as widely as the Markov bias and on ones far wider, the same tokens."""
    _, d = quantized_drafter()
    w1, w2, vocab = d.markov_head.markov_w1.weight.detach(), d._draft_rows[1], d.draft_vocab
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 4, d.config.hidden_size, generator=gen)
    anchors = torch.tensor([5, 17, 90])
    for spread in (0.1, 1.0, 30.0):
        base = spread * torch.randn(3, 4, len(vocab), generator=gen)
        tokens, _ = d.fused.greedy_walk(hidden, base, anchors)
        prev = anchors
        for k in range(4):
            want = vocab[(base[:, k] + w1[prev] @ w2.T).argmax(dim=1)]
            assert torch.equal(tokens[:, k], want), (spread, k)
            prev = want
