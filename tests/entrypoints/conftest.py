"""A real server (`python -m sglang_dspark.launch_server`) on a free loopback port, shared by the HTTP tests.

float32 so that greedy outputs do not depend on how requests are batched (docs/design.md "CPU cost model").
"""

from __future__ import annotations

import time

import pytest
import requests

from sglang_dspark.launch_server import local_server

SERVER_FLAGS = [
    "--dtype", "float32",
    "--max-total-tokens", "16384",
    "--max-running-requests", "64",
    "--random-seed", "0",
    "--enable-metrics",
    "--log-level", "warning",
]  # fmt: skip


@pytest.fixture(scope="session")
def server_flags() -> list[str]:
    """The shared server's flags, for tests that launch a variant of it."""
    return list(SERVER_FLAGS)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    with local_server(SERVER_FLAGS, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def model_info(server_url) -> dict:
    return requests.get(f"{server_url}/get_model_info", timeout=30).json()


@pytest.fixture(scope="session")
def tokenizer(model_info):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_info["tokenizer_path"])


@pytest.fixture(scope="session")
def internal_state(server_url):
    """Returns a function giving the scheduler's live state from /server_info."""
    return lambda: requests.get(f"{server_url}/server_info", timeout=60).json()["internal_states"][0]


@pytest.fixture(scope="session")
def wait_idle(internal_state):
    """Returns a function polling until no request runs or waits and requests own no KV slot."""

    def wait(tries: int = 120) -> dict:
        for _ in range(tries):
            state = internal_state()
            kv = state["kv_usage"]
            if not (state["num_running_reqs"] or state["num_waiting_reqs"] or kv["in_use"]):
                assert kv["free"] + kv["cached"] == kv["total"], kv
                return state
            time.sleep(0.5)
        raise AssertionError(f"the server did not return to idle: {state}")

    return wait


# What the spec servers offer to verify must not depend on the machine's speed (tests assert drafts were accepted):
# a fixed SPS table and no wall-clock pacing (measured round throughput, the drafter's cost gate).
TIMING_FREE_SPEC_CONFIG = '{"round_throughput": false, "gate": false}'


def _spec_server(tmp_path_factory, algorithm: str, sps_path: str):
    flags = [
        *SERVER_FLAGS,
        "--speculative-algorithm", algorithm,
        "--speculative-dspark-sps-table-path", sps_path,
        "--speculative-config", TIMING_FREE_SPEC_CONFIG,
    ]  # fmt: skip
    return local_server(flags, tmp_path_factory.mktemp(algorithm.lower()) / "server.log")


@pytest.fixture(scope="session")
def dspark_server_url(tmp_path_factory, sps_path) -> str:
    """The shared server's flags with --speculative-algorithm DSPARK (the shipped drafter)."""
    with _spec_server(tmp_path_factory, "DSPARK", sps_path) as url:
        yield url


@pytest.fixture(scope="session")
def ngram_server_url(tmp_path_factory, sps_path) -> str:
    """The shared server's flags with --speculative-algorithm NGRAM."""
    with _spec_server(tmp_path_factory, "NGRAM", sps_path) as url:
        yield url
