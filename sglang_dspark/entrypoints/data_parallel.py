"""``launch_server --dp-size N``: N independent replicas of the server behind the real ``sglang-router``.

Each replica is this package's server on a free loopback port, pinned to its share of the cores; the router
(PyPI ``sglang-router``, its own launcher) listens on ``--host``/``--port`` with cache-aware routing, so
requests that share a prefix go to the replica that holds it. The router health-checks the replicas: one
that dies is dropped and the others keep serving. Stopping this process stops the router and the replicas.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from sglang_dspark.distributed.net import free_port
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

# flags of the dp launcher that a replica does not take (it gets its own port on the loopback interface)
LAUNCHER_FLAGS = ("--dp-size", "--host", "--port")
POLL_S = 0.5


def replica_argv(argv: list[str], port: int) -> list[str]:
    """The command-line arguments of one replica: ``argv`` without the launcher's own flags, on ``port``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in LAUNCHER_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return [*out, "--host", "127.0.0.1", "--port", str(port)]


def replica_cores(index: int, count: int, available: list[int]) -> list[int]:
    """The cores of replica ``index`` of ``count``: an even, in-order split of ``available``."""
    per = max(1, len(available) // count)
    start = (index * per) % len(available)
    return available[start : start + per]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch_data_parallel(server_args: ServerArgs, argv: list[str], startup_timeout_s: float = 600.0) -> int:
    """Start the replicas, wait until each answers /health, then run the router in front of them until it
    exits or this process is stopped. Returns the exit code."""
    logging.basicConfig(level=server_args.log_level.upper(), format="%(asctime)s dp %(name)s: %(message)s")
    available = sorted(os.sched_getaffinity(0))
    procs: list[subprocess.Popen] = []
    urls: list[str] = []
    for i in range(server_args.dp_size):
        port = free_port()
        args = replica_argv(argv, port)
        cores = replica_cores(i, server_args.dp_size, available)
        if server_args.num_threads is None:
            args += ["--num-threads", str(len(cores))]
        cmd = [sys.executable, "-m", "sglang_dspark.launch_server", *args]
        procs.append(subprocess.Popen(cmd, preexec_fn=lambda c=cores: os.sched_setaffinity(0, c)))
        urls.append(f"http://127.0.0.1:{port}")
        logger.info("replica %d: %s on cores %s", i, urls[-1], cores)
    router = None
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # run the finally below
    try:
        deadline = time.monotonic() + startup_timeout_s
        for i, url in enumerate(urls):
            while not healthy(url):
                if procs[i].poll() is not None or time.monotonic() > deadline:
                    logger.error("replica %d (%s) did not come up; stopping", i, url)
                    return 1
                time.sleep(POLL_S)
        router_cmd = [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--host",
            server_args.host,
            "--port",
            str(server_args.port),
            "--policy",
            "cache_aware",
            "--worker-urls",
            *urls,
        ]
        router = subprocess.Popen(router_cmd)
        logger.info(
            "sglang-router on http://%s:%d in front of %d replicas", server_args.host, server_args.port, len(urls)
        )
        return router.wait()
    finally:
        for proc in [*([router] if router else []), *procs]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*([router] if router else []), *procs]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
