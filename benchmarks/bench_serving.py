"""Serving load generator in the style of SGLang's bench_serving: streaming /generate requests at a
sweep of concurrency levels, a markdown table of TTFT, inter-token latency and tokens/s.

    python benchmarks/bench_serving.py                                   # launches the default model
    python benchmarks/bench_serving.py --concurrency 1,4,16 --max-new-tokens 64
    python benchmarks/bench_serving.py --base-url http://127.0.0.1:30000 --request-rate 2

Prompts are the first turns of data/prompts/*.jsonl (DeepSpec's {"turns": [...]}), sent as
raw text with `ignore_eos` so every request generates exactly --max-new-tokens tokens. With the default
--request-rate inf each level keeps `concurrency` requests in flight; a finite rate sends them as a
Poisson process (at most `concurrency` in flight). Loopback only; every level is bounded in requests
(--requests-per-level) and time (--max-duration).

Columns: TTFT = request sent -> first token; ITL = gap between tokens (a gap shared by tokens that
arrive together is split among them); per-user tok/s = (tokens - 1) / (last token - first token),
averaged over requests; aggregate tok/s = all generated tokens / the level's wall time.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from sglang_dspark.launch_server import local_server

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "prompts"


@dataclass
class RequestResult:
    ttft: float  # s
    itls: list[float]  # s, one per token after the first
    tokens: int
    decode_time: float  # first token -> last token, s


@dataclass
class LevelResult:
    concurrency: int
    duration: float
    results: list[RequestResult] = field(default_factory=list)
    failures: int = 0


def load_prompts(data_dir: Path, datasets: list[str] | None, max_chars: int, seed: int) -> list[str]:
    files = [data_dir / f"{name}.jsonl" for name in datasets] if datasets else sorted(data_dir.glob("*.jsonl"))
    prompts = []
    for path in files:
        with open(path) as f:
            prompts += [json.loads(line)["turns"][0] for line in f if line.strip()]
    prompts = [p for p in prompts if len(p) <= max_chars]
    if not prompts:
        raise SystemExit(f"no prompts in {data_dir} (pass --data-dir / --datasets)")
    random.Random(seed).shuffle(prompts)
    return prompts


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load {url}: this benchmark only targets loopback servers")


def send(url: str, prompt: str, max_new_tokens: int, timeout: float) -> RequestResult:
    body = {
        "text": prompt,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True},
        "stream": True,
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    itls: list[float] = []
    with requests.post(f"{url}/generate", json=body, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            done = json.loads(line[len("data: ") :])["meta_info"]["completion_tokens"]
            new, tokens = done - tokens, done
            if new <= 0:
                continue
            if first is None:
                first = now
                itls += [0.0] * (new - 1)  # tokens that came with the first one
            else:
                itls += [(now - last) / new] * new
            last = now
    if first is None:
        raise RuntimeError("the stream ended without tokens")
    return RequestResult(first - start, itls, tokens, last - first)


def run_level(
    url: str, prompts: list[str], concurrency: int, rate: float, args: argparse.Namespace, rng: random.Random
) -> LevelResult:
    level = LevelResult(concurrency, 0.0)
    lock = threading.Lock()
    start = time.perf_counter()

    def one(prompt: str) -> None:
        if time.perf_counter() - start > args.max_duration:
            return  # the level's time is up: requests not yet sent are dropped
        try:
            result = send(url, prompt, args.max_new_tokens, args.max_duration)
        except (requests.RequestException, RuntimeError):
            with lock:
                level.failures += 1
            return
        with lock:
            level.results.append(result)

    with ThreadPoolExecutor(concurrency) as pool:
        for prompt in prompts:
            pool.submit(one, prompt)
            if rate != float("inf"):
                time.sleep(rng.expovariate(rate))
    level.duration = time.perf_counter() - start
    return level


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(levels: list[LevelResult]) -> str:
    rows = [
        "| concurrency | requests | tokens/request | TTFT mean (ms) | TTFT p99 (ms) | ITL mean (ms) | ITL p99 (ms) "
        "| per-user tok/s | aggregate tok/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        res = lv.results
        if not res:
            rows.append(f"| {lv.concurrency} | 0 (failed: {lv.failures}) |" + " - |" * 7)
            continue
        ttft = [r.ttft * 1e3 for r in res]
        itl = [x * 1e3 for r in res for x in r.itls] or [0.0]
        per_user = statistics.mean((r.tokens - 1) / r.decode_time for r in res if r.decode_time > 0)
        tokens = sum(r.tokens for r in res)
        failed = f" (failed: {lv.failures})" if lv.failures else ""
        rows.append(
            f"| {lv.concurrency} | {len(res)}{failed} | {tokens / len(res):.0f} | {statistics.mean(ttft):.0f} "
            f"| {percentile(ttft, 0.99):.0f} | {statistics.mean(itl):.1f} | {percentile(itl, 0.99):.1f} "
            f"| {per_user:.1f} | {tokens / lv.duration:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server on loopback; default: launch one here")
    parser.add_argument("--server-args", default="", help="extra launch_server flags when launching")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf = all")
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: max(8, 2 * concurrency)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-duration", type=float, default=300.0, help="s per level (and per request)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", help="comma-separated file stems, e.g. gsm8k,mbpp (default: all)")
    parser.add_argument("--max-prompt-chars", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = load_prompts(
        args.data_dir, args.datasets.split(",") if args.datasets else None, args.max_prompt_chars, args.seed
    )
    rng = random.Random(args.seed)
    server = nullcontext(args.base_url) if args.base_url else local_server(args.server_args.split())
    with server as url:
        require_loopback(url)
        info = requests.get(f"{url}/server_info", timeout=60).json()
        send(url, prompts[0], 4, args.max_duration)  # warm-up
        results, offset = [], 1
        for c in levels:
            n = args.requests_per_level or max(8, 2 * c)
            batch = [prompts[(offset + i) % len(prompts)] for i in range(n)]
            offset += n
            results.append(run_level(url, batch, c, args.request_rate, args, rng))
            print(f"concurrency {c}: {len(results[-1].results)} requests in {results[-1].duration:.1f} s", flush=True)
    model = info.get("model_path") or "default model (SmolLM2-135M-Instruct)"
    print(f"\n{model}, dtype {info['dtype']}, {args.max_new_tokens} new tokens/request, rate {args.request_rate}\n")
    print(table(results))


if __name__ == "__main__":
    main()
