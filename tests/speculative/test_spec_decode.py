"""Speculative decoding in the runtime is lossless: float32 greedy outputs equal plain decoding.

The default model is a Q4_1 GGUF, so every engine here without ``quantization`` runs the quantized path
(its blocks kept, ``--quantization auto``); the bf16 test covers the dense and the quantized path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.kernels.cpu_ops import select_cpu_ops
from sglang_dspark.kernels.quant_formats import QuantizedWeight
from sglang_dspark.kernels.quant_linear import missing_cpu_flags
from sglang_dspark.managers.tokenizer_manager import GenerateReqInput, RequestState
from sglang_dspark.model_executor.sequence_forward import forward_sequences
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.dspark import DSparkConfig, DSparkDrafter, save_drafter
from sglang_dspark.speculative.verify_policy import AsyncVerify, FixedVerify, ThresholdVerify

PROMPTS = [
    "Write a python class for a linked list with insert, delete and print methods.",
    "List the first 10 US states as a JSON array of objects with name and capital.",
    "Repeat after me three times: the quick brown fox jumps over the lazy dog.",
]
GREEDY = {"temperature": 0, "max_new_tokens": 64}


@pytest.fixture(scope="module")
def plain():
    eng = Engine(dtype="float32", max_total_tokens=4096, log_level="warning")
    yield eng
    eng.shutdown()


def chat(engine, prompt):
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def spec_engine(algorithm: str, sps_path: str, **kwargs) -> Engine:
    return Engine(
        dtype="float32",
        max_total_tokens=4096,
        log_level="warning",
        speculative_algorithm=algorithm,
        speculative_dspark_sps_table_path=sps_path,
        **kwargs,
    )


def assert_same_as_plain(plain, spec, params):
    """PROMPTS one at a time and 8 at once through spec give plain's outputs; returns (one, batch) responses."""
    ids = [chat(plain, p) for p in PROMPTS]
    expected = [plain.generate(input_ids=i, sampling_params=params)["output_ids"] for i in ids]
    one = [spec.generate(input_ids=i, sampling_params=params) for i in ids]
    assert [r["output_ids"] for r in one] == expected
    batch = spec.generate(input_ids=(ids * 3)[:8], sampling_params=params)
    assert [r["output_ids"] for r in batch] == (expected * 3)[:8]
    return one, batch


@pytest.mark.parametrize("radix", [True, False])
@pytest.mark.parametrize(
    "algorithm, alone", [("NGRAM", False), ("DSPARK", False), ("DSPARK", True)], ids=["ngram", "dspark", "drafter"]
)
def test_greedy_is_lossless_at_batch_1_and_8(plain, sps_path, algorithm, alone, radix):
    """DSPARK drafts with the drafter shipped for the default model (SmolLM2-135M-Instruct), combined per
    request with the n-gram proposer, or alone (--speculative-dspark-disable-ngram)."""
    extra = {"speculative_dspark_disable_ngram": True} if alone else {}
    spec = spec_engine(algorithm, sps_path, disable_radix_cache=not radix, **extra)
    try:
        one, batch = assert_same_as_plain(plain, spec, GREEDY)
        meta = [r["meta_info"] for r in one + batch]
        assert sum(m["spec_num_correct_drafts"] for m in meta) > 0  # drafts were really verified and accepted
        for m in meta:
            assert m["spec_accept_length"] == pytest.approx(m["completion_tokens"] / m["spec_verify_ct"])
        assert spec.scheduler.spec.worker.calibration.counts  # the verified rounds fed the online calibration
        usage = spec.kv_usage()
        assert usage.in_use == 0 and usage.free + usage.cached == usage.total
    finally:
        spec.shutdown()


@pytest.mark.parametrize("mode", ["async", "fixed", "threshold"])
def test_every_verify_mode_is_lossless(plain, sps_path, mode):
    """--speculative-dspark-verify-mode: the paper's asynchronous planner and the two baselines (the
    default, adaptive, is every other test here)."""
    spec = spec_engine("NGRAM", sps_path, speculative_dspark_verify_mode=mode, speculative_dspark_verify_threshold=0.3)
    try:
        one, batch = assert_same_as_plain(plain, spec, GREEDY)
        assert sum(r["meta_info"]["spec_num_correct_drafts"] for r in one + batch) > 0
        expected = {"async": AsyncVerify, "fixed": FixedVerify, "threshold": ThresholdVerify}[mode]
        assert type(spec.scheduler.spec.worker.policy) is expected
    finally:
        spec.shutdown()


def native_kernels_build() -> bool:
    try:
        return select_cpu_ops("native", "cpu", torch.bfloat16) is not None
    except RuntimeError:
        return False


@pytest.mark.parametrize("algorithm", ["NGRAM", "DSPARK"])
@pytest.mark.parametrize(
    "quantization, schema", [("none", False), ("auto", False), ("auto", True)], ids=["bf16", "quantized", "json"]
)
def test_bf16_greedy_with_native_kernels_is_lossless(sps_path, algorithm, quantization, schema):
    """The native kernels compute every row independently of the batch (the verify chain and the decode
    token go through the same attention kernel and, with the GGUF's quantization kept, the same quantized
    matmul), so bf16 speculation is token-identical too, with a JSON-schema grammar as well. The radix
    cache is off: a cached prompt recomputes its last token as a short extend instead of in the prefill."""
    if quantization == "none" and not native_kernels_build():
        pytest.skip("needs the native CPU kernels (AVX2 + FMA)")
    if quantization == "auto" and missing_cpu_flags():
        pytest.skip("the quantized matmul needs AVX-512")
    args = {
        "dtype": "bfloat16",
        "cpu_kernels": "native",
        "quantization": quantization,
        "max_total_tokens": 4096,
        "log_level": "warning",
        "disable_radix_cache": True,
    }
    base = Engine(**args)
    spec = Engine(**args, speculative_algorithm=algorithm, speculative_dspark_sps_table_path=sps_path)
    try:
        assert spec.scheduler.runner.quantization == ("gguf" if quantization == "auto" else "none")
        params = {**GREEDY, "max_new_tokens": 96, "json_schema": STATES_SCHEMA} if schema else GREEDY
        one, batch = assert_same_as_plain(base, spec, params)
        assert sum(r["meta_info"]["spec_num_correct_drafts"] for r in one + batch) > 0
    finally:
        base.shutdown()
        spec.shutdown()


@pytest.mark.parametrize("radix", [True, False])
def test_ngram_drafts_the_radix_trees_cached_continuation(sps_path, radix):
    """A request whose tokens so far are all cached (here: the same prompt again) gets the cached
    continuation as drafts; without the radix cache the second run drafts exactly like the first."""
    spec = spec_engine("NGRAM", sps_path, disable_radix_cache=not radix)
    try:
        ids = chat(spec, PROMPTS[0])
        first = spec.generate(input_ids=ids, sampling_params=GREEDY)
        second = spec.generate(input_ids=ids, sampling_params=GREEDY)
    finally:
        spec.shutdown()
    assert second["output_ids"] == first["output_ids"]
    m1, m2 = first["meta_info"], second["meta_info"]
    if radix:
        assert m2["spec_num_correct_drafts"] > 2 * m1["spec_num_correct_drafts"]
        assert m2["spec_verify_ct"] < m1["spec_verify_ct"]
    else:
        assert m2["spec_accept_lens"] == m1["spec_accept_lens"]


STATES_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "states": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "capital": {"type": "string"}},
                    "required": ["name", "capital"],
                },
            }
        },
        "required": ["states"],
    }
)


@pytest.mark.parametrize(
    "algorithm, jump_forward",
    [("NGRAM", True), ("NGRAM", False), ("DSPARK", True), ("DSPARK:alone", True), ("STANDALONE", True)],
)
def test_greedy_with_json_schema_is_lossless(plain, sps_path, algorithm, jump_forward):
    """Grammar requests speculate too: NGRAM and STANDALONE (the target as draft model) drafts are cut where
    the grammar rejects them, DSPARK drafts under the grammar's mask, and every verify row is masked by the
    grammar state after the drafts before it, so outputs equal masked plain decoding. Drafts also ride on
    the forward of jump-forward tokens (DSPARK alone: drafted from the token before them)."""
    args = {
        "dtype": "float32",
        "max_total_tokens": 4096,
        "log_level": "warning",
        "disable_jump_forward": not jump_forward,
    }
    base = Engine(**args)
    extra = {
        "STANDALONE": {"speculative_draft_model_path": str(resolve_model_path(None))},
        "DSPARK:alone": {"speculative_dspark_disable_ngram": True},
    }.get(algorithm, {})
    algorithm = algorithm.split(":")[0]
    spec = Engine(**args, speculative_algorithm=algorithm, speculative_dspark_sps_table_path=sps_path, **extra)
    try:
        params = {**GREEDY, "max_new_tokens": 96, "json_schema": STATES_SCHEMA}
        one, batch = assert_same_as_plain(base, spec, params)
        meta = [r["meta_info"] for r in one + batch]
        assert sum(m["spec_num_correct_drafts"] for m in meta) > 0
        for m in meta:  # the per-round detail adds up to the totals
            assert len(m["spec_draft_lens"]) == len(m["spec_accept_lens"]) == m["spec_verify_ct"]
            assert sum(m["spec_accept_lens"]) == m["spec_num_correct_drafts"]
            assert sum(m["spec_draft_lens"]) == m["spec_num_proposed_drafts"]
            assert all(0 <= a <= d for a, d in zip(m["spec_accept_lens"], m["spec_draft_lens"]))
        for r in one:
            if r["meta_info"]["finish_reason"]["type"] == "stop":
                json.loads(r["text"])
        if jump_forward and algorithm != "STANDALONE":
            assert spec.scheduler.stats.verify_after_jump_forward > 0
        if jump_forward:  # drafts that reach a forced run carry it and go on after it
            assert spec.scheduler.stats.verify_through_forced > 0
        assert spec.kv_usage().in_use == 0
    finally:
        base.shutdown()
        spec.shutdown()


def test_unknown_speculative_algorithm_lists_valid_ones():
    with pytest.raises(ValueError, match="DSPARK.*NGRAM.*STANDALONE"):
        ServerArgs(speculative_algorithm="EAGLE")


REPETITIVE = "Count from 1 to 30, separated by commas."  # greedy: "1. 1\n2. 2\n3. 3\n..." for 96+ tokens


def test_dspark_fills_spec_meta_info_and_accepts_drafts(plain, sps_path):
    spec = spec_engine("DSPARK", sps_path)
    try:
        greedy = spec.generate(input_ids=chat(plain, REPETITIVE), sampling_params={**GREEDY, "max_new_tokens": 96})
        m = greedy["meta_info"]
        assert m["spec_verify_ct"] > 0 and m["spec_num_proposed_drafts"] > 0
        assert m["spec_num_correct_drafts"] > 0  # the shipped drafter gets some of the repetition right
        assert m["spec_accept_length"] == pytest.approx(m["completion_tokens"] / m["spec_verify_ct"])
        assert m["spec_accept_rate"] == pytest.approx(m["spec_num_correct_drafts"] / m["spec_num_proposed_drafts"])
        assert len(m["spec_draft_lens"]) == len(m["spec_accept_lens"]) == m["spec_verify_ct"]
        # sampling requests draft at their temperature and verify with the drafter's distributions
        sampled = spec.generate(
            input_ids=chat(plain, REPETITIVE),
            sampling_params={"temperature": 0.8, "max_new_tokens": 32, "sampling_seed": 1},
        )
        s = sampled["meta_info"]
        assert s["completion_tokens"] == len(sampled["output_ids"]) > 0 and s["spec_verify_ct"] > 0
        assert sum(s["spec_accept_lens"]) == s["spec_num_correct_drafts"]
        assert spec.kv_usage().in_use == 0
    finally:
        spec.shutdown()


def test_dspark_ngram_drafts_beyond_the_drafters_block(plain, sps_path):
    """The drafter drafts at most its block (7 tokens); the n-gram proposer combined with it up to NGRAM's 8
    (fixed verify mode: every proposed draft is verified), losslessly."""
    spec = spec_engine("DSPARK", sps_path, speculative_dspark_verify_mode="fixed")
    try:
        assert spec.scheduler.spec.worker.num_draft_tokens == 8
        ids = chat(plain, REPETITIVE)
        params = {**GREEDY, "max_new_tokens": 96}
        out = spec.generate(input_ids=ids, sampling_params=params)
        assert out["output_ids"] == plain.generate(input_ids=ids, sampling_params=params)["output_ids"]
        assert max(out["meta_info"]["spec_draft_lens"]) == 8
    finally:
        spec.shutdown()


@pytest.mark.parametrize("vocab_size, expected", [(None, 8192), (0, None), (100, 100)])
def test_dspark_drafts_among_the_shipped_draft_vocabulary(plain, sps_path, vocab_size, expected):
    """The shipped drafter ships token_frequencies.json: by default it drafts among 8192 tokens; 0 = all. With the
    quantized default target it multiplies in Q8_0 (its draft LM head rows too, where it has a draft vocabulary)."""
    spec = spec_engine(
        "DSPARK", sps_path, speculative_dspark_disable_ngram=True, speculative_dspark_draft_vocab_size=vocab_size
    )
    try:
        drafter = spec.scheduler.spec.worker.proposer.proposer.drafter
        assert (None if drafter.draft_vocab is None else len(drafter.draft_vocab)) == expected
        assert drafter.fc.qweight is not None and drafter.layers[0].mlp.down_proj.qweight is not None
        lm_rows = drafter._draft_rows[0] if drafter._draft_rows else drafter.lm_head_weight
        assert isinstance(lm_rows, QuantizedWeight) == (expected is not None)
        ids = chat(plain, REPETITIVE)
        out = spec.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 48})
        assert (
            out["output_ids"]
            == plain.generate(input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 48})["output_ids"]
        )
        if expected is not None:
            assert set(out["meta_info"]["spec_draft_lens"]) != {0}  # drafts were verified
    finally:
        spec.shutdown()


def test_dspark_drafter_context_is_the_committed_tokens_only(plain, sps_path):
    """Mid-generation, a request's drafter context equals the target features of its committed tokens from one
    plain forward: rejected drafts left nothing behind, and nothing was recomputed out of order."""
    spec = spec_engine("DSPARK", sps_path, speculative_dspark_disable_ngram=True)
    try:
        sched = spec.scheduler
        obj = GenerateReqInput(input_ids=chat(plain, REPETITIVE), sampling_params={**GREEDY, "max_new_tokens": 48})
        (tokenized,) = spec.tokenizer_manager.tokenize(obj)
        sched.add_request(tokenized)
        while not sched.running or len(sched.running[0].output_ids) < 32:
            assert sched.has_work()  # the request is still running
            sched.step()
        req, proposer = sched.running[0], sched.spec.worker.proposer.proposer  # inside CalibratedProposer
        assert sched.spec.worker.num_draft_tokens == proposer.drafter.config.block_size == 7  # no n-gram: the block
        assert sum(req.spec_draft_lens) > sum(req.spec_accept_lens)  # some drafts were rejected
        state = proposer.states[req.rid]
        assert 0 < state.length <= req.kv_len
        runner = sched.runner  # attending as the runtime does: the quantized model is batch-invariant
        assert runner.batch_invariant
        seq, attention = [req.fill_ids[: state.length]], runner.cpu_ops.pool_attention
        (ref,) = forward_sequences(runner.model, seq, proposer.capture_layers, pool_attention=attention)
        kv = proposer.drafter.context_kv(torch.cat(ref.hidden_states, dim=-1), torch.arange(state.length))
        for (k, v), keys, values in zip(kv, state.keys, state.values):
            torch.testing.assert_close(keys[: state.length], k, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(values[: state.length], v, rtol=1e-3, atol=1e-3)
    finally:
        spec.shutdown()


def save_tiny_drafter(path, vocab_size: int, hidden_size: int, num_target_layers: int) -> str:
    cfg = DSparkConfig(
        hidden_size=hidden_size,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=vocab_size,
        block_size=4,
        target_layer_ids=(0, num_target_layers - 1),
        num_target_layers=num_target_layers,
        markov_rank=8,
    )
    table = torch.zeros(vocab_size, hidden_size)
    return str(save_drafter(DSparkDrafter(cfg, table, table), path))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((97, 64, 30), r"vocab_size 97 \(target 49152\), hidden_size 64 \(target 576\)"),
        ((49152, 576, 4), r"num_target_layers 4 \(target 30\)"),
    ],
)
def test_dspark_checkpoint_that_does_not_fit_the_target_fails_at_start_up(tmp_path, sps_path, sizes, message):
    path = save_tiny_drafter(tmp_path / "drafter", *sizes)
    with pytest.raises(ValueError, match=message):
        spec_engine("DSPARK", sps_path, speculative_draft_model_path=path)


def save_tiny_draft_model(path, vocab_size: int = 49152) -> str:
    """A 2-layer random Llama in HF format: a draft model that is mostly wrong."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.mark.parametrize("radix", [True, False])
@pytest.mark.parametrize("draft", ["target", "tiny"])
def test_standalone_greedy_is_lossless(plain, sps_path, tmp_path, draft, radix):
    """Draft model = the target itself (drafts almost always right) or a tiny random model (almost always
    wrong); either way the output is plain decoding's, and the draft model's KV is freed after the requests."""
    if draft == "target":
        path, sps = str(resolve_model_path(None)), sps_path
    else:  # a flat SPS table: every draft with a positive confidence is verified, however unlikely
        path, sps = save_tiny_draft_model(tmp_path / "draft"), str(tmp_path / "flat_sps.json")
        Path(sps).write_text(json.dumps({"sample_batch_tokens": [1, 64], "sample_steps_per_sec": [0.02, 0.02]}))
    spec = spec_engine("STANDALONE", sps, speculative_draft_model_path=path, disable_radix_cache=not radix)
    try:
        one, batch = assert_same_as_plain(plain, spec, GREEDY)
        meta = [r["meta_info"] for r in one + batch]
        correct, proposed = (sum(m[k] for m in meta) for k in ("spec_num_correct_drafts", "spec_num_proposed_drafts"))
        if draft == "target":
            assert correct > 0.9 * proposed > 0
        else:
            assert proposed > 0 and correct < 0.2 * proposed
        assert spec.scheduler.spec.worker.proposer.proposer.kv_in_use() == 0
    finally:
        spec.shutdown()


def test_standalone_needs_a_draft_model_with_the_targets_vocabulary(sps_path, tmp_path):
    with pytest.raises(ValueError, match="STANDALONE needs --speculative-draft-model-path"):
        spec_engine("STANDALONE", sps_path)
    path = save_tiny_draft_model(tmp_path / "draft", vocab_size=97)
    with pytest.raises(ValueError, match="vocab_size 97, the target 49152"):
        spec_engine("STANDALONE", sps_path, speculative_draft_model_path=path)


def test_dspark_uses_the_last_kv_slot(sps_path):
    """A request that fills the whole KV pool reaches its last slot (slots run 1..max_total_tokens): the
    drafter's per-slot features must have a row for it."""
    eng = Engine(
        max_total_tokens=64,
        disable_radix_cache=True,
        log_level="warning",
        speculative_algorithm="DSPARK",
        speculative_dspark_sps_table_path=sps_path,
    )
    try:
        ids = chat(eng, "Count to twenty.")
        out = eng.generate(input_ids=ids, sampling_params={"temperature": 0, "max_new_tokens": 64 - len(ids)})
        assert out["meta_info"]["finish_reason"]["type"] in ("length", "stop")
        assert eng.scheduler.runner.token_allocator.available_size() == 64
    finally:
        eng.shutdown()


@pytest.fixture(scope="module")
def plain_deterministic():
    eng = Engine(dtype="float32", max_total_tokens=4096, log_level="warning", enable_deterministic_inference=True)
    yield eng
    eng.shutdown()


def run_together(engine, batch: list[tuple[list[int], dict, bool]]) -> list[dict]:
    """batch: (input_ids, sampling params, whether it reports logprobs) per request, all admitted to engine's
    scheduler at once and stepped until done; requests that report logprobs ask for the top 5 from their
    fourth-last prompt token on. Returns SGLang's response per request."""
    states = []
    for ids, params, asks in batch:
        obj = GenerateReqInput(
            input_ids=ids,
            sampling_params=params,
            return_logprob=asks,
            top_logprobs_num=5,
            logprob_start_len=len(ids) - 4,
        )
        states += [RequestState(r, False) for r in engine.tokenizer_manager.tokenize(obj)]
    by_rid = {s.req.rid: s for s in states}
    for s in states:
        engine.scheduler.add_request(s.req)
    while engine.scheduler.has_work():
        for out in engine.scheduler.step():
            by_rid[out.rid].update(out)
    return [engine.tokenizer_manager.response(s) for s in states]


def assert_same_logprobs(got: list, expected: list) -> None:
    """[logprob, token id, text] per position (logprob None for the first input token): the same tokens,
    logprobs within 1e-5."""
    assert [e[1] for e in got] == [e[1] for e in expected]
    for g, e in zip(got, expected):
        assert (g[0] is None) == (e[0] is None)
        if e[0] is not None:
            assert g[0] == pytest.approx(e[0], abs=1e-5)


@pytest.mark.parametrize("algorithm", ["NGRAM", "DSPARK"])
def test_logprob_requests_speculate_with_plain_decodings_logprobs(sps_path, algorithm):
    """Logprob requests draft too: each committed token's logprob and top 5 come from its verify row, equal
    (fp32, within 1e-5) to plain decoding's from its sampling row, with a JSON schema too (whose mask applies
    to the reported distribution on both sides: positions with fewer than 5 allowed tokens list fewer).
    Alone, and in a batch where requests without logprobs verify in the same forward. Batch-invariant
    kernels on both sides: with torch's GEMM a row's logits change in their last bits with the rows beside it
    (docs/reliability.md), which moves fp32 logprobs by up to ~3e-5 between plain decoding alone and batched
    as much as between a verify row and a decode row; these kernels make the verify row the decode row's
    exact computation."""
    args = {
        "dtype": "float32",
        "max_total_tokens": 4096,
        "log_level": "warning",
        "enable_deterministic_inference": True,
    }
    plain = Engine(**args)
    count, states = chat(plain, REPETITIVE), chat(plain, PROMPTS[1])
    schema = {**GREEDY, "max_new_tokens": 48, "json_schema": STATES_SCHEMA}
    greedy = {**GREEDY, "max_new_tokens": 48}
    # the logprob requests first, then the same two without logprobs
    batch = [(count, greedy, True), (states, schema, True), (count, greedy, False), (states, schema, False)]
    try:
        expected = run_together(plain, batch)
    finally:
        plain.shutdown()
    spec = Engine(**args, speculative_algorithm=algorithm, speculative_dspark_sps_table_path=sps_path)
    try:
        alone = [run_together(spec, [batch[i]])[0] for i in (0, 1)]
        together = run_together(spec, batch)
        assert spec.kv_usage().in_use == 0
    finally:
        spec.shutdown()
    assert [r["output_ids"] for r in together] == [r["output_ids"] for r in expected]
    for want, got in zip(expected[:2] * 2, alone + together[:2]):
        w, g = want["meta_info"], got["meta_info"]
        assert got["output_ids"] == want["output_ids"]
        assert len(g["output_token_logprobs"]) == len(got["output_ids"])
        for key in ("input_token_logprobs", "output_token_logprobs"):
            assert_same_logprobs(g[key], w[key])
        for key in ("input_top_logprobs", "output_top_logprobs"):
            assert [t is None for t in g[key]] == [t is None for t in w[key]]
            for gt, wt in zip(g[key], w[key]):
                if wt is not None:
                    assert 0 < len(gt) <= 5
                    assert_same_logprobs(gt, wt)
        assert g["spec_num_correct_drafts"] > 0  # drafts were verified and accepted for the logprob request
    for r in together[2:]:
        assert "output_token_logprobs" not in r["meta_info"]
