"""SGLang's native HTTP API against a real server (see conftest.py), driven with `requests`."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sglang_dspark.launch_server import local_server

GREEDY = {"temperature": 0, "max_new_tokens": 12}
# prompts with confident greedy continuations, so outputs do not hinge on near-ties
PROMPTS = ["1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "a, b, c, d, e,", "January, February, March,"]


def post(url: str, path: str, body, timeout: float = 300) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(f"{url}{path}", data=data, headers={"Content-Type": "application/json"}, timeout=timeout)


def generate(url: str, body: dict):
    r = post(url, "/generate", body)
    assert r.status_code == 200, r.text
    return r.json()


def sse_payloads(response: requests.Response):
    """The JSON payloads of an SSE stream; asserts it ends with `data: [DONE]`."""
    payloads, done = [], False
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: ") and not done, line
        if line == "data: [DONE]":
            done = True
        else:
            payloads.append(json.loads(line[len("data: ") :]))
    assert done
    return payloads


def test_info_and_health_endpoints(server_url, model_info):
    for path in ("/health", "/health_generate"):
        assert requests.get(server_url + path, timeout=300).status_code == 200
    assert requests.get(f"{server_url}/model_info", timeout=30).json() == model_info
    assert model_info["is_generation"] is True and model_info["model_path"] and model_info["tokenizer_path"]
    for path in ("/server_info", "/get_server_info"):
        info = requests.get(server_url + path, timeout=30).json()
        assert info["version"] and info["dtype"] == "float32" and info["enable_metrics"] is True
        state = info["internal_states"][0]
        assert {"num_running_reqs", "num_waiting_reqs", "kv_usage", "avg_spec_accept_length"} <= set(state)
        assert state["kv_usage"]["total"] == info["max_total_num_tokens"] == 16384


def test_generate_text_input_ids_batch_and_n(server_url, tokenizer):
    out = generate(server_url, {"text": PROMPTS[0], "sampling_params": GREEDY})
    assert out["text"] == tokenizer.decode(out["output_ids"], skip_special_tokens=True)
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == len(tokenizer.encode(PROMPTS[0]))
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 12
    assert meta["finish_reason"]["type"] in ("stop", "length") and meta["e2e_latency"] > 0
    assert 0 < meta["first_token_latency"] <= meta["e2e_latency"]
    assert out["text"].startswith(" 6, 7")

    by_ids = generate(server_url, {"input_ids": tokenizer.encode(PROMPTS[0]), "sampling_params": GREEDY})
    assert by_ids["output_ids"] == out["output_ids"]
    assert by_ids["meta_info"]["cached_tokens"] > 0  # the same prompt again: a radix cache hit

    batch = generate(server_url, {"text": PROMPTS[:2], "sampling_params": [GREEDY, {**GREEDY, "max_new_tokens": 3}]})
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == out["output_ids"]
    assert batch[1]["meta_info"]["completion_tokens"] <= 3

    params = {"temperature": 1.0, "max_new_tokens": 6, "n": 3, "sampling_seed": 1, "ignore_eos": True}
    samples = generate(server_url, {"text": PROMPTS[1], "sampling_params": params, "rid": "n-test"})
    assert [s["meta_info"]["id"] for s in samples] == ["n-test-0", "n-test-1", "n-test-2"]
    assert all(s["meta_info"]["completion_tokens"] == 6 for s in samples)
    assert len({tuple(s["output_ids"]) for s in samples}) > 1


def test_stream_is_sse_with_cumulative_text(server_url):
    body = {"text": PROMPTS[2], "sampling_params": GREEDY, "stream": True}
    with requests.post(f"{server_url}/generate", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_payloads(r)
    texts = [c["text"] for c in chunks]
    assert len(chunks) > 1 and all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    final = generate(server_url, {"text": PROMPTS[2], "sampling_params": GREEDY})
    assert chunks[-1]["text"] == final["text"] and chunks[-1]["output_ids"] == final["output_ids"]

    # a batch streams every request's chunks, tagged with its index
    body = {"text": PROMPTS[:2], "sampling_params": {**GREEDY, "max_new_tokens": 3}, "stream": True}
    with requests.post(f"{server_url}/generate", json=body, stream=True, timeout=300) as r:
        chunks = sse_payloads(r)
    finished = {c["index"] for c in chunks if c["meta_info"]["finish_reason"]}
    assert finished == {0, 1}


def test_logprobs(server_url, tokenizer):
    ids = tokenizer.encode(PROMPTS[3])
    body = {
        "input_ids": ids,
        "sampling_params": {**GREEDY, "max_new_tokens": 4},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
    }
    meta = generate(server_url, body)["meta_info"]
    inputs, outputs = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert [t for _, t, _ in inputs] == ids and inputs[0][0] is None
    assert all(lp <= 0 for lp, _, _ in inputs[1:]) and inputs[1][2] == tokenizer.decode([ids[1]])
    assert len(outputs) == meta["completion_tokens"] and len(meta["output_top_logprobs"]) == len(outputs)
    for (lp, tid, _), top in zip(outputs, meta["output_top_logprobs"]):
        assert len(top) == 2 and top[0][1] == tid and top[0][0] == pytest.approx(lp, abs=1e-5)
    assert meta["input_top_logprobs"][0] is None and len(meta["input_top_logprobs"][1]) == 2
    # without return_logprob there are no logprob fields
    plain = generate(server_url, {"input_ids": ids, "sampling_params": GREEDY})
    assert "output_token_logprobs" not in plain["meta_info"]


def test_every_contract_sampling_parameter_is_accepted(server_url):
    params = {
        "max_new_tokens": 8,
        "min_new_tokens": 2,
        "n": 1,
        "stop": [" 9"],
        "stop_token_ids": [0],
        "stop_regex": [r"1\d"],
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.1,
        "repetition_penalty": 1.05,
        "ignore_eos": False,
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "regex": None,
        "json_schema": None,
        "ebnf": None,
    }
    out = generate(server_url, {"text": PROMPTS[0], "sampling_params": params})
    assert 2 <= out["meta_info"]["completion_tokens"] <= 8
    assert " 9" not in out["text"]


def test_structured_output(server_url):
    constraints = [{"regex": "(yes|no)"}, {"json_schema": json.dumps({"type": "object"})}, {"ebnf": 'root ::= "a"'}]
    params = {"max_new_tokens": 8, "temperature": 0}
    out = generate(server_url, {"text": "Is water wet? Answer:", "sampling_params": {**params, **constraints[0]}})
    assert out["text"] in ("yes", "no")
    out = generate(server_url, {"text": "Say a:", "sampling_params": {**params, **constraints[2]}})
    assert out["text"] == "a"
    r = post(server_url, "/generate", {"text": "x", "sampling_params": {"max_new_tokens": 2, "regex": "(unclosed"}})
    assert r.status_code == 400 and r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"text": "hi", "sampling_params": {"temprature": 0.5}}, "temprature"),
        ({"text": "hi", "sampling_params": {"max_new_tokens": 100000}}, "context length"),
        ({"text": "hi", "sampling_params": {"top_p": 2}}, "top_p"),
        ({"text": "hi", "no_such_field": 1}, "no_such_field"),
        ({"text": 5}, "text"),
        ({"text": "hi", "input_ids": [1]}, "exactly one"),
        ({"text": []}, "no prompts"),
        ({"input_ids": [10**9]}, "vocabulary"),
        ({"text": ["a", "b"], "sampling_params": [{}, {"top_k": 0}]}, "top_k"),
    ],
)
def test_bad_requests_get_400_with_a_message(server_url, body, message):
    r = post(server_url, "/generate", body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_server_survives_bad_requests(server_url, wait_idle):
    assert requests.get(f"{server_url}/health", timeout=30).status_code == 200
    wait_idle()


def test_abort_request_endpoint(server_url, wait_idle):
    body = {
        "text": PROMPTS[0],
        "rid": "to-abort",
        "sampling_params": {"temperature": 0, "max_new_tokens": 2000, "ignore_eos": True},
        "stream": True,
    }
    with requests.post(f"{server_url}/generate", json=body, stream=True, timeout=300) as r:
        lines = (line for line in r.iter_lines(decode_unicode=True) if line)
        assert json.loads(next(lines)[len("data: ") :])["meta_info"]["finish_reason"] is None
        assert post(server_url, "/abort_request", {"rid": "to-abort"}).json() == {"aborted": 1}
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][len("data: ") :])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["completion_tokens"] < 2000
    assert post(server_url, "/abort_request", {"rid": 5}).status_code == 400
    wait_idle()


def test_flush_cache(server_url, wait_idle, internal_state):
    generate(server_url, {"text": PROMPTS[1], "sampling_params": {**GREEDY, "max_new_tokens": 2}})
    wait_idle()
    assert internal_state()["kv_usage"]["cached"] > 0
    r = requests.post(f"{server_url}/flush_cache", timeout=60)
    assert r.status_code == 200
    kv = internal_state()["kv_usage"]
    assert kv["cached"] == 0 and kv["free"] == kv["total"]


def test_64_concurrent_clients_a_third_disconnecting_mid_stream(server_url, wait_idle):
    expected = {p: generate(server_url, {"text": p, "sampling_params": GREEDY}) for p in PROMPTS}
    idle_before = wait_idle()
    received_two = threading.Barrier(22)  # the leavers (i % 3 == 0) wait for each other, then hang up together

    def client(i: int):
        prompt = PROMPTS[i % len(PROMPTS)]
        leaver = i % 3 == 0
        # unaborted, a leaver's request would run for minutes and wait_idle() below would fail
        params = {"temperature": 0, "max_new_tokens": 4000, "ignore_eos": True} if leaver else GREEDY
        body = {"text": prompt, "sampling_params": params, "stream": True}
        with requests.post(f"{server_url}/generate", json=body, stream=True, timeout=600) as r:
            if not leaver:
                return prompt, sse_payloads(r)
            lines = (line for line in r.iter_lines(decode_unicode=True) if line)
            seen = [next(lines), next(lines)]
            received_two.wait(timeout=300)
        # leaving the `with` closes the connection mid-stream
        return prompt, [json.loads(line[len("data: ") :]) for line in seen]

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(client, range(64)))

    for i, (prompt, chunks) in enumerate(results):
        if i % 3 == 0:
            assert chunks[-1]["meta_info"]["finish_reason"] is None  # it left before the end
            continue
        texts = [c["text"] for c in chunks]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
        assert chunks[-1]["output_ids"] == expected[prompt]["output_ids"], (i, prompt)
        assert chunks[-1]["text"] == expected[prompt]["text"]
        assert chunks[-1]["meta_info"]["finish_reason"] == expected[prompt]["meta_info"]["finish_reason"]

    idle_after = wait_idle()  # the leavers' requests were aborted and their KV released
    assert idle_after["kv_usage"]["in_use"] == idle_before["kv_usage"]["in_use"] == 0
    assert requests.get(f"{server_url}/health_generate", timeout=300).status_code == 200


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_metrics(server_url):
    generate(server_url, {"text": PROMPTS[0], "sampling_params": {**GREEDY, "max_new_tokens": 3}})
    r = requests.get(f"{server_url}/metrics", timeout=60)
    assert r.status_code == 200
    text = r.text

    def value(name: str) -> float:
        return metric(text, name)

    assert value("sglang:num_requests_total") >= 1
    assert value("sglang:prompt_tokens_total") > 0 and value("sglang:generation_tokens_total") >= 3
    assert value("sglang:time_to_first_token_seconds_count") >= 1
    assert value("sglang:inter_token_latency_seconds_count") >= 2
    assert value("sglang:e2e_request_latency_seconds_count") >= 1
    assert value("sglang:num_running_reqs") == 0 and value("sglang:num_queue_reqs") == 0
    assert value("sglang:token_usage") == 0
    assert 0 <= value("sglang:cache_hit_rate") <= 1


def test_speculative_server_reports_accept_length(tmp_path, server_flags, sps_path):
    """With --speculative-algorithm NGRAM: spec fields in meta_info, SGLang's avg_spec_accept_length in
    /server_info and the sglang:spec_accept_length gauge agree with the requests' own counts."""
    flags = [*server_flags, "--speculative-algorithm", "NGRAM", "--speculative-dspark-sps-table-path", sps_path]
    with local_server(flags, tmp_path / "server.log") as url:
        text = "Repeat ten times: red green blue, red green blue, red green blue, red green blue,"
        out = generate(url, {"text": text, "sampling_params": {**GREEDY, "max_new_tokens": 40}})
        meta = out["meta_info"]
        assert meta["spec_verify_ct"] > 0 and meta["spec_num_correct_drafts"] > 0
        state = requests.get(f"{url}/server_info", timeout=60).json()
        accept_length = state["internal_states"][0]["avg_spec_accept_length"]
        assert accept_length == pytest.approx(meta["completion_tokens"] / meta["spec_verify_ct"])
        assert accept_length > 1
        assert metric(requests.get(f"{url}/metrics", timeout=60).text, "sglang:spec_accept_length") == (
            pytest.approx(accept_length)
        )
