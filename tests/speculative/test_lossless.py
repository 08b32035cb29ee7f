"""Speculative decoding emits exactly the target distribution: chi-square goodness-of-fit tests of
rejection sampling alone and of the whole draft -> plan -> verify pipeline (paper Appendix A)."""

import pytest
import torch

from sglang_dspark.kernels.spec_verify import rejection_sample
from sglang_dspark.layers.sampler import SamplingBatchInfo, probs_from_logits
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.speculative.planner import (
    SPSTable,
    async_batch_cap,
    plan_verify_lengths,
    plan_verify_lengths_async,
)

P_VALUE = 1e-4  # fixed seeds: deterministic, but keep a margin against unlucky ones


def chi_square_pvalue(tokens, probs):
    """tokens [N] emitted ids, probs [V] claimed distribution -> p-value (tokens with p = 0 must not occur)."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0, "emitted a token the distribution gives probability 0"
    df = int(support.sum()) - 1
    if df <= 0:  # one possible token (or no data): nothing left to test
        return 1.0
    stat = ((counts[support] - expected[support]) ** 2 / expected[support]).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2), stat / 2))


def verify(drafts, lengths, p_d, p_t, g):
    """One verify round of N independent trials with shared per-position distributions -> committed
    tokens [N, K + 1] (slots past accept_lens + 1 are padding) and accept_lens [N].
    drafts [N, K], lengths [N], p_d [K, V] or None (one-hot drafts), p_t [K + 1, V]."""
    N, K = drafts.shape
    V = p_t.shape[1]
    uniforms = torch.rand(N, K, generator=g)
    exponentials = torch.empty(N, V).exponential_(generator=g)
    draft_probs = None if p_d is None else p_d.expand(N, K, V)
    accept, nxt = rejection_sample(drafts, lengths, draft_probs, p_t.expand(N, K + 1, V), uniforms, exponentials)
    committed = torch.cat([drafts, torch.zeros(N, 1, dtype=torch.long)], dim=1)
    committed.scatter_(1, accept.unsqueeze(1), nxt.unsqueeze(1))
    return committed, accept


# ---------------------------------------------------------------- rejection sampling alone

TARGETS = {
    "plain": SamplingParams(),
    "temperature+top_p+top_k": SamplingParams(temperature=0.7, top_p=0.8, top_k=4),
    "greedy": SamplingParams(temperature=0.0),
}


@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("drafter", ["sampled", "one_hot"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_rejection_sampling_is_lossless(K, drafter, target):
    """Committed token k (among trials that reach it) follows the processed p_t[k], whatever p_d."""
    V, N = 6, 20000
    g = torch.Generator().manual_seed(100 * K + len(drafter) + len(target))
    logits = torch.randn(K + 1, V, generator=g) * 1.5  # [K + 1, V]
    p_t = probs_from_logits(logits, SamplingBatchInfo.from_params([TARGETS[target]] * (K + 1), V))  # what plain
    # decoding samples from; the drafter is correlated with the target but differs (full support, no filters).
    p_d = torch.softmax(logits[:K] + torch.randn(K, V, generator=g), dim=-1)  # [K, V]
    drafts = torch.multinomial(p_d, N, replacement=True, generator=g).t()  # [N, K]
    if drafter == "one_hot":  # deterministic proposals (n-gram, greedy drafter): p_d is one-hot at the draft
        p_d = None
    committed, accept = verify(drafts, torch.full((N,), K), p_d, p_t, g)
    for k in range(K + 1):
        tokens = committed[accept >= k, k]  # committed token k of the trials that got that far
        assert tokens.numel() >= 200 or target == "greedy", f"position {k} barely reached"
        assert chi_square_pvalue(tokens, p_t[k]) > P_VALUE, f"position {k}"


# ---------------------------------------------------------------- the pipeline: draft, plan, verify

A, B = 0, 1
P_T = torch.tensor([0.7, 0.3])  # target, the same at every position
P_D = torch.tensor([0.5, 0.5])  # drafter
SPS = SPSTable((1, 2, 3), (1.0, 0.5, 0.45))


def appendix_a_first_tokens(planner, trials=20000, seed=0):
    """Each trial: draft x1, x2 ~ p_d; confidences c1 = 0.8, c2 = 0.9 if x1 = A else 0; plan the verify
    length for this single request; verify with rejection sampling. Returns (first emitted tokens [N],
    verify lengths [N], drafts [N, 2])."""
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(P_D, 2 * trials, replacement=True, generator=g).view(trials, 2)  # [N, 2]
    conf = torch.stack([torch.full((trials,), 0.8), torch.where(drafts[:, 0] == A, 0.9, 0.0)], dim=1)  # [N, 2]
    distinct, which = torch.unique(conf, dim=0, return_inverse=True)  # plans depend on conf only: plan once each
    lengths = torch.cat([planner(row.unsqueeze(0)) for row in distinct])[which]  # [N]
    committed, _ = verify(drafts, lengths, P_D.expand(2, 2), P_T.expand(3, 2), g)
    return committed[:, 0], lengths, drafts


def test_appendix_a_early_stop_is_lossless():
    first, lengths, _ = appendix_a_first_tokens(lambda c: plan_verify_lengths(c, SPS))
    assert lengths.sum() == 0  # admitting x1 already lowers theta: plain decoding from p_t
    assert chi_square_pvalue(first, P_T) > P_VALUE


def test_appendix_a_search_without_early_stop_is_biased():
    """Verifying x1 only when c2 > 0, i.e. only when x1 = A, lets x1's own value decide its admission:
    A is then always accepted (p_t(A) / p_d(A) > 1), B never even verified -> P(A) = 0.5 + 0.5 * 0.7."""
    first, lengths, drafts = appendix_a_first_tokens(lambda c: plan_verify_lengths(c, SPS, early_stop=False))
    assert torch.equal(lengths == 2, drafts[:, 0] == A)
    assert chi_square_pvalue(first, torch.tensor([0.85, 0.15])) > P_VALUE
    assert chi_square_pvalue(first, P_T) < 1e-12


def test_appendix_a_async_top_k_is_lossless():
    """Section 5.2: the cap comes from already-verified (old) confidences, so it may use the full search;
    the current step then takes the top-K by current survival, which stays lossless."""
    cap = async_batch_cap(torch.tensor([[0.8, 0.9]]), SPS)
    first, lengths, _ = appendix_a_first_tokens(lambda c: plan_verify_lengths_async(c, cap))
    assert cap == 2 and lengths.min() == 1 and lengths.max() == 2
    assert chi_square_pvalue(first, P_T) > P_VALUE
