"""Scale-out on this machine: tokens/s of one server vs ``--tp-size 2`` vs ``--dp-size 2``, one run.

    python benchmarks/bench_scale.py                      # default model, bf16, 4 + 16 requests
    python benchmarks/bench_scale.py --max-tokens 64 --dtype float32

Every configuration is a real server on loopback, given the same cores: one process on one core (the
baseline, tp 1 = dp 1), one process on two threads, two tensor-parallel ranks on one core each, and two
replicas on one core each behind sglang-router. Each is measured at concurrency 1 (requests one after
another) and 16 (all at once) through ``/v1/completions`` with ``ignore_eos`` (fixed output lengths). For
tp 2 it also reads rank 0's all-reduce time and bytes per forward step (``/get_server_info``). Prints a
markdown table; results go to benchmarks/results/scale.md by hand, with the command.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass

import requests

from sglang_dspark.launch_server import local_server

PROMPTS = [
    f"Write a short story about a {w} who learns to {v}."
    for w, v in [("robot", "paint"), ("cat", "swim"), ("baker", "fly"), ("child", "sing")]
]


@dataclass
class Config:
    name: str
    flags: list[str]
    cores: str | None  # taskset-style core list for the whole launch, None = all


@dataclass
class Result:
    tokens_per_s: float
    completion_tokens: int
    seconds: float


def complete(url: str, prompt: str, max_tokens: int) -> int:
    body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    r = requests.post(f"{url}/v1/completions", json=body, timeout=3600)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def run(url: str, concurrency: int, num_requests: int, max_tokens: int) -> Result:
    """``num_requests`` requests, ``concurrency`` in flight at a time."""
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(num_requests)]
    done: list[int] = []
    lock = threading.Lock()

    def worker(chunk: list[str]) -> None:
        for p in chunk:
            n = complete(url, p, max_tokens)
            with lock:
                done.append(n)

    chunks = [prompts[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return Result(sum(done) / seconds, sum(done), seconds)


def internal_state(url: str) -> dict:
    return requests.get(f"{url}/get_server_info", timeout=60).json()["internal_states"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-c1", type=int, default=4)
    ap.add_argument("--requests-c16", type=int, default=16)
    ap.add_argument("--cores", default="0,1", help="the two cores every configuration gets (taskset list)")
    args = ap.parse_args()
    one = args.cores.split(",")[0]
    common = [
        "--dtype",
        args.dtype,
        "--max-total-tokens",
        "4096",
        "--max-running-requests",
        "16",
        "--log-level",
        "warning",
    ]
    configs = [
        Config("1 process, 1 core (tp 1 = dp 1)", ["--num-threads", "1"], one),
        Config("1 process, 2 threads", ["--num-threads", "2"], args.cores),
        Config("--tp-size 2 (1 core per rank)", ["--tp-size", "2"], args.cores),
        Config("--dp-size 2 (1 core per replica)", ["--dp-size", "2"], args.cores),
    ]
    rows = []
    for cfg in configs:
        os.sched_setaffinity(0, [int(c) for c in cfg.cores.split(",")])  # the server inherits it
        with local_server([*cfg.flags, *common]) as url:
            while "--dp-size" in cfg.flags and len(requests.get(f"{url}/workers", timeout=60).json()["workers"]) < 2:
                time.sleep(1)  # the router registers its replicas after its own start
            complete(url, PROMPTS[0], 4)  # warm-up (kernels, first allocations)
            before = internal_state(url) if "--tp-size" in cfg.flags else None
            c1 = run(url, 1, args.requests_c1, args.max_tokens)
            c16 = run(url, 16, args.requests_c16, args.max_tokens)
            comm = ""
            if before is not None:
                after = internal_state(url)
                steps = after["num_forwards"] - before["num_forwards"]
                t0, t1 = before["tp_comm"], after["tp_comm"]
                ar_ms = 1000 * (t1["all_reduce_seconds"] - t0["all_reduce_seconds"]) / steps
                ar_kib = (t1["all_reduce_bytes"] - t0["all_reduce_bytes"]) / steps / 1024
                bc_kib = (t1["broadcast_bytes"] - t0["broadcast_bytes"]) / steps / 1024
                calls = (t1["all_reduce_calls"] - t0["all_reduce_calls"]) / steps
                comm = f"{ar_ms:.2f} ms, {calls:.0f} all-reduces, {ar_kib:.0f} KiB + {bc_kib:.1f} KiB batch"
        os.sched_setaffinity(0, [int(c) for c in args.cores.split(",")])
        rows.append((cfg.name, c1, c16, comm))
        print(f"{cfg.name}: c1 {c1.tokens_per_s:.1f} tok/s, c16 {c16.tokens_per_s:.1f} tok/s {comm}", flush=True)
    print()
    print("| configuration | c=1 tok/s | c=16 tok/s | per forward step (tp 2, rank 0): all-reduce time, volume |")
    print("|---|---|---|---|")
    for name, c1, c16, comm in rows:
        print(f"| {name} | {c1.tokens_per_s:.1f} | {c16.tokens_per_s:.1f} | {comm or '-'} |")


if __name__ == "__main__":
    main()
