"""Faults on a real server: the scheduler process killed mid-load, and a SIGTERM mid-load."""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
import requests

from sglang_dspark.launch_server import start_local_server, stop

FLAGS = ["--max-total-tokens", "8192", "--random-seed", "0", "--log-level", "warning"]
LONG = {"temperature": 0, "max_new_tokens": 4000, "ignore_eos": True}  # runs until something stops it
SHORT = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}  # done well within the grace period


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
    assert status == 200 and plain["meta_info"]["completion_tokens"] == 16, results
    status, events = by_kind[True]
    assert status == 200 and events[-1]["meta_info"]["completion_tokens"] == 16
    assert events[-1]["text"] == plain["text"]  # the same greedy request, not cut short
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=10)
