"""DSpark losses over a draft vocabulary of K ids: exactly the whole-vocabulary losses of a drafter whose
distribution is zero outside those ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglang_dspark.training.losses import LossWeights, TargetBlock, acceptance_probability, dspark_loss
from sglang_dspark.training.trainer import TargetView

A, G, V = 3, 4, 50
VOCAB = torch.arange(2, V, 3)  # [16] ascending ids


def block(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    draft = torch.randn(A, G, len(VOCAB), generator=g)  # [A, G, K]
    target = 2 * torch.randn(A, G, V, generator=g)
    labels = torch.randint(0, V, (A, G), generator=g)
    labels[0, :2] = VOCAB[:2]  # some true tokens inside the vocabulary, some (almost surely) outside
    valid = torch.ones(A, G, dtype=torch.bool)
    valid[2, 3] = False
    return draft, target, labels, valid


def padded(draft_k: torch.Tensor) -> torch.Tensor:
    """[A, G, K] -> [A, G, V] logits whose softmax is exactly zero outside the vocabulary."""
    full = torch.full((*draft_k.shape[:-1], V), -1e4)
    full[..., VOCAB] = draft_k
    return full


def local(ids: torch.Tensor) -> torch.Tensor:
    index = torch.full((V,), -1, dtype=torch.int64)
    index[VOCAB] = torch.arange(len(VOCAB))
    return index[ids]


def test_acceptance_is_the_sum_of_minimums_over_the_draftable_tokens():
    draft, target, _, _ = block()
    p_t = target.softmax(-1)
    brute = torch.minimum(padded(draft).softmax(-1), p_t).sum(-1)
    torch.testing.assert_close(acceptance_probability(draft, p_t[..., VOCAB]), brute)
    full_draft = torch.randn(A, G, V)
    torch.testing.assert_close(
        acceptance_probability(full_draft, p_t), torch.minimum(full_draft.softmax(-1), p_t).sum(-1)
    )


def test_vocabulary_loss_and_gradient_equal_the_whole_vocabulary_ones():
    draft, target, labels, valid = block()
    conf = torch.randn(A, G)
    weights = LossWeights(ce=0.0)  # the L1 and confidence terms (a true token outside has no CE: below)
    d_k = draft.clone().requires_grad_(True)
    d_full = draft.clone().requires_grad_(True)
    restricted = TargetBlock(target.softmax(-1)[..., VOCAB], local(target.argmax(-1)), local(labels))
    whole = TargetBlock(target.softmax(-1), target.argmax(-1), labels)
    loss_k, m_k = dspark_loss(d_k, restricted, valid, conf, weights)
    loss_v, m_v = dspark_loss(padded(d_full), whole, valid, conf, weights)
    loss_k.backward()
    loss_v.backward()
    torch.testing.assert_close(loss_k, loss_v)
    torch.testing.assert_close(d_k.grad, d_full.grad)
    assert m_k.keys() == m_v.keys()
    for key in m_k.keys() - {"ce"}:
        assert m_k[key] == pytest.approx(m_v[key], rel=1e-5), key


def test_cross_entropy_counts_the_true_tokens_inside_the_vocabulary_only():
    draft, target, labels, valid = block(1)
    restricted = TargetBlock(target.softmax(-1)[..., VOCAB], local(target.argmax(-1)), local(labels))
    inside = (restricted.labels >= 0) & valid
    assert inside.any() and not inside.all()
    _, metrics = dspark_loss(draft, restricted, valid, None, LossWeights(ce=1.0, l1=0.0, decay=1e9))
    ce = F.cross_entropy(draft[inside], restricted.labels[inside])
    assert metrics["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_target_view_gives_the_target_over_the_vocabulary_once_per_position():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (12,), generator=g)
    view = TargetView(ids, torch.zeros(12, 8), torch.randn(12 - 1 - 4, V, generator=g), prompt_len=4)
    anchors = torch.tensor([4, 6, 9])
    labels = torch.randint(0, V, (3, G), generator=g)
    whole = view.target_block(anchors, labels, None)
    part = view.target_block(anchors, labels, VOCAB)
    aligned = view.aligned_logits(anchors, G)  # [3, G, V]
    torch.testing.assert_close(whole.probs, aligned.softmax(-1))
    assert torch.equal(whole.greedy, aligned.argmax(-1)) and torch.equal(whole.labels, labels)
    torch.testing.assert_close(part.probs, aligned.softmax(-1)[..., VOCAB])
    assert torch.equal(part.greedy, local(aligned.argmax(-1))) and torch.equal(part.labels, local(labels))
