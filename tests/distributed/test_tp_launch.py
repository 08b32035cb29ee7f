"""Tensor-parallel ranks as processes: two "nodes" on 127.0.0.1, and the ways a TP launch fails.

A node is ``launch_server --nnodes 2 --node-rank K --dist-init-addr HOST:PORT``: node 0 serves HTTP with rank 0,
node 1 runs rank 1. A rank that dies takes the server down with a message naming it; a rendezvous address
nobody answers fails within --dist-timeout, naming the address; a --tp-size that cannot split the heads
names both numbers."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
import requests

from sglang_dspark import Engine
from sglang_dspark.distributed.net import free_port
from sglang_dspark.launch_server import local_server, start_local_server, stop
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs

# dense fp32 weights: tp2 gives tp1's tokens exactly (quantized, within int8 rounding: test_tensor_parallel.py)
COMMON = ["--dtype", "float32", "--quantization", "none", "--max-total-tokens", "1024", "--log-level", "info"]
PROMPT = "The three primary colours are"
GREEDY = {"temperature": 0, "max_new_tokens": 16}


def launch(args: list[str], log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sglang_dspark.launch_server", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def test_two_nodes_on_loopback_generate_what_one_process_does(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    nodes = ["--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr, *COMMON]
    with open(tmp_path / "node1.log", "wb") as log:
        node1 = launch([*nodes, "--node-rank", "1"], log)
    try:
        with local_server([*nodes, "--node-rank", "0"], log_path=tmp_path / "node0.log") as url:
            got = requests.post(f"{url}/generate", json={"text": PROMPT, "sampling_params": GREEDY}, timeout=600)
            info = requests.get(f"{url}/get_server_info", timeout=60).json()
        node1.wait(60)  # node 1 stops by itself once node 0 is gone
    finally:
        if node1.poll() is None:
            node1.kill()
    assert (info["tp_size"], info["nnodes"]) == (2, 2)
    with Engine(dtype="float32", quantization="none", max_total_tokens=1024, log_level="warning") as engine:
        expected = engine.generate(PROMPT, GREEDY)
    assert got.json()["output_ids"] == expected["output_ids"]
    assert "tensor-parallel rank 1 of 2 joined the group" in (tmp_path / "node1.log").read_text()


def test_unreachable_dist_init_addr_fails_naming_it(tmp_path):
    addr = f"127.0.0.1:{free_port()}"  # nobody listens: node 0 never started
    args = ["--tp-size", "2", "--nnodes", "2", "--node-rank", "1", "--dist-init-addr", addr, "--dist-timeout", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "sglang_dspark.launch_server", *args, *COMMON],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"--dist-init-addr {addr}" in result.stdout + result.stderr


def test_tp_size_that_cannot_split_the_heads_names_both_numbers():
    with pytest.raises(ValueError, match=r"--tp-size 4 does not divide the 9 attention heads"):
        ModelRunner(ServerArgs(tp_size=4, max_total_tokens=64), resolve_model_path(None))


def test_a_dying_rank_takes_the_server_down(tmp_path):
    log_path = tmp_path / "server.log"
    server = start_local_server(["--tp-size", "2", *COMMON], log_path=log_path)
    try:
        ranks = [
            p
            for p in psutil.Process(server.proc.pid).children(recursive=True)
            if "sglang_dspark.model_executor.tp_processes" in " ".join(p.cmdline())
        ]
        assert len(ranks) == 1
        ranks[0].kill()
        assert server.proc.wait(120) != 0  # exits by itself, no hang
    finally:
        if server.proc.poll() is None:
            stop(server.proc)
    log = log_path.read_text()
    assert "tensor-parallel rank 1" in log and "exited" in log
