"""Structured output through the scheduler, on the real default model (float32 for exact comparisons)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.grammar import Constraint, allocate_bitmask
from sglang_dspark.managers.grammar_manager import GrammarManager
from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.managers.spec_grammar import SpecGrammar, VerifyDraft
from sglang_dspark.sampling.sampling_params import SamplingParams

SCHEMAS = Path(__file__).resolve().parents[2] / "data" / "json_schemas" / "jsonschemabench_subset.jsonl"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},  # no minimum/maximum: outlines cannot enforce them (a 400 there)
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
PHONE = r"\(\d{3}\) \d{3}-\d{4}"


@pytest.fixture(scope="module")
def engine():
    eng = Engine(dtype="float32", max_total_tokens=8192, chunked_prefill_size=256, random_seed=0)
    yield eng
    eng.shutdown()


def use_backend(engine, name: str, **overrides) -> None:
    """Swap the scheduler's grammar side (the model stays loaded)."""
    sched = engine.scheduler
    args = dataclasses.replace(sched.args, grammar_backend=name, **overrides)
    sched.grammars = GrammarManager(args, sched.tokenizer, sched.vocab_size, sched.eos_ids)


def chat(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


def greedy(max_new_tokens: int = 64, **constraint) -> dict:
    return {"temperature": 0, "max_new_tokens": max_new_tokens, **constraint}


def test_real_schemas_validate(engine):
    use_backend(engine, "xgrammar")
    records = [json.loads(line) for line in SCHEMAS.read_text().splitlines()]
    picked = [r for r in records if r["split"] == "Glaiveai2K"][:3]
    outs = engine.generate(
        [chat(engine, "Generate JSON for this schema: " + json.dumps(r["schema"])) for r in picked],
        [greedy(128, json_schema=json.dumps(r["schema"])) for r in picked],
    )
    for rec, out in zip(picked, outs):
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            jsonschema.validate(json.loads(out["text"]), rec["schema"])
        else:
            assert out["meta_info"]["completion_tokens"] == 128


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "outlines"])
def test_regex_and_schema_per_backend(engine, backend):
    use_backend(engine, backend)
    outs = engine.generate(
        [chat(engine, "What is the phone number of the bakery?"), chat(engine, "Describe a person.")],
        [greedy(regex=PHONE), greedy(json_schema=json.dumps(PERSON))],
    )
    assert re.fullmatch(PHONE, outs[0]["text"]), outs[0]["text"]
    assert outs[0]["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2}
    jsonschema.validate(json.loads(outs[1]["text"]), PERSON)


def test_ebnf(engine):
    ebnf = 'root ::= "The answer is " answer "."\nanswer ::= "yes" | "no" | [0-9]+'
    texts = []
    for backend in ("xgrammar", "llguidance"):
        use_backend(engine, backend, disable_jump_forward=True)
        texts.append(engine.generate(chat(engine, "Is the sky blue?"), greedy(ebnf=ebnf))["text"])
    assert re.fullmatch(r"The answer is (yes|no|[0-9]+)\.", texts[0])
    assert texts[0] == texts[1]


def test_logprobs_are_those_of_the_masked_distribution(engine):
    """A constrained request reports the model's distribution over the tokens its grammar allows: every
    alternative is an allowed token, and the position's logprobs renormalize over them (the same prompt
    unconstrained reports the raw distribution, whose alternatives the grammar would forbid)."""
    use_backend(engine, "xgrammar", disable_jump_forward=True)
    prompt = chat(engine, "Is the sky blue? Answer in one word.")
    k = 20
    constrained, free = (
        engine.generate(prompt, greedy(1, **extra), return_logprob=True, top_logprobs_num=k)["meta_info"]
        for extra in ({"regex": "(yes|no|maybe)"}, {})
    )
    top = constrained["output_top_logprobs"][0]
    texts = [engine.tokenizer.decode([tok]) for _, tok, *_ in top]
    assert 0 < len(top) < k  # fewer allowed tokens than asked for: only the allowed ones are listed
    assert all("yes".startswith(t) or "no".startswith(t) or "maybe".startswith(t) for t in texts), texts
    assert sum(math.exp(lp) for lp, *_ in top) == pytest.approx(1.0, abs=1e-4)
    chosen_lp, chosen = constrained["output_token_logprobs"][0][:2]
    assert chosen == top[0][1] and chosen_lp == pytest.approx(top[0][0])
    free_texts = [engine.tokenizer.decode([tok]) for _, tok, *_ in free["output_top_logprobs"][0]]
    assert len(free_texts) == k and set(free_texts) - set(texts)  # unconstrained: the raw distribution


def test_greedy_identical_across_backends(engine):
    """Without jump-forward, equivalent grammars give identical greedy output on xgrammar and outlines.
    llguidance matches on the regex; on JSON it allows only the canonical tokens of text the grammar
    forces ('{"' but not '{' followed by '"'), so greedy takes another, still valid, path there. (With
    jump-forward all may differ: xgrammar tokenizes its forced string, llguidance forces canonical
    tokens, outlines forces single-token states only.)"""
    prompts = [chat(engine, "What is the phone number of the bakery?"), chat(engine, "Describe a person.")]
    params = [greedy(regex=PHONE), greedy(json_schema=json.dumps(PERSON))]
    results = {}
    for backend in ("xgrammar", "llguidance", "outlines"):
        use_backend(engine, backend, disable_jump_forward=True)
        results[backend] = engine.generate(prompts, params)
    ids = {backend: [o["output_ids"] for o in outs] for backend, outs in results.items()}
    assert ids["xgrammar"] == ids["outlines"]
    assert ids["llguidance"][0] == ids["xgrammar"][0]
    jsonschema.validate(json.loads(results["llguidance"][1]["text"]), PERSON)


def test_jump_forward_skips_model_steps(engine):
    prompt, params = chat(engine, "Describe a person."), greedy(json_schema=json.dumps(PERSON))
    stats = engine.scheduler.stats
    counts = {}
    for disable in (True, False):
        use_backend(engine, "xgrammar", disable_jump_forward=disable)
        before, jumped = stats.num_forwards, stats.jump_forward_tokens
        out = engine.generate(prompt, params)
        jsonschema.validate(json.loads(out["text"]), PERSON)
        counts[disable] = (stats.num_forwards - before, stats.jump_forward_tokens - jumped)
    assert counts[True][1] == 0
    assert counts[False][1] >= 5  # '{"name":"', '","age":', ...
    assert counts[False][0] < counts[True][0]


def test_bad_grammars_are_rejected_and_serving_goes_on(engine):
    use_backend(engine, "xgrammar")
    bad = [
        ({"json_schema": '{"type": "objekt"}'}, "objekt"),
        ({"json_schema": '{"type": "array", "uniqueItems": true}'}, "uniqueItems"),
        ({"regex": "(a"}, "parenthesis"),
        ({"ebnf": "root ::= missing"}, "missing"),
    ]
    for constraint, reason in bad:
        with pytest.raises(ValueError, match=reason):
            engine.generate("Hi", greedy(4, **constraint))
    assert engine.generate("Hi", greedy(4, regex="(yes|no)"))["text"] in ("yes", "no")
    use_backend(engine, "none")
    with pytest.raises(ValueError, match="grammar-backend none"):
        engine.generate("Hi", greedy(4, regex="a"))


def test_catastrophic_regex_times_out(engine):
    """outlines builds a DFA over the whole vocabulary: (a|b)*a(a|b){16} takes tens of seconds (2^16
    states); the request fails at the time limit, its compile process is killed, and the engine serves."""
    use_backend(engine, "outlines", grammar_compile_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ValueError, match="took longer than the 1 s limit"):
        engine.generate("Hi", greedy(4, regex="(a|b)*a(a|b){16}"))
    assert time.monotonic() - start < 3.0
    assert engine.scheduler.grammars.compiler.backend.processes._idle == []  # killed, not left running
    assert engine.generate("Hi", greedy(3))["meta_info"]["completion_tokens"] == 3


def test_memory_hungry_regex_fails_and_the_engine_serves(engine):
    """[a-z ]{0,2000}: 2000 outlines DFA states of ~1 MB each; the compile process dies at its memory limit."""
    use_backend(engine, "outlines", grammar_compile_memory_limit=0.25)
    with pytest.raises(ValueError, match="0.25 GiB memory limit"):
        engine.generate("Hi", greedy(4, regex="[a-z ]{0,2000}"))
    assert engine.generate("Hi", greedy(4, regex="(yes|no)"))["text"] in ("yes", "no")


def test_scheduler_compiles_without_blocking(engine):
    """add_request never waits: the constrained request compiles while the other decodes; a grammar
    that fails there finishes its request with an abort naming the reason."""
    use_backend(engine, "xgrammar")
    sched = engine.scheduler
    ids = engine.tokenizer.encode(chat(engine, "Say something."))

    def req(rid, **constraint):
        return TokenizedGenerateReqInput(rid, ids, SamplingParams(**greedy(16, **constraint)))

    sched.add_request(req("free"))
    sched.add_request(req("json", json_schema=json.dumps({"type": "object", "properties": {"x": {"enum": [1, 2]}}})))
    sched.add_request(req("broken", regex="(a"))
    assert len(sched.grammars.queue) == 2
    finished = {}
    while sched.has_work():
        for out in sched.step():
            if out.finished_reason:
                finished[out.rid] = out.finished_reason
    assert finished["broken"]["type"] == "abort" and "parenthesis" in finished["broken"]["message"]
    assert finished["json"]["type"] == "stop" and finished["free"]["type"] in ("stop", "length")


def test_grammar_overrides_min_new_tokens(engine):
    use_backend(engine, "xgrammar")
    out = engine.generate("Hi", {**greedy(8, regex="(yes|no)"), "min_new_tokens": 5})
    assert out["text"] in ("yes", "no") and out["meta_info"]["finish_reason"]["type"] == "stop"


def test_valid_draft_carries_forced_tokens_and_goes_on_after_them(engine):
    """After a draft token that makes the grammar force tokens (jump-forward), the draft carries exactly the
    forced tokenization (marked forced) and goes on only if its next tokens are those; if they do not fit
    the limit, or jump-forward is off, it stops before that token. The grammar state is left as it was."""
    use_backend(engine, "xgrammar")
    grammars, tok = engine.scheduler.grammars, engine.tokenizer
    grammar = grammars.compiler.make_grammar(
        grammars.compiler.compile(Constraint.from_fields(json_schema=json.dumps(PERSON)))
    )
    grammar.accept_tokens(grammar.jump_forward_tokens())  # '{"name":"' as the scheduler appends it
    req = SimpleNamespace(grammar=grammar, return_logprob=False)
    name = tok.encode('Al"', add_special_tokens=False)
    fork = grammar.fork()
    assert fork.accept_tokens(name) == len(name)
    run = fork.jump_forward_tokens()  # ',"age":'
    assert run
    age = tok.encode("3", add_special_tokens=False)
    mask_before = allocate_bitmask(1, grammars.vocab_size)
    grammar.fill_mask(mask_before, 0)

    spec = SpecGrammar(grammars)
    forced = list(range(len(name), len(name) + len(run)))
    assert spec.valid_draft(req, name + run + age, 64) == VerifyDraft(name + run + age, forced)
    # the draft's own continuation differs: stop after them
    assert spec.valid_draft(req, name + age, 64) == VerifyDraft(name + run, forced)
    assert spec.valid_draft(req, name + run + age, len(name) + len(run) - 1) == VerifyDraft(name[:-1])
    mask_after = allocate_bitmask(1, grammars.vocab_size)
    grammar.fill_mask(mask_after, 0)
    assert torch.equal(mask_before, mask_after)
    assert spec.valid_draft(SimpleNamespace(grammar=None), [5, 6, 7], 2) == VerifyDraft([5, 6])
    use_backend(engine, "xgrammar", disable_jump_forward=True)
    assert SpecGrammar(engine.scheduler.grammars).valid_draft(req, name + run + age, 64) == VerifyDraft(
        name + run + age
    )
