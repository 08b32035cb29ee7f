"""Cost of structured output: per-token mask µs per backend and constraint kind, mask application,
and constrained vs unconstrained tokens/s at batch 1 and 8 (with and without jump-forward).

    python benchmarks/bench_grammar.py                 # everything, default model (bf16)
    python benchmarks/bench_grammar.py --skip-engine   # grammar-only numbers (no model)

Prints markdown tables. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch
import xgrammar
from transformers import AutoTokenizer

from sglang_dspark.grammar import Constraint, ConstraintKind, allocate_bitmask, create_backend
from sglang_dspark.grammar.mask import banned_from_bitmask
from sglang_dspark.models.model_source import resolve_model_path

VOCAB, EOS = 49152, 2
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "email", "tags"],
    "additionalProperties": False,
}
PEOPLE = {"type": "array", "items": PERSON, "minItems": 4, "maxItems": 4}
ENGINE_SCHEMAS = {"people": PEOPLE, "person": PERSON}  # outlines-core cannot compile PEOPLE within 60 s
# (kind, constraint text, a text it matches)
WALKS = {
    "json_schema": (
        ConstraintKind.JSON_SCHEMA,
        json.dumps(PERSON),
        '{"name":"Ada Lovelace","age":36,"email":"ada@example.org","tags":["math","poetry"]}',
    ),
    "json_object": (ConstraintKind.JSON_OBJECT, "", '{"id":7,"items":[{"sku":"A-1","qty":2}],"paid":true}'),
    "regex": (
        ConstraintKind.REGEX,
        r"\d{4}-\d{2}-\d{2} [A-Z][a-z]+ (meeting|call) with [a-z ]+\.",
        "2024-05-17 Friday meeting with the design team.",
    ),
    "ebnf": (
        ConstraintKind.EBNF,
        'root ::= expr\nexpr ::= term ("+" term)*\nterm ::= [0-9]+ | "(" expr ")"',
        "(12+7)+(3+(40+2))+8",
    ),
}


def timed(fn, reps: int = 1) -> float:
    """Median seconds of ``reps`` calls (the median resists the other tenants' noise)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def walk_costs(backend, compiled, tokens: list[int]) -> tuple[float, float, float]:
    """Median s per fill_mask and per accept_token along ``tokens``; s per row of an 8-request batch fill."""
    grammar, bitmask = backend.make_grammar(compiled), allocate_bitmask(8, VOCAB)
    fills, accepts = [], []
    for tok in tokens:
        fills.append(timed(lambda: grammar.fill_mask(bitmask, 0)))
        accepts.append(timed(lambda: grammar.accept_token(tok)))  # noqa: B023 (called at once)
    grammars = [backend.make_grammar(compiled) for _ in range(8)]
    for g in grammars:
        g.accept_tokens(tokens[: len(tokens) // 2])
    batch = timed(lambda: backend.fill_masks(grammars, bitmask, range(8)), reps=21) / 8
    return statistics.median(fills), statistics.median(accepts), batch


def bench_masks(tokenizer, names: list[str]) -> None:
    print("\n## Per-token grammar cost (µs): fill_mask / accept_token, walking a matching text\n")
    print("| backend | kind | compile ms | tokens | fill_mask µs | accept µs | batch-8 fill µs/row |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        backend = create_backend(name, tokenizer, VOCAB, [EOS])
        for kind_name, (kind, text, sample) in WALKS.items():
            if name == "outlines" and kind == ConstraintKind.EBNF:
                print(f"| {name} | {kind_name} | - | - | unsupported | | |")
                continue
            t = time.perf_counter()
            compiled = backend.compile(Constraint(kind, text))
            compile_ms = (time.perf_counter() - t) * 1e3
            tokens = tokenizer.encode(sample, add_special_tokens=False)
            fill, accept, batch = walk_costs(backend, compiled, tokens)
            print(
                f"| {name} | {kind_name} | {compile_ms:.1f} | {len(tokens)} | {fill * 1e6:.1f} | "
                f"{accept * 1e6:.1f} | {batch * 1e6:.1f} |"
            )


def apply_costs(batch: int) -> list[float]:
    """s per call of each way to mask logits [batch, V] with a bitmask."""
    logits = torch.randn(batch, VOCAB)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, VOCAB // 32), dtype=torch.int32)
    shifts = torch.arange(32, dtype=torch.int32)

    def shift_unpack():
        allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).flatten(1).bool()
        return logits.masked_fill(~allowed, float("-inf"))

    cases = [
        lambda: logits.masked_fill(banned_from_bitmask(bitmask, VOCAB), float("-inf")),
        lambda: logits.clone().masked_fill_(banned_from_bitmask(bitmask, VOCAB), float("-inf")),
        lambda: xgrammar.apply_token_bitmask_inplace(logits.clone(), bitmask),
        shift_unpack,
    ]
    for case in cases:
        case()  # warm up
    return [timed(case, reps=100) for case in cases]


def bench_apply() -> None:
    print("\n## Applying a bitmask to fp32 logits [B, 49152] on CPU (µs per call)\n")
    print(
        "| B | ours: bitmask -> banned, masked_fill | same, in place on a copy | xgrammar cpu kernel (on a copy) | "
        "shift-unpack + masked_fill |"
    )
    print("|---:|---:|---:|---:|---:|")
    for batch in (1, 8):
        print(f"| {batch} | " + " | ".join(f"{c * 1e6:.0f}" for c in apply_costs(batch)) + " |")


class GrammarTimer:
    """Wall time spent in the scheduler's grammar work (masking logits, advancing, jump-forward)."""

    def __init__(self, grammars) -> None:
        self.seconds = 0.0
        for method in ("mask_logits", "advance"):
            setattr(grammars, method, self._timed(getattr(grammars, method)))

    def _timed(self, fn):
        def wrapper(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - start

        return wrapper


def bench_engine(names: list[str], new_tokens: int, num_threads: int, repeats: int, schema: str) -> None:
    from sglang_dspark import Engine
    from sglang_dspark.managers.grammar_manager import GrammarManager

    print(
        f"\n## Constrained vs unconstrained decoding (bf16, {num_threads} thread(s), best of {repeats}, "
        f"schema {schema.upper()}; tokens/s = completion tokens / wall time)\n"
    )
    print(
        "| backend | jump-forward | batch | constrained tok/s | unconstrained tok/s | ratio | grammar share of "
        "constrained time | forwards constrained / unconstrained | jump-forward tokens |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    engine = Engine(random_seed=0, num_threads=num_threads)
    sched = engine.scheduler
    prompts = [
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"List four {topic} as JSON objects with name, age, email and tags."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for topic in ("scientists", "painters", "chefs", "pilots", "poets", "sailors", "bakers", "doctors")
    ]
    engine.generate(prompts[:2], {"temperature": 0, "max_new_tokens": 8})  # warm up

    def run(group, params) -> tuple[float, list[int], int]:
        forwards = sched.stats.num_forwards
        start = time.perf_counter()
        outs = engine.generate(group, params)
        elapsed = time.perf_counter() - start
        return elapsed, [o["meta_info"]["completion_tokens"] for o in outs], sched.stats.num_forwards - forwards

    for name in names:
        for jump_forward in (False, True):
            args = dataclasses.replace(sched.args, grammar_backend=name, disable_jump_forward=not jump_forward)
            sched.grammars = GrammarManager(args, engine.tokenizer, sched.vocab_size, sched.eos_ids)
            timer = GrammarTimer(sched.grammars)
            for batch in (1, 8):
                group = prompts[:batch]
                params = {
                    "temperature": 0,
                    "max_new_tokens": new_tokens,
                    "json_schema": json.dumps(ENGINE_SCHEMAS[schema]),
                }
                try:  # compile outside the timing
                    engine.generate(group[:1], {**params, "max_new_tokens": 1})
                except ValueError as e:
                    print(f"| {name} | {'on' if jump_forward else 'off'} | {batch} | 400: {e} | | | | | |")
                    continue
                jumped, timer.seconds = sched.stats.jump_forward_tokens, 0.0
                c_times, u_times = [], []
                for _ in range(repeats):  # alternate, so both see the same neighbours on the machine
                    c_s, lengths, c_fwd = run(group, [params] * batch)
                    free = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
                    u_s, _, u_fwd = run(group, free)
                    c_times.append(c_s)
                    u_times.append(u_s)
                jumped = (sched.stats.jump_forward_tokens - jumped) // repeats
                share = timer.seconds / sum(c_times)
                c_rate, u_rate = sum(lengths) / min(c_times), sum(lengths) / min(u_times)
                print(
                    f"| {name} | {'on' if jump_forward else 'off'} | {batch} | {c_rate:.1f} | {u_rate:.1f} | "
                    f"{c_rate / u_rate:.2f} | {share:.1%} | {c_fwd} / {u_fwd} | {jumped} of {sum(lengths)} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="xgrammar,llguidance,outlines")
    parser.add_argument("--new-tokens", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--schema", choices=sorted(ENGINE_SCHEMAS), default="people", help="of the engine runs")
    parser.add_argument("--skip-grammar", action="store_true", help="only the engine throughput")
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch threads (1: on a busy shared machine, 2 threads stall)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    names = args.backends.split(",")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(None))
    if not args.skip_grammar:
        bench_masks(tokenizer, names)
        bench_apply()
    if not args.skip_engine:
        bench_engine(names, args.new_tokens, args.num_threads, args.repeats, args.schema)


if __name__ == "__main__":
    main()
