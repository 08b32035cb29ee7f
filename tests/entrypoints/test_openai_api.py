"""The OpenAI API of a real server (see conftest.py), driven with the real `openai` client."""

from __future__ import annotations

import json

import openai
import pytest
import requests

MESSAGES = [{"role": "user", "content": "List three colours."}]


@pytest.fixture(scope="module")
def client(server_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_models(client, model_info):
    models = client.models.list().data
    assert [m.id for m in models] == [model_info["served_model_name"]]
    assert models[0].object == "model"


def test_chat_uses_the_models_chat_template_and_reports_cached_tokens(client, tokenizer):
    first = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=8, temperature=0)
    second = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=8, temperature=0)
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens == len(prompt_ids)
    assert 0 < first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    assert second.choices[0].message.content == choice.message.content
    assert first.id != second.id and first.object == "chat.completion"


def test_chat_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="any",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_chat_n_stop_logprobs_and_sglang_extras(client):
    out = client.chat.completions.create(
        model="any",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0.8,
        n=2,
        seed=3,
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 20, "min_p": 0.01, "stop_token_ids": [0]},
    )
    assert [c.index for c in out.choices] == [0, 1]
    for choice in out.choices:
        entries = choice.logprobs.content
        assert 0 < len(entries) <= 6
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)

    plain = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=12, temperature=0)
    text = plain.choices[0].message.content
    stop = text.split()[2]  # a word from the middle of the greedy answer
    stopped = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].matched_stop == stop
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def assert_close_entries(got: list, want: list) -> None:
    """The OpenAI client's logprob entries: the same tokens and top tokens, logprobs within 1e-4."""
    assert [e.token for e in got] == [e.token for e in want]
    for g, w in zip(got, want):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [t.token for t in g.top_logprobs] == [t.token for t in w.top_logprobs]
        assert [t.logprob for t in g.top_logprobs] == pytest.approx([t.logprob for t in w.top_logprobs], abs=1e-4)


def test_logprobs_under_dspark_are_plain_decodings(client, server_url, dspark_server_url):
    """Logprob requests speculate (drafts are accepted), and the DSPARK server's logprobs and top 5 equal the plain
    server's through the OpenAI chat route (streamed too) and /generate: the same tokens, logprobs within 1e-4.
    fp32 with torch's GEMM, whose sums change in their last bits with the rows beside them, as plain decoding's
    do between alone and batched; with batch-invariant kernels they are equal within 1e-5
    (tests/speculative/test_spec_decode.py)."""
    dspark = openai.OpenAI(base_url=f"{dspark_server_url}/v1", api_key="unused", max_retries=0, timeout=300)
    count = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    kw = {"model": "any", "messages": count, "max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    want = client.chat.completions.create(**kw).choices[0]
    got = dspark.chat.completions.create(**kw).choices[0]
    chunks = list(dspark.chat.completions.create(**kw, stream=True))
    assert got.message.content == want.message.content
    assert_close_entries(got.logprobs.content, want.logprobs.content)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert_close_entries(streamed, want.logprobs.content)

    body = {
        "text": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "sampling_params": {"temperature": 0, "max_new_tokens": 24},
        "return_logprob": True,
        "top_logprobs_num": 5,
    }
    plain, spec = (
        requests.post(f"{u}/generate", json=body, timeout=300).json() for u in (server_url, dspark_server_url)
    )
    assert spec["output_ids"] == plain["output_ids"]
    assert spec["meta_info"]["spec_num_correct_drafts"] > 0
    pairs = zip(spec["meta_info"]["output_token_logprobs"], plain["meta_info"]["output_token_logprobs"], strict=True)
    for g, w in pairs:
        assert g[1] == w[1] and g[0] == pytest.approx(w[0], abs=1e-4)
    for g, w in zip(spec["meta_info"]["output_top_logprobs"], plain["meta_info"]["output_top_logprobs"], strict=True):
        assert [t[1] for t in g] == [t[1] for t in w]
        assert [t[0] for t in g] == pytest.approx([t[0] for t in w], abs=1e-4)


def test_completions(client, tokenizer):
    out = client.completions.create(model="any", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"])
    choice = out.choices[0]
    assert choice.text == " 5, 6," and choice.finish_reason == "stop" and out.object == "text_completion"
    assert out.usage.prompt_tokens == len(tokenizer.encode("1, 2, 3, 4,"))

    batch = client.completions.create(model="any", prompt=["a, b,", "x, y,"], max_tokens=2, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text  # greedy: n samples agree

    by_ids = client.completions.create(model="any", prompt=tokenizer.encode("1, 2, 3, 4,"), max_tokens=2, temperature=0)
    assert by_ids.choices[0].text == " 5"

    lp = client.completions.create(model="any", prompt="1, 2, 3,", max_tokens=3, temperature=0, logprobs=2)
    logprobs = lp.choices[0].logprobs
    assert "".join(logprobs.tokens) == lp.choices[0].text and len(logprobs.token_logprobs) == 3
    assert all(len(top) == 2 for top in logprobs.top_logprobs) and logprobs.text_offset[0] == 0

    echo = client.completions.create(model="any", prompt="1, 2, 3,", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text == "1, 2, 3," + lp.choices[0].text


def test_completions_streaming(client):
    full = client.completions.create(model="any", prompt="Monday, Tuesday,", max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(model="any", prompt="Monday, Tuesday,", max_tokens=8, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_response_format(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    formats = [
        {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        {"type": "json_object"},
    ]
    for response_format in formats:
        kwargs = {"model": "any", "messages": MESSAGES, "max_tokens": 24, "response_format": response_format}
        out = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": False})
        if out.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(out.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(model="any", messages=MESSAGES, response_format={"type": "json_schema"})


def test_errors(client, server_url):
    r = requests.post(
        f"{server_url}/v1/chat/completions", data="{bad", headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 400
    error = r.json()
    assert error["object"] == "error" and error["code"] == 400 and "not valid JSON" in error["message"]
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model="any", prompt="hi", max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="any", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=2, top_p=3)
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            max_tokens=2,
        )
