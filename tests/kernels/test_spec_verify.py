import importlib

import pytest
import torch

from sglang_dspark.kernels.spec_verify import draw_verify_noise, greedy_accept_lengths, rejection_sample

# ---------------------------------------------------------------- greedy, hand-built ragged cases

# (draft row, draft_len, target argmax row [K + 1], expected accept_len, expected next token)
GREEDY_CASES = [
    ([5, 6, 7], 3, [5, 6, 7, 8], 3, 8),  # all accepted -> bonus token
    ([5, 6, 7], 3, [5, 9, 7, 8], 1, 9),  # mismatch at slot 1 -> target's token there
    ([5, 6, 7], 3, [4, 6, 7, 8], 0, 4),  # first draft wrong
    ([5, 6, 0], 2, [5, 6, 9, 8], 2, 9),  # ragged: bonus sits at position draft_len, padding ignored
    ([5, 0, 0], 1, [5, 0, 0, 0], 1, 0),  # padding equal to the target must not extend the prefix
    ([0, 0, 0], 0, [3, 0, 0, 0], 0, 3),  # no drafts: plain decoding
    ([5, 6, 5], 3, [5, 6, 6, 1], 2, 6),  # accept stops at the first mismatch even if later ones match
]


def _greedy_batch():
    drafts = torch.tensor([c[0] for c in GREEDY_CASES])
    lens = torch.tensor([c[1] for c in GREEDY_CASES])
    target = torch.tensor([c[2] for c in GREEDY_CASES])
    return drafts, lens, target


def test_greedy_accept_lengths_ragged_cases():
    accept, nxt = greedy_accept_lengths(*_greedy_batch())
    assert accept.tolist() == [c[3] for c in GREEDY_CASES]
    assert nxt.tolist() == [c[4] for c in GREEDY_CASES]


def test_greedy_accept_lengths_no_draft_slots():
    accept, nxt = greedy_accept_lengths(
        torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.tensor([[4], [7]])
    )
    assert accept.tolist() == [0, 0] and nxt.tolist() == [4, 7]


@pytest.mark.parametrize(
    "lens, target_shape",
    [([4, 0], (2, 4)), ([-1, 0], (2, 4)), ([1, 1], (2, 3)), ([1], (2, 4))],
)
def test_greedy_rejects_bad_shapes(lens, target_shape):
    with pytest.raises(ValueError):
        greedy_accept_lengths(
            torch.zeros(2, 3, dtype=torch.long), torch.tensor(lens), torch.zeros(target_shape, dtype=torch.long)
        )


# ---------------------------------------------------------------- rejection sampling, exact properties


def _random_case(B, K, V, seed, one_hot_target=False, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(B, K + 1, V, generator=g) * scale, dim=-1)  # [B, K+1, V]
    if one_hot_target:
        target = torch.nn.functional.one_hot(target.argmax(-1), V).float()
    draft_probs = torch.softmax(torch.randn(B, K, V, generator=g) * 2, dim=-1)  # [B, K, V]
    drafts = torch.multinomial(draft_probs.view(-1, V), 1, generator=g).view(B, K)  # [B, K]
    lens = torch.randint(0, K + 1, (B,), generator=g)  # [B]
    return drafts, lens, draft_probs, target


def test_rejection_with_one_hot_target_equals_greedy():
    """Greedy rows (one-hot p_t) accept exactly the drafts equal to the argmax, whatever p_d and noise."""
    drafts, lens, draft_probs, target = _random_case(64, 4, 5, seed=1, one_hot_target=True)
    argmax = target.argmax(-1)
    drafts = torch.where(torch.rand(drafts.shape) < 0.7, argmax[:, :4], drafts)  # mostly right drafts
    expected = greedy_accept_lengths(drafts, lens, argmax)
    for probs in (draft_probs, None):
        uniforms, expo = draw_verify_noise(lens, 4, 5)
        got = rejection_sample(drafts, lens, probs, target, uniforms, expo)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_rejection_one_hot_draft_acceptance_is_target_prob():
    """p_d = one-hot: accept iff u < p_t(x); the correction never re-emits the rejected draft."""
    target = torch.tensor([[[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]]]).repeat(4, 1, 1)  # [4, 2, 3]
    drafts = torch.zeros(4, 1, dtype=torch.long)  # every row drafts token 0 (p_t = 0.6)
    lens = torch.ones(4, dtype=torch.long)
    uniforms = torch.tensor([[0.0], [0.59], [0.6], [0.99]])
    accept, nxt = rejection_sample(drafts, lens, None, target, uniforms, torch.ones(4, 3))
    assert accept.tolist() == [1, 1, 0, 0]
    assert nxt.tolist() == [2, 2, 1, 1]  # bonus argmax of p_t[1] / 1; correction = the only other token


def test_rejection_empty_residual_falls_back_to_target():
    """A rejected draft with p_t == p_d everywhere leaves max(0, p_t - p_d) = 0: sample p_t instead."""
    target = torch.tensor([[[0.0, 0.3, 0.7], [1.0, 0.0, 0.0]]])  # [1, 2, 3]
    accept, nxt = rejection_sample(
        torch.tensor([[0]]), torch.tensor([1]), target[:, :1].clone(), target, torch.tensor([[0.5]]), torch.ones(1, 3)
    )
    assert accept.tolist() == [0] and nxt.tolist() == [2]


def test_draw_verify_noise_seeded_rows_are_batch_independent():
    lens = torch.tensor([2, 3])
    gens = [torch.Generator().manual_seed(7), None]
    u1, e1 = draw_verify_noise(lens, 3, 11, gens)
    u2, e2 = draw_verify_noise(lens[:1], 5, 11, [torch.Generator().manual_seed(7)])
    assert torch.equal(u1[0, :2], u2[0, :2]) and torch.equal(e1[0], e2[0])
    assert bool((u1 >= 0).all() & (u1 < 1).all() & (e1 > 0).all())


# ---------------------------------------------------------------- Triton kernels vs the reference


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton", reason="triton is not installed: Triton kernel tests skipped")
    return importlib.import_module("sglang_dspark.kernels.spec_verify_triton")


def on(device: str, *tensors):
    """The tensors (None kept) on ``device``: the Triton kernels run on the GPU, or the CPU's interpreter."""
    return [t if t is None else t.to(device) for t in tensors]


def cpu(*tensors):
    return [t.cpu() for t in tensors]


def test_triton_greedy_matches_reference(kernels, triton_device):
    batch = _greedy_batch()
    got = cpu(*kernels.greedy_accept_lengths_triton(*on(triton_device, *batch)))
    expected = greedy_accept_lengths(*batch)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("one_hot_draft", [False, True])
def test_triton_rejection_matches_reference(kernels, triton_device, K, one_hot_draft):
    B, V = 16, 37  # V not a multiple of the vocabulary tile: several tiles and a masked tail
    drafts, lens, draft_probs, target = _random_case(B, K, V, seed=K, scale=4.0)
    draft_probs = None if one_hot_draft else draft_probs
    if K:
        lens[: B // 2] = K
        drafts[::2] = target[::2, :K].argmax(-1)  # half the rows draft the target's argmax: long accepts
    gens = [torch.Generator().manual_seed(b) for b in range(B)]
    uniforms, expo = draw_verify_noise(lens, K, V, gens)
    inputs = on(triton_device, drafts, lens, draft_probs, target, uniforms, expo)
    got = cpu(*kernels.rejection_sample_triton(*inputs, block_v=16))
    expected = rejection_sample(drafts, lens, draft_probs, target, uniforms, expo)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    if K:  # the case covers rejections, partial accepts and bonus draws
        accept = expected[0]
        assert bool((accept < lens).any()) and bool((accept == K).any()) and bool((accept == 0).any())


def test_triton_rejection_empty_residual_fallback(kernels, triton_device):
    target = torch.tensor([[[0.0, 0.3, 0.7], [1.0, 0.0, 0.0]]])
    args = (torch.tensor([[0]]), torch.tensor([1]), target[:, :1].clone(), target, torch.tensor([[0.5]]))
    expo = torch.tensor([[1.0, 2.0, 0.5]])
    got = kernels.rejection_sample_triton(*on(triton_device, *args, expo))
    assert [t.tolist() for t in got] == [t.tolist() for t in rejection_sample(*args, expo)] == [[0], [2]]
