"""Faults: the scheduler process killed mid-load, a SIGTERM mid-load, the KV pool exhausted under load, a grammar
compile worker killed mid-compile."""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
import requests

from sglang_dspark import Engine
from sglang_dspark.launch_server import start_local_server, stop

FLAGS = ["--max-total-tokens", "8192", "--random-seed", "0", "--log-level", "warning"]
LONG = {"temperature": 0, "max_new_tokens": 4000, "ignore_eos": True}  # runs until something stops it
# long enough to be seen running (polled every 0.2 s), done well within the 30 s grace period
SHORT_TOKENS = 128
SHORT = {"temperature": 0, "max_new_tokens": SHORT_TOKENS, "ignore_eos": True}
SLOW_REGEX = "(a|b)*a(a|b){16}"  # ~2^16 DFA states: outlines compiles it for tens of seconds


def post(url: str, body: dict, results: list, timeout: float = 300) -> None:
    """POST /generate in a thread; appends (status, final payload or error text)."""
    try:
        r = requests.post(f"{url}/generate", json=body, timeout=timeout, stream=body.get("stream", False))
        if body.get("stream"):
            events = [line[6:] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
            results.append((r.status_code, [json.loads(e) for e in events if e != "[DONE]"]))
        else:
            results.append((r.status_code, r.json()))
    except requests.RequestException as e:
        results.append((None, str(e)))


def start_load(url: str, bodies: list[dict]) -> tuple[list[threading.Thread], list]:
    results: list = []
    threads = [threading.Thread(target=post, args=(url, body, results)) for body in bodies]
    for t in threads:
        t.start()
    return threads, results


def wait_running(url: str, n: int) -> None:
    for _ in range(300):
        state = requests.get(f"{url}/server_info", timeout=30).json()["internal_states"][0]
        if state["num_running_reqs"] >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{n} requests never ran together")


@pytest.fixture
def server(tmp_path):
    server = start_local_server(FLAGS, tmp_path / "server.log")
    yield server
    if server.proc.poll() is None:
        stop(server.proc)


def test_scheduler_killed_mid_load(server):
    """In-flight requests end promptly with a 503 naming the cause (a streamed one with an error event),
    /health is unhealthy, and the server exits non-zero so a supervisor restarts it."""
    bodies = [{"text": f"Story {i}:", "sampling_params": LONG} for i in range(3)]
    bodies.append({"text": "Story 3:", "sampling_params": LONG, "stream": True})
    threads, results = start_load(server.url, bodies)
    wait_running(server.url, 4)
    (scheduler,) = [p for p in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    scheduler.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    for t in threads:
        t.join(120)
    assert time.monotonic() - killed < 60
    plain = [payload for status, payload in results if status == 503]
    assert len(plain) == 3 and all("scheduler process died" in p["error"]["message"] for p in plain), results
    (streamed,) = [payload for status, payload in results if status == 200]
    assert "scheduler process died" in streamed[-1]["error"]["message"]
    try:
        health = requests.get(f"{server.url}/health", timeout=10).status_code
    except requests.ConnectionError:
        health = None  # already gone
    assert health in (503, None)
    assert server.proc.wait(60) != 0
    assert "exiting: the scheduler process died" in server.log_path.read_text()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(server):
    bodies = [{"text": "Once upon a time", "sampling_params": SHORT}]
    bodies.append({"text": "Once upon a time", "sampling_params": SHORT, "stream": True})
    threads, results = start_load(server.url, bodies)
    wait_running(server.url, 2)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert server.proc.wait(90) == 0
    by_kind = {isinstance(payload, list): (status, payload) for status, payload in results}
    status, plain = by_kind[False]
    assert status == 200 and plain["meta_info"]["completion_tokens"] == SHORT_TOKENS, results
    status, events = by_kind[True]
    assert status == 200 and events[-1]["meta_info"]["completion_tokens"] == SHORT_TOKENS
    assert events[-1]["text"] == plain["text"]  # the same greedy request, not cut short
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=10)


def test_kv_exhausted_under_load_retracts_and_loses_nothing():
    """8 requests that need about twice the KV pool: the scheduler retracts and re-admits, every request
    finishes with the tokens it gets alone (deterministic inference makes the recomputed KV identical)."""
    engine = Engine(
        max_total_tokens=400,
        enable_deterministic_inference=True,
        random_seed=0,
        log_level="error",
        max_running_requests=8,
    )
    try:
        prompts = [f"Tell story number {i} about a dragon." for i in range(4)]
        params = {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True}
        alone = [engine.generate(p, params)["output_ids"] for p in prompts]
        engine.flush_cache()
        batched = engine.generate(prompts * 2, [params] * 8)
        assert engine.scheduler.stats.num_retractions > 0
        assert [r["output_ids"] for r in batched] == alone * 2
        assert all(r["meta_info"]["finish_reason"]["type"] == "length" for r in batched)
    finally:
        engine.shutdown()


def test_killed_grammar_worker_fails_its_request_only(tmp_path):
    """outlines compiles in worker processes: one killed mid-compile is a 400 naming the cause for its request;
    a request running beside it finishes, and the next constrained request compiles in a new worker."""
    server = start_local_server([*FLAGS, "--grammar-backend", "outlines"], tmp_path / "server.log")
    try:
        bodies = [{"text": "Pick:", "sampling_params": {**SHORT, "regex": SLOW_REGEX}}]
        bodies.append({"text": "Once upon a time", "sampling_params": SHORT})
        threads, results = start_load(server.url, bodies)
        worker = wait_for_worker(server.proc.pid)
        worker.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(300)
        by_status = {status: payload for status, payload in results}
        assert set(by_status) == {200, 400}, results
        assert "compile process" in by_status[400]["error"]["message"]  # died mid-compile or while starting
        assert by_status[200]["meta_info"]["completion_tokens"] == SHORT_TOKENS
        again = requests.post(
            f"{server.url}/generate",
            json={"text": "Answer:", "sampling_params": {**SHORT, "regex": "(yes|no)"}},
            timeout=300,
        )
        assert again.status_code == 200 and again.json()["text"] in ("yes", "no")
    finally:
        stop(server.proc)


def wait_for_worker(server_pid: int) -> psutil.Process:
    """The outlines compile worker among the server's descendants, once it runs."""
    for _ in range(600):
        for p in psutil.Process(server_pid).children(recursive=True):
            if "outlines_compile_worker" in " ".join(p.cmdline()):
                return p
        time.sleep(0.1)
    raise AssertionError("no outlines compile worker started")
