"""`python -m sglang_dspark.launch_server [--model-path PATH] [--port N] ...` (SGLang's flag names),
and `local_server(...)`: the same command as a child process on a free loopback port (tests, benchmarks)."""

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


@contextmanager
def local_server(
    args: list[str], log_path: Path | None = None, timeout: float = 600.0, cwd: Path | None = None
) -> Iterator[str]:
    """Run the server with `args` on a free 127.0.0.1 port, from directory `cwd` (this one if None);
    yields its URL once /health answers and stops it on exit. Its output goes to `log_path` (a temporary
    file if None), quoted on failure."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_path or Path(tempfile.mkstemp(prefix="sglang_dspark_server_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "sglang_dspark.launch_server", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                what = f"exited with {proc.returncode}" if proc.returncode is not None else "did not come up"
                raise RuntimeError(f"the server {what}; its log ({log_path}):\n{log_path.read_text()[-5000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
