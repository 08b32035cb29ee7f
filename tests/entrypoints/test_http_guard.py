"""--api-key and --max-request-bytes on a real server, with the real openai client and sglang frontend."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from sglang_dspark.launch_server import local_server

sgl = pytest.importorskip("sglang", reason="install the frontend: pip install --no-deps sglang==0.5.23")

KEY = "sk-test-3f9a1c27"
LIMIT = 4096
GENERATE = {"text": "Hello", "sampling_params": {"max_new_tokens": 2, "temperature": 0}}


@sgl.function
def greet(s):
    s += "Hello, my name is"
    s += sgl.gen("name", max_tokens=4, temperature=0)


@pytest.fixture(scope="module")
def guarded(server_flags, tmp_path_factory):
    """(url, log path) of a server with an API key and a small body limit."""
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    with local_server([*server_flags, "--api-key", KEY, "--max-request-bytes", str(LIMIT)], log) as url:
        yield url, log


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_health_is_open_and_everything_else_needs_the_key(guarded):
    url, _ = guarded
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    calls = [
        ("post", "/generate", GENERATE),
        ("get", "/health_generate", None),
        ("get", "/get_model_info", None),
        ("get", "/server_info", None),
        ("post", "/flush_cache", None),
        ("post", "/abort_request", {"abort_all": True}),
        ("get", "/metrics", None),
        ("get", "/v1/models", None),
    ]
    for method, path, body in calls:
        for headers in ({}, auth("sk-wrong"), {"Authorization": KEY}):  # none, wrong key, no "Bearer "
            r = requests.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert KEY not in r.text
        r = requests.request(method, f"{url}{path}", json=body, headers=auth(), timeout=300)
        assert r.status_code == 200, (path, r.status_code, r.text)
    native = requests.post(f"{url}/generate", json=GENERATE, timeout=60).json()
    assert "API key" in native["error"]["message"]
    error = requests.get(f"{url}/v1/models", timeout=60).json()
    assert error["object"] == "error" and error["code"] == 401 and error["type"] == "AuthenticationError"


def test_openai_client_sends_the_key(guarded):
    url, _ = guarded
    messages = [{"role": "user", "content": "Hi"}]
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    out = good.chat.completions.create(model="any", messages=messages, max_tokens=4, temperature=0)
    assert out.choices[0].message.content
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0, timeout=300)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="any", messages=messages, max_tokens=4)


def test_sglang_frontend_sends_the_key(guarded):
    url, _ = guarded
    state = greet.run(backend=sgl.RuntimeEndpoint(url, api_key=KEY))
    assert state["name"]
    with pytest.raises(Exception, match="401|API key"):
        sgl.RuntimeEndpoint(url, api_key="sk-wrong")  # it reads /get_model_info on construction


def test_the_key_is_never_shown(guarded):
    url, log = guarded
    info = requests.get(f"{url}/server_info", headers=auth(), timeout=60)
    assert info.json()["api_key"] == "<set>" and KEY not in info.text
    assert KEY not in log.read_text()


def test_bodies_past_the_limit_are_413(guarded):
    url, _ = guarded
    big = {**GENERATE, "text": "x" * LIMIT}
    declared = requests.post(f"{url}/generate", json=big, headers=auth(), timeout=60)
    assert declared.status_code == 413 and "--max-request-bytes" in declared.json()["error"]["message"]
    chunks = iter([json.dumps(big).encode()[i : i + 1000] for i in range(0, LIMIT + 1000, 1000)])
    chunked = requests.post(f"{url}/v1/completions", data=chunks, headers=auth(), timeout=60)  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["code"] == 413
    small = requests.post(f"{url}/generate", json=GENERATE, headers=auth(), timeout=60)
    assert small.status_code == 200
