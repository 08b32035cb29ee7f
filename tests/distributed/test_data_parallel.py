"""``launch_server --dp-size 2``: two replicas behind the real sglang-router (cache-aware) on loopback.

Also what the router reads of a replica: its load (``/get_load``'s ``num_tokens``) shows in ``/get_loads``.

Requests through the router's OpenAI route reach both replicas, its native /generate route works, requests
that share a long prefix land where it is cached (``cached_tokens > 0``), and a replica killed mid-run loses at
most the requests it was running: the router drops it and the other replica serves everything after."""

from __future__ import annotations

import os
import signal
import threading
import time

import openai
import psutil
import pytest
import requests

from sglang_dspark.launch_server import local_server

SHARED_PREFIX = " ".join(f"Rule {i}: answer briefly and precisely, in plain English." for i in range(30))
MAX_TOKENS = 8


def worker_urls(router: str) -> list[str]:
    body = requests.get(f"{router}/workers", timeout=10).json()
    return sorted(w["url"] for w in body["workers"])


def pid_listening_on(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise AssertionError(f"nothing listens on {url}")


def served_prompt_tokens(worker: str) -> int:
    return requests.get(f"{worker}/get_server_info", timeout=10).json()["internal_states"][0]["prompt_tokens"]


def chat(client: openai.OpenAI, prompt: str, system: str | None = None, max_tokens: int = MAX_TOKENS):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens, temperature=0)


def run_all(calls) -> list:
    """Run the calls at once on threads; each result is the response or the exception it raised."""
    results: list = [None] * len(calls)

    def one(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - a lost request is an outcome here
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture(scope="module")
def router():
    args = ["--dp-size", "2", "--max-total-tokens", "4096", "--max-running-requests", "16", "--log-level", "warning"]
    with local_server(args) as url:
        deadline = time.monotonic() + 120
        while len(worker_urls(url)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        yield url


def test_router_spreads_requests_and_routes_shared_prefixes_to_their_cache(router):
    workers = worker_urls(router)
    assert len(workers) == 2
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="none", max_retries=0, timeout=600)
    chat(client, "Say hi.", system=SHARED_PREFIX)  # puts the prefix in one replica's cache
    shared = [lambda i=i: chat(client, f"Question {i}: name a colour.", system=SHARED_PREFIX) for i in range(15)]
    distinct = [lambda i=i: chat(client, f"Request {i}: {'xyz' * (i + 1)} count to three.") for i in range(16)]
    results = run_all(shared + distinct)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors
    assert all(r.usage.prompt_tokens_details.cached_tokens > 0 for r in results[:15])
    assert all(served_prompt_tokens(w) > 0 for w in workers)


def test_native_generate_through_the_router(router):
    """The router forwards /generate bodies with the fields of SGLang's GenerateReqInput; replicas accept them."""
    body = {"text": "Hello", "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS, "ignore_eos": True}}
    r = requests.post(f"{router}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] == MAX_TOKENS


def test_killed_replica_loses_only_its_running_requests(router):
    victim, _survivor = worker_urls(router)
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="none", max_retries=0, timeout=600)
    calls = [lambda i=i: chat(client, f"Story {i}: tell me about a {'big ' * i}dog.", max_tokens=64) for i in range(16)]
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(run_all(calls)))
    runner.start()
    deadline = time.monotonic() + 300
    load = {"num_tokens": 0}
    while load["num_tokens"] == 0 and time.monotonic() < deadline:
        load = requests.get(f"{victim}/get_load", timeout=10).json()[0]
        time.sleep(0.05)
    running = load["num_reqs"]
    loads = requests.get(f"{router}/get_loads", timeout=10).json()["workers"]  # the router reads our /get_load
    assert any(w["worker"] == victim and w["load"] > 0 for w in loads)
    os.kill(pid_listening_on(victim), signal.SIGKILL)
    runner.join()
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(lost) <= running
    assert len(results) - len(lost) >= 16 - running
    after = run_all([lambda i=i: chat(client, f"After {i}: say yes.") for i in range(4)])
    assert not [r for r in after if isinstance(r, Exception)]
