"""A/B of environment variables on plain decoding: batch-1 greedy tok/s of the Engine, every variant in a fresh
process (the variables act at import, e.g. OpenMP's), the variants taking turns round after round.

    python benchmarks/bench_env_ab.py --variant active:OMP_WAIT_POLICY=ACTIVE \
        --variant spin10M:GOMP_SPINCOUNT=10000000 --rounds 2

A variant is NAME:VAR=VALUE[,VAR=VALUE...]; "default" (the environment as it is) always runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
from sglang_dspark import Engine
prompts, new_tokens = json.loads(sys.argv[1]), int(sys.argv[2])
engine = Engine(log_level="warning", random_seed=0)
engine.generate(prompts[0], {"temperature": 0, "max_new_tokens": 16})  # warm-up
tokens, start = 0, time.perf_counter()
for p in prompts:
    out = engine.generate(p, {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True})
    tokens += out["meta_info"]["completion_tokens"]
print(json.dumps({"tok_s": tokens / (time.perf_counter() - start)}))
engine.shutdown()
"""
PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain how a hash map works.",
    "List five fruits and their colors.",
]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return name, env


def run_once(env: dict[str, str], new_tokens: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(PROMPTS), str(new_tokens)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="NAME:VAR=VALUE[,VAR=VALUE...]")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    variants = dict([("default", {}), *(parse_variant(v) for v in args.variant)])
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, env in variants.items():
            results[name].append(run_once(env, args.new_tokens))
            print(f"{name}: {results[name][-1]:.1f} tok/s", file=sys.stderr, flush=True)
    base = sum(results["default"]) / len(results["default"])
    print("| variant | tok/s per round | vs default |")
    print("|---|---|---:|")
    for name, values in results.items():
        mean = sum(values) / len(values)
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
