"""Load with disconnects, and the soak: mixed clients against a real server, checked for lost, changed or
duplicated output and for resources that outlive their requests.

    python -m sglang_dspark.check_load                   # 64 clients, on a server it starts (DSPARK, deterministic)
    python -m sglang_dspark.check_load --minutes 10      # the soak: rounds of load for 10 minutes, the server's
                                                         # resident memory and KV use sampled every 10 s
    python -m sglang_dspark.check_load --base-url http://127.0.0.1:30000   # a running server (loopback only)

Every client sends one of five kinds of request (``KINDS``: /generate plain, JSON schema and streamed;
/v1/completions streamed; /v1/chat/completions streamed with a JSON-schema response format) for one of a few
prompts, greedy. Before the load each (kind, prompt) runs alone once: its output is the reference. A third
of the clients (streaming ones) hang up after a random number of chunks. Every client that stays must
get its reference exactly, each streamed /generate chunk must extend the one before, and OpenAI deltas must
concatenate to the reference text (no chunk duplicated or missing). Afterwards the server's resource
counts (``/server_info``: requests, KV slots, table rows, grammar objects, drafter state, open HTTP
requests) must return to zero. Exact outputs under concurrency need ``--enable-deterministic-inference``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import psutil
import requests

from sglang_dspark.launch_server import start_local_server, stop

SERVER_FLAGS = [
    "--speculative-algorithm", "DSPARK", "--enable-deterministic-inference",
    "--max-total-tokens", "16384", "--log-level", "warning",
]  # fmt: skip
PROMPTS = [
    "Write a Python function that merges two sorted lists.",
    "Explain what a hash map is in three sentences.",
    "Give a short recipe for pancakes.",
    "Write a SQL query that counts orders per customer.",
]
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "steps": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "steps"],
}
KINDS = ("generate", "generate_json", "generate_stream", "completion_stream", "chat_json_stream")
IDLE_TIMEOUT_S = 120.0  # for the resource counts to come back to zero after the load


@dataclass(frozen=True)
class Job:
    kind: str
    prompt: str
    hang_up_after: int | None = None  # chunks read before closing the connection; None = read to the end


@dataclass
class Outcome:
    """What one client saw: the final output (token ids for /generate, text for OpenAI routes)."""

    status: int | None
    output: list[int] | str | None = None
    broken_stream: str | None = None  # why the chunks don't form one stream, if they don't
    hung_up: bool = False
    error: str | None = None


@dataclass
class LoadReport:
    requests: int = 0
    hung_up: int = 0
    errors_5xx: int = 0
    other_errors: list[str] = field(default_factory=list)
    mismatched: int = 0
    broken_streams: int = 0
    resources_after: dict[str, int] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        return not any(self.resources_after.values())

    @property
    def ok(self) -> bool:
        return not (self.errors_5xx or self.other_errors or self.mismatched or self.broken_streams) and self.idle


def request_body(job: Job, max_new_tokens: int) -> tuple[str, dict]:
    """(route, JSON body) of a job."""
    if job.kind.startswith("generate"):
        params = {"temperature": 0, "max_new_tokens": max_new_tokens}
        if job.kind == "generate_json":
            params["json_schema"] = json.dumps(SCHEMA)
        return "/generate", {"text": job.prompt, "sampling_params": params, "stream": job.kind.endswith("stream")}
    if job.kind == "completion_stream":
        body = {"prompt": job.prompt, "max_tokens": max_new_tokens}
        return "/v1/completions", {**body, "model": "default", "temperature": 0, "stream": True}
    fmt = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": SCHEMA}}
    messages = [{"role": "user", "content": job.prompt}]
    body = {"messages": messages, "max_tokens": max_new_tokens, "response_format": fmt}
    return "/v1/chat/completions", {**body, "model": "default", "temperature": 0, "stream": True}


def send(url: str, job: Job, max_new_tokens: int, timeout: float = 600.0) -> Outcome:
    route, body = request_body(job, max_new_tokens)
    try:
        with requests.post(url + route, json=body, stream=body["stream"], timeout=timeout) as r:
            if r.status_code != 200:
                return Outcome(r.status_code, error=r.text[:300])
            if not body["stream"]:
                return Outcome(200, output=r.json()["output_ids"])
            return read_stream(r, job)
    except requests.RequestException as e:
        return Outcome(None, error=f"{type(e).__name__}: {e}")


def read_stream(r: requests.Response, job: Job) -> Outcome:
    """Reads SSE events: cumulative /generate chunks must each extend the last, OpenAI deltas concatenate."""
    ids: list[int] = []
    text, chunks = "", 0
    for line in r.iter_lines(decode_unicode=True):
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            return Outcome(200, error=str(event["error"]))
        chunks += 1
        if job.kind == "generate_stream":
            new = event["output_ids"]
            if new[: len(ids)] != ids:
                return Outcome(200, broken_stream=f"chunk {chunks} does not extend the one before")
            ids = new
        else:
            choice = event["choices"][0]
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        if job.hang_up_after is not None and chunks >= job.hang_up_after:
            return Outcome(200, hung_up=True)
    return Outcome(200, output=ids if job.kind == "generate_stream" else text)


def reference_outputs(url: str, max_new_tokens: int) -> dict[tuple[str, str], list[int] | str]:
    """Each (kind, prompt) alone, one after another."""
    refs = {}
    for kind in KINDS:
        for prompt in PROMPTS:
            out = send(url, Job(kind, prompt), max_new_tokens)
            if out.output is None:
                raise RuntimeError(f"reference request {kind} {prompt!r} failed: {out.status} {out.error}")
            refs[kind, prompt] = out.output
    return refs


def make_jobs(clients: int, rng: random.Random) -> list[Job]:
    """Clients in the kinds' order, prompts at random; a third of all (streaming ones, chosen at random) hang
    up after 1-3 chunks."""
    kinds = [KINDS[i % len(KINDS)] for i in range(clients)]
    streams = [i for i, kind in enumerate(kinds) if kind.endswith("stream")]
    hang_up = set(rng.sample(streams, min(len(streams), clients // 3)))
    return [Job(kind, rng.choice(PROMPTS), rng.randint(1, 3) if i in hang_up else None) for i, kind in enumerate(kinds)]


def resources(url: str) -> dict[str, int]:
    return requests.get(url + "/server_info", timeout=60).json()["internal_states"][0]["resources"]


def wait_idle(url: str, timeout: float = IDLE_TIMEOUT_S) -> dict[str, int]:
    """The resource counts once they are all zero, or as they are when the time-out passes."""
    deadline = time.monotonic() + timeout
    counts = resources(url)
    while any(counts.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = resources(url)
    return counts


def run_load(
    url: str, clients: int, max_new_tokens: int, refs: dict[tuple[str, str], list[int] | str], seed: int = 0
) -> LoadReport:
    """One round: `clients` concurrent requests, then the resource counts once idle."""
    jobs = make_jobs(clients, random.Random(seed))
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda job: send(url, job, max_new_tokens), jobs))
    report = LoadReport(requests=len(jobs))
    for job, out in zip(jobs, outcomes, strict=True):
        if out.status is not None and out.status >= 500:
            report.errors_5xx += 1
        elif out.error is not None:
            report.other_errors.append(f"{job.kind}: {out.status} {out.error}")
        elif out.broken_stream is not None:
            report.broken_streams += 1
        elif out.hung_up:
            report.hung_up += 1
        elif out.output != refs[job.kind, job.prompt]:
            report.mismatched += 1
    report.resources_after = wait_idle(url)
    return report


@dataclass
class MemorySample:
    elapsed_s: float
    rss_mib: float  # the server's processes together
    kv_in_use: int
    kv_cached: int


def sample_memory(url: str, pid: int, start: float) -> MemorySample:
    proc = psutil.Process(pid)
    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    kv = requests.get(url + "/server_info", timeout=60).json()["internal_states"][0]["kv_usage"]
    return MemorySample(time.monotonic() - start, rss, kv["in_use"], kv["cached"])


def slope_per_minute(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per minute."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def soak(url: str, pid: int, minutes: float, clients: int, max_new_tokens: int, refs, interval_s: float = 10.0):
    """Rounds of run_load for `minutes`, memory sampled every `interval_s`; returns (reports, samples)."""
    start, samples, reports = time.monotonic(), [], []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(interval_s):
            samples.append(sample_memory(url, pid, start))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    seed = 0
    while time.monotonic() - start < minutes * 60:
        reports.append(run_load(url, clients, max_new_tokens, refs, seed))
        seed += 1
    stop.set()
    thread.join()
    return reports, samples


def print_report(reports: list[LoadReport]) -> None:
    total = LoadReport(
        requests=sum(r.requests for r in reports),
        hung_up=sum(r.hung_up for r in reports),
        errors_5xx=sum(r.errors_5xx for r in reports),
        other_errors=[e for r in reports for e in r.other_errors],
        mismatched=sum(r.mismatched for r in reports),
        broken_streams=sum(r.broken_streams for r in reports),
        resources_after=reports[-1].resources_after,
    )
    print("| rounds | requests | hung up | 5xx | other errors | mismatched | broken streams | idle after each round |")
    print("|---|---|---|---|---|---|---|---|")
    idle = sum(r.idle for r in reports)
    print(
        f"| {len(reports)} | {total.requests} | {total.hung_up} | {total.errors_5xx} | {len(total.other_errors)} "
        f"| {total.mismatched} | {total.broken_streams} | {idle} of {len(reports)} |"
    )
    print(f"resource counts after the last round: {total.resources_after}")
    for e in total.other_errors[:5]:
        print("error:", e)


def print_samples(samples: list[MemorySample]) -> None:
    print("\n| t (s) | server RSS (MiB) | KV in use | KV cached |")
    print("|---|---|---|---|")
    for s in samples:
        print(f"| {s.elapsed_s:.0f} | {s.rss_mib:.0f} | {s.kv_in_use} | {s.kv_cached} |")
    later = samples[len(samples) // 2 :]  # after the warm-up (allocator pools, radix cache filling)
    xs = [s.elapsed_s for s in later]
    print(
        f"\ntrend over the second half: RSS {slope_per_minute(xs, [s.rss_mib for s in later]):+.2f} MiB/min, "
        f"KV in use {slope_per_minute(xs, [s.kv_in_use for s in later]):+.1f} slots/min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --base-url and --minutes: the process to sample")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=0.0, help="soak for this long (0: one round)")
    parser.add_argument("--log", type=Path, help="the started server's log file")
    args = parser.parse_args()

    if args.base_url and args.minutes and not args.server_pid:
        parser.error("--minutes with --base-url needs --server-pid (the process whose memory to sample)")
    if args.base_url:
        if urlparse(args.base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--base-url must be a loopback address: this tool sends hundreds of requests")
        run(args, args.base_url, args.server_pid)
        return
    server = start_local_server([*SERVER_FLAGS, "--max-running-requests", str(max(64, args.clients))], args.log)
    try:
        run(args, server.url, server.proc.pid)
    finally:
        stop(server.proc)


def run(args: argparse.Namespace, url: str, pid: int | None) -> None:
    refs = reference_outputs(url, args.max_new_tokens)
    if args.minutes:
        reports, samples = soak(url, pid, args.minutes, args.clients, args.max_new_tokens, refs)
        print_report(reports)
        print_samples(samples)
    else:
        print_report([run_load(url, args.clients, args.max_new_tokens, refs)])


if __name__ == "__main__":
    main()
