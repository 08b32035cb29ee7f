"""Tool calls with `tool_choice: required` against function schemas from data/json_schemas.

    python benchmarks/bench_tool_calls.py                      # 50 functions, plain and DSPARK servers
    python benchmarks/bench_tool_calls.py --calls 10 --algorithms none --concurrency 1

For each function (`sglang_dspark.evaluation.tool_call_schemas`: object schemas xgrammar enforces, round
robin over the set's splits) one chat request through the real `openai` client: the default model, fp32,
greedy, `max_tokens` 512, the function as the only tool, `tool_choice` "required",
`parallel_tool_calls` false; once non-streamed and once streamed (tool_calls deltas assembled as OpenAI
clients do). A call counts as valid when it is exactly one call of the function whose arguments parse
and validate with `jsonschema`. Servers: plain decoding and `--speculative-algorithm DSPARK` (the shipped
drafter); a DSPARK call must also equal the plain one (greedy fp32 is lossless and does not depend on
batching). `--concurrency` requests run at once. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import openai

from sglang_dspark.evaluation.tool_call_schemas import SchemaFunction, call_problem, schema_functions
from sglang_dspark.launch_server import local_server

FLAGS = ["--dtype", "float32", "--random-seed", "0", "--log-level", "warning"]


def assemble(chunks) -> list[dict]:
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"function": {"name": "", "arguments": ""}})
                call["function"]["name"] += d.function.name or ""
                call["function"]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def run_calls(client: openai.OpenAI, function: SchemaFunction, stream: bool) -> list[dict]:
    """The calls of one request as {"function": {"name", "arguments"}} (call ids are random: not compared)."""
    kwargs = {"model": "any", "temperature": 0, "max_tokens": 512, **function.required_call()}
    if stream:
        return assemble(client.chat.completions.create(**kwargs, stream=True))
    message = client.chat.completions.create(**kwargs).choices[0].message
    calls = message.tool_calls or []
    return [{"function": {"name": c.function.name, "arguments": c.function.arguments}} for c in calls]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--algorithms", default="none,DSPARK", help="comma-separated; none = plain decoding")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    functions = schema_functions(args.calls)
    rows, reference, failures = [], {}, []
    for algorithm in args.algorithms.split(","):
        flags = FLAGS if algorithm == "none" else [*FLAGS, "--speculative-algorithm", algorithm]
        with tempfile.TemporaryDirectory() as tmp, local_server(flags, Path(tmp) / "server.log") as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=1800)
            for stream in (False, True):
                valid = same = 0
                start = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(pool.map(run_calls, repeat(client), functions, repeat(stream)))
                seconds = time.perf_counter() - start
                for function, calls in zip(functions, results):
                    problem = call_problem(function, calls)
                    valid += problem is None
                    if problem is not None:
                        failures.append(f"{algorithm} stream={stream} {function.name}: {problem}")
                    key = (function.name, stream)
                    reference.setdefault(key, calls)
                    same += reference[key] == calls
                rows.append((algorithm, stream, valid, same, seconds))
                print(f"{algorithm} stream={stream}: {valid}/{len(functions)} valid", file=sys.stderr, flush=True)
    n, at_once = len(functions), args.concurrency
    print(f"| server | streamed | valid calls | equal to plain | seconds ({n} calls, {at_once} at once) |")
    print("|---|---|---:|---:|---:|")
    for algorithm, stream, valid, same, seconds in rows:
        print(f"| {algorithm} | {'yes' if stream else 'no'} | {valid}/{n} | {same}/{n} | {seconds:.0f} |")
    for failure in failures:
        print(f"- {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
