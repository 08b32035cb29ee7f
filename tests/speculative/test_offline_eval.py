"""Offline evaluation and STS calibration end to end on a tiny random target and drafter."""

from __future__ import annotations

import json
import logging

import torch
from tiny_drafter import make_drafter
from transformers import AutoTokenizer

from sglang_dspark.evaluation.aggregate import calibration_inputs, summarize
from sglang_dspark.evaluation.report import markdown_table, plot_conditional_acceptance, plot_reliability
from sglang_dspark.evaluation.rounds import leading_ones, simulate_rounds
from sglang_dspark.evaluation.scoring import response_allowed, score_sequence
from sglang_dspark.grammar import create_backend
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.models.tiny import tiny_random_model
from sglang_dspark.speculative.sts import STSCalibration, fit_sts
from sglang_dspark.training.regenerate import Sequence
from sglang_dspark.training.trainer import target_view


def test_leading_ones_and_rounds():
    accept = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    lens = leading_ones(accept)
    assert lens.tolist() == [2, 0, 3, 1, 0]
    assert simulate_rounds(lens).tolist() == [0, 3]  # 0 accepts 2 -> 3 accepts 1 -> past the end


def test_calibrate_and_evaluate_end_to_end(tmp_path):
    target = tiny_random_model()
    drafters = {"dspark": make_drafter(target)}
    g = torch.Generator().manual_seed(0)
    seqs = [
        Sequence(
            f"s/{i}",
            "code" if i % 2 else "json",
            torch.randint(4, 97, (6,), generator=g).tolist(),
            torch.randint(4, 97, (20,), generator=g).tolist(),
        )
        for i in range(4)
    ]
    records = [score_sequence(target, drafters, s, chunk=7)["dspark"] for s in seqs]
    assert records[0].alpha.shape == (19, 4) and not records[0].valid[-1, 1:].any()
    conf, accept_lens, draft_lens = calibration_inputs(records, "t1", seed=0)
    cal = fit_sts(conf, accept_lens, draft_lens, dataset="tiny")
    cal.save(tmp_path / "sts_t1.json")
    sts = STSCalibration.load(tmp_path / "sts_t1.json")
    results = {}
    for source in ("json", "code"):
        rows = [r for s, r in zip(seqs, records, strict=True) if s.source == source]
        for mode in ("greedy", "t1"):
            results.setdefault(source, {}).setdefault(mode, {})["dspark"] = summarize(rows, mode, 0, sts)
    s = results["code"]["t1"]["dspark"]
    assert 1.0 <= s["tau"] <= 5.0 and len(s["conditional_acceptance"]) == 4
    assert s["confidence_after"]["ece"] <= s["confidence_before"]["ece"] + 1e-9
    table = markdown_table(results)
    assert table.count("\n") == 2 + 4 and "| code | t1 | dspark |" in table
    plot_conditional_acceptance(results, tmp_path / "ca.png")
    plot_reliability(results, "dspark", tmp_path / "rel.png")
    assert (tmp_path / "ca.png").stat().st_size > 0 and (tmp_path / "rel.png").stat().st_size > 0


def test_response_allowed_walks_the_schema(caplog):
    """Row i of the mask allows response token i (real xgrammar on SmolLM2's tokenizer); a response that
    leaves its schema is scored unmasked, with a warning."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    backend = create_backend("xgrammar", tokenizer, 49152, [2])
    schema = json.dumps({"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"]})
    resp = tokenizer.encode('{"a":2}', add_special_tokens=False) + [2]
    allowed = response_allowed(backend, Sequence("json/0", "json", [1], resp, schema))
    assert allowed.shape == (len(resp), 49152)
    assert allowed[torch.arange(len(resp)), torch.tensor(resp)].all()
    assert allowed.sum(1)[-1] == 1  # after the closing brace only EOS
    assert response_allowed(backend, Sequence("json/1", "json", [1], resp)) is None  # no schema
    bad = tokenizer.encode('{"a":3}', add_special_tokens=False) + [2]
    with caplog.at_level(logging.WARNING):
        assert response_allowed(backend, Sequence("json/2", "json", [1], bad, schema)) is None
    assert "json/2: scored without its grammar mask" in caplog.text


def test_grammar_mask_forces_acceptance_and_confidence():
    """Where the mask allows one token the draft is accepted (greedy and T=1) with confidence 1; where it
    allows every token the records are the unmasked ones."""
    target = tiny_random_model()
    drafters = {"dspark": make_drafter(target)}
    g = torch.Generator().manual_seed(1)
    seq = Sequence(
        "j", "json", torch.randint(4, 97, (5,), generator=g).tolist(), torch.randint(4, 97, (16,), generator=g).tolist()
    )
    allowed = torch.ones(16, 97, dtype=torch.bool)  # [R, V]
    forced = torch.tensor([3, 4, 5, 9, 12])
    allowed[forced] = False
    allowed[forced, torch.tensor(seq.response_ids)[forced]] = True
    plain = score_sequence(target, drafters, seq, chunk=5)["dspark"]
    masked = score_sequence(target, drafters, seq, chunk=5, allowed=allowed)["dspark"]
    resp_index = torch.arange(15)[:, None] + 1 + torch.arange(4)  # [A, G] response index each draft predicts
    hit = torch.isin(resp_index, forced) & masked.valid
    assert hit.any() and not plain.greedy_accept[hit].all()
    assert masked.greedy_accept[hit].all() and torch.allclose(masked.alpha[hit], torch.ones(int(hit.sum())))
    assert torch.isinf(masked.confidence_logits[hit]).all()
    free = ~torch.isin(resp_index, forced) & masked.valid
    assert torch.equal(masked.greedy_accept[free], plain.greedy_accept[free])
    assert torch.allclose(masked.alpha[free], plain.alpha[free])
    assert torch.equal(masked.confidence_logits[free], plain.confidence_logits[free])


def test_scoring_with_a_draft_vocabulary_is_the_brute_force_over_it():
    """alpha = sum over the K draftable tokens of min(p_d, p_t), p_d zero elsewhere; a greedy draft matches
    only a target argmax among them (under a grammar mask and without)."""
    target = tiny_random_model()
    d = make_drafter(target)
    g = torch.Generator().manual_seed(4)
    seq = Sequence(
        "j", "json", torch.randint(4, 97, (5,), generator=g).tolist(), torch.randint(4, 97, (16,), generator=g).tolist()
    )
    allowed = torch.ones(16, 97, dtype=torch.bool)  # [R, V]
    allowed[5, :50] = False
    vocab = torch.arange(0, 97, 2)
    whole = score_sequence(target, {"d": d}, seq, allowed=allowed)["d"]
    d.restrict_vocab(vocab)
    part = score_sequence(target, {"d": d}, seq, allowed=allowed)["d"]
    d.restrict_vocab(None)
    view = target_view(target, seq, d.config.target_layer_ids)
    anchors = torch.arange(5, 20)
    tf = d.teacher_forced(view.feats, view.ids, anchors)
    banned = ~allowed[(anchors[:, None] + 1 + torch.arange(4) - 5).clamp(max=15)]  # [A, G, V]
    outside = torch.ones(97, dtype=torch.bool)
    outside[vocab] = False
    t_logits = view.aligned_logits(anchors, 4).masked_fill(banned, -torch.inf)
    d_logits = tf.logits.masked_fill(banned | outside, -torch.inf)
    alpha = torch.minimum(d_logits.softmax(-1), t_logits.softmax(-1)).sum(-1) * tf.valid
    torch.testing.assert_close(part.alpha, alpha)
    assert torch.equal(part.greedy_accept, (d_logits.argmax(-1) == t_logits.argmax(-1)) & tf.valid)
    assert not torch.equal(part.alpha, whole.alpha)
