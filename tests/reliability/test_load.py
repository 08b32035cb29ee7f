"""64 concurrent clients against a real server (DSPARK, grammars, deterministic inference), a third of them
hanging up mid-stream: no 5xx, every client that stays gets exactly its output alone with every chunk once,
and the server's resource counts (/server_info, /metrics) are back to zero afterwards."""

from __future__ import annotations

import re

import requests

from sglang_dspark.check_load import SERVER_FLAGS, reference_outputs, run_load
from sglang_dspark.launch_server import start_local_server, stop

CLIENTS = 64
MAX_NEW_TOKENS = 24


def test_load_with_disconnects(tmp_path):
    flags = [*SERVER_FLAGS, "--max-running-requests", str(CLIENTS), "--enable-metrics"]
    server = start_local_server(flags, tmp_path / "server.log")
    try:
        refs = reference_outputs(server.url, MAX_NEW_TOKENS)
        report = run_load(server.url, CLIENTS, MAX_NEW_TOKENS, refs)
        metrics = requests.get(f"{server.url}/metrics", timeout=60).text
    finally:
        stop(server.proc)
    # a third are told to hang up after 1-3 chunks; one whose stream ends sooner counts as complete
    assert report.requests == CLIENTS and report.hung_up >= CLIENTS // 4, report
    assert report.errors_5xx == 0 and not report.other_errors, report
    assert report.mismatched == 0 and report.broken_streams == 0, report
    assert set(report.resources_after) == {
        "requests", "kv_slots", "req_rows", "grammar_objects", "drafter_states", "http_requests"
    }  # fmt: skip
    assert report.idle, report.resources_after
    gauges = re.findall(r'sglang:resources_in_use\{model_name="[^"]*",resource="(\w+)"\} (\S+)', metrics)
    assert {name for name, _ in gauges} == set(report.resources_after) and all(float(v) == 0 for _, v in gauges)
