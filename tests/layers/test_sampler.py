import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sglang_dspark.layers.sampler import (
    SamplingBatchInfo,
    apply_penalties,
    compute_logprobs,
    greedy_ids,
    greedy_or_sample,
    make_generator,
    probs_from_logits,
    process_logits,
    sample,
)
from sglang_dspark.sampling.sampling_params import SamplingParams, SamplingParamsError

V = 64


def rand_logits(b, v=V, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * scale


def info_for(*params, vocab=V):
    return SamplingBatchInfo.from_params(list(params), vocab)


def hf_probs(logits_row, p: SamplingParams):
    """HF warper chain (generation order: temperature, top-k, top-p, min-p) -> softmax."""
    x = logits_row.unsqueeze(0).clone()
    ids = torch.zeros(1, 1, dtype=torch.long)
    if p.temperature != 1.0:
        x = TemperatureLogitsWarper(p.temperature)(ids, x)
    if p.top_k > 0:
        x = TopKLogitsWarper(p.top_k)(ids, x)
    if p.top_p < 1.0:
        x = TopPLogitsWarper(p.top_p)(ids, x)
    if p.min_p > 0.0:
        x = MinPLogitsWarper(p.min_p)(ids, x)
    return torch.softmax(x, dim=-1)[0]


# ---------------------------------------------------------------- SamplingBatchInfo


def test_batch_info_from_params():
    params = [
        SamplingParams(),
        SamplingParams(temperature=0.5, top_k=10, top_p=0.9, min_p=0.05),
        SamplingParams(temperature=0.0, top_k=3, top_p=0.5),  # greedy
        SamplingParams(temperature=0.8, top_k=1),  # greedy via top_k=1
        SamplingParams(top_k=1000, logit_bias={5: 2.0}, repetition_penalty=1.2),
    ]
    info = SamplingBatchInfo.from_params(params, V)
    assert len(info) == 5
    assert info.temperatures.dtype == torch.float32 and info.top_ks.dtype == torch.int64
    assert info.temperatures.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 1.0])
    assert info.top_ks.tolist() == [V, 10, V, V, V]  # off / greedy / > vocab -> vocab_size
    assert info.top_ps.tolist() == pytest.approx([1.0, 0.9, 1.0, 1.0, 1.0])
    assert info.min_ps.tolist() == pytest.approx([0.0, 0.05, 0.0, 0.0, 0.0])
    assert info.need_top_k and info.need_top_p and info.need_min_p and info.has_penalties
    assert not info.is_all_greedy
    assert info.logit_bias.shape == (5, V)
    assert info.logit_bias[4, 5] == 2.0 and info.logit_bias.abs().sum() == 2.0

    plain = info_for(SamplingParams(), SamplingParams(temperature=0.3))
    assert not (plain.need_top_k or plain.need_top_p or plain.need_min_p or plain.has_penalties)
    assert plain.logit_bias is None
    assert info_for(SamplingParams(temperature=0), SamplingParams(top_k=1)).is_all_greedy

    with pytest.raises(SamplingParamsError, match="logit_bias"):
        info_for(SamplingParams(logit_bias={V: 1.0}))


def test_index_select_expands_rows():
    info = info_for(SamplingParams(temperature=0.5), SamplingParams(top_p=0.7))
    ex = info.index_select(torch.tensor([0, 0, 1, 1, 1]))
    assert ex.temperatures.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0])
    assert ex.top_ps.tolist() == pytest.approx([1.0, 1.0, 0.7, 0.7, 0.7])
    logits = rand_logits(2)
    torch.testing.assert_close(
        probs_from_logits(logits[[0, 0, 1, 1, 1]], ex), probs_from_logits(logits, info)[[0, 0, 1, 1, 1]]
    )


# ---------------------------------------------------------------- penalties


def test_penalties_hand_computed():
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5, 4.0], [1.0, -2.0, 3.0, 0.5, 4.0]])
    info = SamplingBatchInfo.from_params(
        [
            SamplingParams(frequency_penalty=0.5, presence_penalty=1.0),
            SamplingParams(repetition_penalty=2.0),
        ],
        5,
    )
    prompt = [[4], [0, 1]]
    output = [[2, 2, 3], [2, 1]]
    out = apply_penalties(logits, info, prompt, output)
    # row 0: token 2 count 2 -> 3 - 0.5*2 - 1; token 3 count 1 -> 0.5 - 0.5 - 1; prompt ignored.
    # row 1: tokens {0, 1, 2} seen -> 1/2, -2*2, 3/2; 3 and 4 untouched.
    expected = torch.tensor([[1.0, -2.0, 1.0, -1.0, 4.0], [0.5, -4.0, 1.5, 0.5, 4.0]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(logits[0], torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0]))  # input untouched


def test_penalties_skipped_when_off():
    logits = rand_logits(2)
    info = info_for(SamplingParams(), SamplingParams())
    assert apply_penalties(logits, info, [[1, 2], [3]], [[4], []]) is logits


def test_repetition_penalty_matches_hf():
    B, V_ = 4, 100
    logits = rand_logits(B, V_, seed=1)
    g = torch.Generator().manual_seed(2)
    prompt = [torch.randint(0, V_, (n,), generator=g).tolist() for n in (5, 12, 1, 30)]
    output = [torch.randint(0, V_, (n,), generator=g).tolist() for n in (3, 0, 7, 20)]
    pens = [1.3, 0.7, 2.0, 1.05]
    info = SamplingBatchInfo.from_params([SamplingParams(repetition_penalty=p) for p in pens], V_)
    out = apply_penalties(logits, info, prompt, output)
    for i in range(B):
        ids = torch.tensor([prompt[i] + output[i]])
        ref = RepetitionPenaltyLogitsProcessor(pens[i])(ids, logits[i : i + 1].clone())[0]
        torch.testing.assert_close(out[i], ref)


def test_frequency_presence_random_against_loop():
    B, V_ = 3, 30
    logits = rand_logits(B, V_, seed=3)
    g = torch.Generator().manual_seed(4)
    output = [torch.randint(0, V_, (n,), generator=g).tolist() for n in (10, 0, 25)]
    params = [
        SamplingParams(frequency_penalty=0.3, presence_penalty=-0.4),
        SamplingParams(frequency_penalty=1.0),
        SamplingParams(presence_penalty=1.5),
    ]
    out = apply_penalties(logits, SamplingBatchInfo.from_params(params, V_), [[]] * B, output)
    ref = logits.clone()
    for i, p in enumerate(params):
        for t in set(output[i]):
            c = output[i].count(t)
            ref[i, t] -= p.frequency_penalty * c + p.presence_penalty
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------- process_logits


def test_process_logits_bias_and_banned():
    logits = rand_logits(2, 8)
    info = SamplingBatchInfo.from_params([SamplingParams(logit_bias={"3": 5.0, 0: -1.0}), SamplingParams()], 8)
    banned = torch.zeros(2, 8, dtype=torch.bool)
    banned[0, 3] = True
    banned[1, [1, 2]] = True
    out = process_logits(logits.half(), info, [[], []], [[], []], banned)
    assert out.dtype == torch.float32
    ref = logits.half().float()
    ref[0, 0] -= 1.0
    ref[0, 3] = float("-inf")
    ref[1, [1, 2]] = float("-inf")
    torch.testing.assert_close(out, ref)
    unbanned = process_logits(logits, info, [[], []], [[], []])
    assert unbanned[0, 3] == logits[0, 3] + 5.0


def test_banned_tokens_never_sampled():
    torch.manual_seed(0)
    B, V_ = 4, 16
    logits = torch.zeros(B, V_)
    logits[:, 0] = 10.0  # the favourite token is banned
    banned = torch.zeros(B, V_, dtype=torch.bool)
    banned[:, 0] = True
    banned[:, 8:] = True
    params = [
        SamplingParams(),
        SamplingParams(temperature=0),
        SamplingParams(top_p=0.5),
        SamplingParams(top_k=3),
    ]
    info = SamplingBatchInfo.from_params(params, V_)
    x = process_logits(logits, info, [[]] * B, [[]] * B, banned)
    probs = probs_from_logits(x, info)
    assert torch.all(probs[banned] == 0)
    for _ in range(50):
        toks = greedy_or_sample(x, info, [None] * B)
        assert not banned[torch.arange(B), toks].any()


# ---------------------------------------------------------------- probs_from_logits


def test_temperature_and_plain_softmax():
    logits = rand_logits(1).expand(3, V)
    temps = [1.0, 0.5, 1.7]
    info = SamplingBatchInfo.from_params([SamplingParams(temperature=t) for t in temps], V)
    probs = probs_from_logits(logits, info)
    assert probs.dtype == torch.float32
    for i, t in enumerate(temps):
        torch.testing.assert_close(probs[i], torch.softmax(logits[i] / t, -1))
    # Lower temperature -> sharper distribution.
    assert probs[1].max() > probs[0].max() > probs[2].max()


def test_greedy_rows_one_hot():
    logits = rand_logits(3)
    info = info_for(SamplingParams(temperature=0), SamplingParams(), SamplingParams(temperature=0.9, top_k=1))
    probs = probs_from_logits(logits, info)
    am = logits.argmax(-1)
    for i in (0, 2):
        assert probs[i, am[i]] == 1.0 and probs[i].sum() == 1.0
    torch.testing.assert_close(probs[1], torch.softmax(logits[1], -1))
    all_greedy = info_for(SamplingParams(temperature=0), SamplingParams(top_k=1))
    p = probs_from_logits(logits[:2], all_greedy)
    assert torch.equal(p, torch.nn.functional.one_hot(am[:2], V).float())
    assert torch.equal(sample(p, [None, make_generator(1)]), am[:2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_ids_is_argmax_with_ties_nan_and_inf(dtype):
    """greedy_ids takes torch's max reduction for its speed: it must answer what argmax answers, the first
    maximum of a row with ties, a NaN wherever one is, the first index of an all -inf row."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, vocab = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(1, 70000, (1,), generator=gen))
        logits = torch.randint(-4, 4, (rows, vocab), generator=gen).to(dtype)  # many ties at the maximum
        if trial % 3 == 0:
            logits[0, int(torch.randint(0, vocab, (1,), generator=gen))] = float("nan")
        if trial % 4 == 0:
            logits[-1] = float("-inf")
        assert torch.equal(greedy_ids(logits), logits.argmax(dim=-1)), trial


CASES = [
    SamplingParams(top_k=5),
    SamplingParams(top_k=1000),
    SamplingParams(top_k=V),
    SamplingParams(top_p=0.9),
    SamplingParams(top_p=0.3),
    SamplingParams(top_p=1e-4),  # keeps at least one token
    SamplingParams(min_p=0.1),
    SamplingParams(min_p=1.0),
    SamplingParams(temperature=0.7, top_k=20, top_p=0.8),
    SamplingParams(temperature=1.3, top_k=30, top_p=0.95, min_p=0.05),
    SamplingParams(temperature=0.5, top_p=0.6, min_p=0.2),
    SamplingParams(),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filters_match_hf_warpers_per_row(seed):
    logits = rand_logits(len(CASES), seed=seed)
    info = SamplingBatchInfo.from_params(CASES, V)
    probs = probs_from_logits(logits, info)
    for i, p in enumerate(CASES):
        ref = hf_probs(logits[i], p)
        torch.testing.assert_close(probs[i], ref, atol=1e-6, rtol=1e-5)
        assert torch.equal(probs[i] > 0, ref > 0), f"support differs for {p}"
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(CASES)))


def test_top_k_keeps_ties_like_hf():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    info = SamplingBatchInfo.from_params([SamplingParams(top_k=2)], 6)
    probs = probs_from_logits(logits, info)
    torch.testing.assert_close(probs[0], hf_probs(logits[0], SamplingParams(top_k=2)))
    assert (probs[0] > 0).tolist() == [True, True, True, True, False, False]


def test_top_p_exact_support():
    # probs 0.5, 0.3, 0.2: top_p=0.5 keeps only the first (mass before 2nd == 0.5, not < 0.5);
    # top_p=0.6 keeps two; top_p=0.85 keeps all three.
    logits = torch.tensor([[0.5, 0.3, 0.2]] * 3).log()
    info = SamplingBatchInfo.from_params([SamplingParams(top_p=t) for t in (0.5, 0.6, 0.85)], 3)
    probs = probs_from_logits(logits, info)
    torch.testing.assert_close(probs[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(probs[1], torch.tensor([0.625, 0.375, 0.0]))
    torch.testing.assert_close(probs[2], torch.tensor([0.5, 0.3, 0.2]))


def test_min_p_relative_to_max():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    info = SamplingBatchInfo.from_params([SamplingParams(min_p=0.45)], 4)  # threshold 0.18
    probs = probs_from_logits(logits, info)
    torch.testing.assert_close(probs[0], torch.tensor([4 / 9, 3 / 9, 2 / 9, 0.0]))


def test_no_sort_when_top_p_off(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("sorted although top_p is off")

    monkeypatch.setattr(torch, "sort", boom)
    monkeypatch.setattr(torch, "argsort", boom)
    logits = rand_logits(3)
    info = info_for(SamplingParams(top_k=5), SamplingParams(min_p=0.1), SamplingParams(temperature=0))
    probs = probs_from_logits(logits, info)
    assert torch.isfinite(probs).all()


def test_all_greedy_fast_path_is_argmax(monkeypatch):
    import sglang_dspark.layers.sampler as sampler_mod

    def boom(*a, **k):
        raise AssertionError("softmax path used for an all-greedy batch")

    monkeypatch.setattr(sampler_mod, "probs_from_logits", boom)
    logits = rand_logits(4)
    info = info_for(*[SamplingParams(temperature=0)] * 4)
    assert torch.equal(greedy_or_sample(logits, info, [None] * 4), logits.argmax(-1))


# ---------------------------------------------------------------- sample


def test_seeded_sampling_reproducible_and_batch_independent():
    p_seeded = SamplingParams(temperature=1.0, top_p=0.95)

    def run(batch_params, batch_logits, seed_row, steps=20):
        gens = [make_generator(1234) if i == seed_row else None for i in range(len(batch_params))]
        info = SamplingBatchInfo.from_params(batch_params, V)
        out = []
        for _ in range(steps):
            out.append(int(greedy_or_sample(batch_logits, info, gens)[seed_row]))
        return out

    row = rand_logits(1, seed=7, scale=1.0)
    alone = run([p_seeded], row, 0)
    assert alone == run([p_seeded], row, 0)  # reproducible
    assert len(set(alone)) > 1  # actually random
    torch.manual_seed(999)  # the global RNG must not matter for the seeded row
    others = rand_logits(3, seed=8)
    batch_logits = torch.cat([others[:2], row, others[2:]])
    batch = [SamplingParams(top_k=4), SamplingParams(temperature=0), p_seeded, SamplingParams(min_p=0.2)]
    assert run(batch, batch_logits, 2) == alone
    assert run([SamplingParams()] + [p_seeded], torch.cat([others[:1], row]), 1) == alone
    # a different seed gives a different stream
    info = SamplingBatchInfo.from_params([p_seeded], V)
    g2 = make_generator(4321)
    other_stream = [int(greedy_or_sample(row, info, [g2])[0]) for _ in range(20)]
    assert other_stream != alone


def test_make_generator():
    assert make_generator(None) is None
    a, b = make_generator(5), make_generator(5)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def _chi_square(counts, probs, n):
    expected = probs * n
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a zero-probability token"
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("use_generator", [False, True])
def test_empirical_distribution_matches_probs(use_generator):
    torch.manual_seed(0)
    vocab, n = 12, 20000
    logits = rand_logits(1, vocab, seed=11, scale=1.0)
    info = SamplingBatchInfo.from_params([SamplingParams(temperature=0.9, top_k=8, top_p=0.97)], vocab)
    probs = probs_from_logits(logits, info)
    # Draw n samples through `sample` in one batched call ([n, V] copies of the same row).
    gens = None
    if use_generator:
        g = make_generator(3)
        toks = torch.stack([sample(probs, [g]) for _ in range(n)]).squeeze(1)
    else:
        toks = sample(probs.expand(n, vocab).contiguous(), gens)
    counts = torch.bincount(toks, minlength=vocab).float()
    stat, dof = _chi_square(counts, probs[0], n)
    # chi-square with <= 7 dof: 99.99th percentile is ~29; 40 is generous yet catches real bias
    assert dof >= 3
    assert stat < 40.0, (stat, counts.tolist(), (probs[0] * n).tolist())


def test_sample_validates_generator_count():
    probs = torch.full((2, 4), 0.25)
    with pytest.raises(ValueError):
        sample(probs, [None])
    assert sample(probs, None).shape == (2,)
    assert sample(probs, []).dtype == torch.int64


# ---------------------------------------------------------------- logprobs


def test_compute_logprobs():
    logits = rand_logits(5, seed=5).half()
    tok = torch.tensor([0, 3, 63, 10, 10])
    lp, top_v, top_i = compute_logprobs(logits, tok, top_k=4)
    ref = torch.log_softmax(logits.float(), -1)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref[torch.arange(5), tok])
    rv, ri = ref.topk(4, dim=-1)
    torch.testing.assert_close(top_v, rv)
    assert torch.equal(top_i, ri)
    lp0, v0, i0 = compute_logprobs(logits, tok, top_k=0)
    torch.testing.assert_close(lp0, lp)
    assert v0 is None and i0 is None
