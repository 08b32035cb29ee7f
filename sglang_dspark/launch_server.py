"""`python -m sglang_dspark.launch_server [--model-path PATH] [--port N] ...` (SGLang's flag names),
and `local_server(...)` / `start_local_server(...)`: the same command as a child process on a free loopback
port (tests, benchmarks)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.server_args import ServerArgs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_dspark.launch_server", description=__doc__)
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(argv))

    from sglang_dspark.entrypoints.http_server import launch_server  # after parsing: --help stays fast

    launch_server(server_args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
    while not _healthy(url):
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
