"""The Engine on the real default model (SmolLM2-135M-Instruct), float32 for exactness."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from sglang_dspark import Engine
from sglang_dspark.models.gguf_convert import dense_copy
from sglang_dspark.sampling.sampling_params import SamplingParamsError

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a JSON object describing a cat:",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
]
GREEDY = {"temperature": 0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def engine():
    eng = Engine(dtype="float32", quantization="none", max_total_tokens=8192, chunked_prefill_size=64, random_seed=0)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(engine):
    return AutoModelForCausalLM.from_pretrained(dense_copy(engine.model_dir), dtype=torch.float32).eval()


def assert_idle(engine):
    usage = engine.kv_usage()
    assert usage.in_use == 0, usage
    assert usage.free + usage.cached == usage.total
    assert engine.scheduler.cache.tree is None or engine.scheduler.cache.tree.protected_size() == 0


def test_prompt_logprobs_match_hf_logits(engine, hf_model):
    ids = engine.tokenizer.encode(PROMPTS[2])
    out = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=3,
    )
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)
    lps = out["meta_info"]["input_token_logprobs"]
    assert lps[0][0] is None and [t for _, t, _ in lps] == ids
    ours = torch.tensor([lp for lp, _, _ in lps[1:]])
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)
    top = out["meta_info"]["input_top_logprobs"][1]
    assert [t for _, t, _ in top] == ref[0].topk(3).indices.tolist()
    assert out["meta_info"]["completion_tokens"] == 0
    assert_idle(engine)


def test_greedy_matches_hf_generate(engine, hf_model):
    for prompt in PROMPTS:
        ids = engine.tokenizer.encode(prompt)
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :]
        ours = engine.generate(prompt, {**GREEDY, "ignore_eos": True})
        assert ours["output_ids"] == ref.tolist()[: len(ours["output_ids"])], prompt
        assert len(ours["output_ids"]) == 24
    assert_idle(engine)


def test_concurrent_batch_equals_sequential(engine):
    prompts = PROMPTS + ["1, 2, 3, 4,", "Water boils at", "import numpy as np\n"]
    alone = [engine.generate(p, GREEDY)["output_ids"] for p in prompts]
    engine.flush_cache()
    together = engine.generate(prompts, GREEDY)
    assert [r["output_ids"] for r in together] == alone
    assert_idle(engine)


def test_radix_cache_hit_gives_same_output(engine):
    engine.flush_cache()
    prefix = "You are a helpful assistant. Answer briefly and precisely. Question: "
    first = engine.generate(prefix + "what is 2 + 2?", GREEDY)
    second = engine.generate(prefix + "what is 2 + 2?", GREEDY)
    other = engine.generate(prefix + "name a colour.", GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] > 0
    assert other["meta_info"]["cached_tokens"] > 0
    assert second["output_ids"] == first["output_ids"]
    assert_idle(engine)
    assert engine.flush_cache()
    assert engine.kv_usage().free == engine.kv_usage().total


def test_stream_is_cumulative_and_abort_frees_kv(engine):
    chunks = list(engine.generate(PROMPTS[3], GREEDY, stream=True))
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert chunks[-1]["meta_info"]["finish_reason"] is not None
    assert chunks[-1]["output_ids"] == engine.generate(PROMPTS[3], GREEDY)["output_ids"]
    stream = engine.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True}, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # a consumer that goes away aborts its request
    assert not engine.scheduler.has_work()
    assert_idle(engine)


def test_sampling_parameters(engine):
    tok = engine.tokenizer
    # stop string: text ends before it, finish_reason names it
    out = engine.generate("Count: 1, 2, 3, 4, 5,", {"temperature": 0, "max_new_tokens": 40, "stop": [" 8"]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": " 8"}
    assert " 8" not in out["text"] and out["text"].strip().startswith("6")
    # stop_token_ids
    plain = engine.generate(PROMPTS[1], {**GREEDY, "ignore_eos": True})
    stop_id = plain["output_ids"][5]
    out = engine.generate(PROMPTS[1], {**GREEDY, "stop_token_ids": [stop_id]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert out["output_ids"] == plain["output_ids"][: plain["output_ids"].index(stop_id) + 1]
    # max_new_tokens / min_new_tokens with eos banned until the minimum
    out = engine.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 5})
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    eos = tok.eos_token_id
    out = engine.generate(
        PROMPTS[0],
        {
            "temperature": 0,
            "max_new_tokens": 30,
            "min_new_tokens": 20,
            "stop_token_ids": [plain["output_ids"][0]],
        },
    )
    assert len(out["output_ids"]) >= 20 and eos not in out["output_ids"][:19]
    # seeded sampling is reproducible, n > 1 gives n different samples
    sp = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "max_new_tokens": 16, "sampling_seed": 7}
    assert engine.generate(PROMPTS[3], sp)["output_ids"] == engine.generate(PROMPTS[3], sp)["output_ids"]
    many = engine.generate(PROMPTS[3], {**sp, "n": 3})
    assert len(many) == 3 and len({tuple(r["output_ids"]) for r in many}) == 3
    # output logprobs: greedy tokens are the top-1 alternative
    out = engine.generate(PROMPTS[0], GREEDY, return_logprob=True, top_logprobs_num=2, return_text_in_logprobs=True)
    for (lp, tid, text), top in zip(out["meta_info"]["output_token_logprobs"], out["meta_info"]["output_top_logprobs"]):
        assert top[0][1] == tid and abs(top[0][0] - lp) < 1e-5 and text == tok.decode([tid])
    assert_idle(engine)


def test_bad_requests_are_rejected_and_engine_keeps_serving(engine):
    too_long = [1] * (engine.scheduler.context_len + 5)
    with pytest.raises(ValueError, match="context length"):
        engine.generate(input_ids=too_long, sampling_params=GREEDY)
    with pytest.raises(SamplingParamsError, match="temperature"):
        engine.generate("hi", {"temperature": -1})
    with pytest.raises(SamplingParamsError, match="top_p"):
        engine.generate("hi", {"top_p": 1.5})
    with pytest.raises(SamplingParamsError, match="no_such_param"):
        engine.generate("hi", {"no_such_param": 1})
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate(input_ids=[10**7], sampling_params=GREEDY)
    # a batch with one bad entry is rejected before anything runs
    with pytest.raises(SamplingParamsError):
        engine.generate(["a", "b"], [GREEDY, {"top_k": 0}])
    assert not engine.scheduler.has_work()
    assert engine.generate(PROMPTS[0], GREEDY)["meta_info"]["completion_tokens"] > 0
    assert_idle(engine)


def test_chunked_prefill_and_retraction_keep_outputs(engine):
    """A tiny KV pool forces chunking and retraction; outputs equal the roomy engine's."""
    prompts = [p * 3 for p in PROMPTS]
    expected = [engine.generate(p, {**GREEDY, "ignore_eos": True})["output_ids"] for p in prompts]
    small = Engine(dtype="float32", max_total_tokens=200, chunked_prefill_size=16, max_running_requests=5)
    try:
        got = small.generate(prompts, {**GREEDY, "ignore_eos": True})
        assert [r["output_ids"] for r in got] == expected
        assert small.scheduler.stats.num_retractions > 0
        assert_idle(small)
    finally:
        small.shutdown()
