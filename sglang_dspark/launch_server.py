"""`python -m sglang_dspark.launch_server [--model-path PATH] [--port N] ...` (SGLang's flag names),
and `local_server(...)` / `start_local_server(...)`: the same command as a child process on a free loopback
port (tests, benchmarks)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.distributed.net import free_port
from sglang_dspark.entrypoints.data_parallel import healthy
from sglang_dspark.server_args import ServerArgs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_dspark.launch_server", description=__doc__)
    ServerArgs.add_cli_args(parser)
    argv = sys.argv[1:] if argv is None else argv
    server_args = ServerArgs.from_cli_args(parser.parse_args(argv))

    # imports after parsing: --help stays fast
    if server_args.dp_size > 1:  # replicas behind sglang-router
        from sglang_dspark.entrypoints.data_parallel import launch_data_parallel

        sys.exit(launch_data_parallel(server_args, argv))
    if server_args.node_rank > 0:  # tensor-parallel ranks of another node; node 0 serves HTTP
        from sglang_dspark.model_executor.tp_processes import serve_node
        from sglang_dspark.models.model_source import resolve_model_path

        logging.basicConfig(level=server_args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
        sys.exit(serve_node(server_args, resolve_model_path(server_args.model_path)))
    from sglang_dspark.entrypoints.http_server import launch_server

    launch_server(server_args)


@dataclass
class LocalServer:
    proc: subprocess.Popen
    url: str
    log_path: Path


def start_local_server(
    args: list[str], log_path: Path | None = None, timeout: float = 600.0, cwd: Path | None = None
) -> LocalServer:
    """Start the server with `args` on a free 127.0.0.1 port, from directory `cwd` (this one if None), and
    return once /health answers. Its output goes to `log_path` (a temporary file if None), quoted on failure;
    the caller stops the process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_path or Path(tempfile.mkstemp(prefix="sglang_dspark_server_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "sglang_dspark.launch_server", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            what = f"exited with {proc.returncode}" if proc.returncode is not None else "did not come up"
            stop(proc)
            raise RuntimeError(f"the server {what}; its log ({log_path}):\n{log_path.read_text()[-5000:]}")
        time.sleep(1)
    return LocalServer(proc, url, log_path)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def local_server(
    args: list[str], log_path: Path | None = None, timeout: float = 600.0, cwd: Path | None = None
) -> Iterator[str]:
    """`start_local_server` as a context: yields the URL and stops the server on exit."""
    server = start_local_server(args, log_path, timeout, cwd)
    try:
        yield server.url
    finally:
        stop(server.proc)


if __name__ == "__main__":
    main()
