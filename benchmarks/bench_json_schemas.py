"""Structured output on 280 real JSON schemas (JSONSchemaBench subset), per grammar backend.

    nohup python benchmarks/bench_json_schemas.py > /tmp/bench_json.log 2>&1 &   # all, resumable
    python benchmarks/bench_json_schemas.py --backends xgrammar --limit 20
    python benchmarks/bench_json_schemas.py --table-only                       # rebuild the table

For each schema: default model, greedy, ``max_new_tokens`` 1024, the prompt asks for a JSON object
following the schema. Outcomes: ``compile_error`` (the 400 the server would send, with its reason),
``valid`` (finished with a stop and validates with ``jsonschema``), ``invalid`` (finished but does not
validate: must never happen), ``truncated`` (hit the token limit; checked to be a JSON-object prefix by
an independent whitespace-flexible llguidance any-object grammar), ``bad_prefix`` (must never happen).
Results go to a JSONL file, one line per (backend, schema), so an interrupted run resumes; the
markdown table is rebuilt from it at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import llguidance
import llguidance.hf

from sglang_dspark import Engine
from sglang_dspark.grammar import Constraint, GrammarError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "json_schemas" / "jsonschemabench_subset.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "json_schemas.jsonl"
OUTCOMES = ("compile_error", "valid", "invalid", "truncated", "bad_prefix")


def prompt_ids(tokenizer, schema: dict) -> list[int]:
    message = f"Generate a JSON object that follows this JSON schema:\n{json.dumps(schema)}"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


class PrefixChecker:
    """Is a text a prefix of some JSON object? (llguidance, any whitespace: independent of the backends'
    compact-JSON grammars.)"""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}')
        self.template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def __call__(self, text: str) -> bool:
        matcher = self.template.deep_copy()
        tokens = self.tokenizer.tokenize_str(text)
        return matcher.try_consume_tokens(tokens) == len(tokens)


def judge(schema: dict, out: dict, prefix_ok: PrefixChecker) -> str:
    reason = out["meta_info"]["finish_reason"]["type"]
    if reason == "stop":
        try:
            value = json.loads(out["text"])
            jsonschema.validators.validator_for(schema)(schema).validate(value)
        except (ValueError, jsonschema.ValidationError):
            return "invalid"
        return "valid"
    return "truncated" if prefix_ok(out["text"]) else "bad_prefix"


def compile_row(compiler, rec: dict) -> dict:
    """Compile a schema as the server would (cached for the generate call): the row's compile fields."""
    t = time.perf_counter()
    try:
        compiler.compile(Constraint.from_fields(json_schema=json.dumps(rec["schema"])))
        row = {}
    except GrammarError as e:
        row = {"outcome": "compile_error", "reason": str(e)}
    return {**row, "compile_s": round(time.perf_counter() - t, 3)}


def run_backend(backend: str, records: list[dict], args, done: set, out_file) -> None:
    todo = [r for r in records if (backend, r["id"]) not in done]
    if not todo:
        return
    engine = Engine(
        grammar_backend=backend,
        random_seed=0,
        max_total_tokens=65536,
        max_running_requests=args.running,
        chunked_prefill_size=1024,
        num_threads=args.num_threads,
    )
    prefix_ok = PrefixChecker(engine.tokenizer)
    compiler = engine.scheduler.grammars.compiler
    for start in range(0, len(todo), args.chunk):  # continuous batching within a chunk
        group = todo[start : start + args.chunk]
        with ThreadPoolExecutor(compiler.max_workers) as lanes:  # as many as compile threads: none queues
            rows = dict(zip([r["id"] for r in group], lanes.map(lambda r: compile_row(compiler, r), group)))
        runnable = [rec for rec in group if "outcome" not in rows[rec["id"]]]
        if runnable:
            params = [
                {"temperature": 0, "max_new_tokens": args.max_new_tokens, "json_schema": json.dumps(r["schema"])}
                for r in runnable
            ]
            t = time.perf_counter()
            outs = engine.generate(
                input_ids=[prompt_ids(engine.tokenizer, r["schema"]) for r in runnable], sampling_params=params
            )
            elapsed = time.perf_counter() - t
            for rec, out in zip(runnable, outs):
                rows[rec["id"]].update(
                    outcome=judge(rec["schema"], out, prefix_ok),
                    completion_tokens=out["meta_info"]["completion_tokens"],
                    chunk_s=round(elapsed, 2),
                    text=out["text"],
                )
        for rec in group:
            row = {"backend": backend, "id": rec["id"], **rows[rec["id"]]}
            out_file.write(json.dumps(row) + "\n")
            out_file.flush()
            print(f"{backend:10} {rec['id']:60} {row['outcome']:13} {row.get('reason', '')[:100]}", flush=True)
    engine.shutdown()


def write_table(results: Path, table: Path) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by_backend: dict[str, Counter] = {}
    tokens: Counter = Counter()
    for r in rows:
        by_backend.setdefault(r["backend"], Counter())[r["outcome"]] += 1
        tokens[r["backend"]] += r.get("completion_tokens", 0)
    lines = [
        "| backend | schemas | compile errors (400) | finished + valid | finished + invalid | truncated "
        "(valid prefix) | bad prefix | generated tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, c in sorted(by_backend.items()):
        lines.append(
            f"| {backend} | {sum(c.values())} | {c['compile_error']} | {c['valid']} | {c['invalid']} | "
            f"{c['truncated']} | {c['bad_prefix']} | {tokens[backend]} |"
        )
    reasons: Counter = Counter()
    for r in rows:
        if r["outcome"] == "compile_error":
            reasons[(r["backend"], r["reason"].removeprefix("invalid json_schema: ")[:100])] += 1
    lines += ["", "Most frequent compile-error reasons:", ""]
    lines += [f"- {b}: {msg} ({n})" for (b, msg), n in reasons.most_common(12)]
    text = "\n".join(lines) + "\n"
    table.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--backends", default="xgrammar,llguidance,outlines")
    parser.add_argument("--limit", type=int, default=None, help="first N schemas only")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--running", type=int, default=16, help="schemas decoded together (max running requests)")
    parser.add_argument("--chunk", type=int, default=64, help="schemas per generate call (the unit of resuming)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    records = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        done = set()
        if args.out.exists():
            done = {(r["backend"], r["id"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
        with open(args.out, "a") as out_file:
            for backend in args.backends.split(","):
                run_backend(backend, records, args, done, out_file)
    print(write_table(args.out, args.out.with_suffix(".md")))


if __name__ == "__main__":
    main()
