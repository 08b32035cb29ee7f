"""An exception in one request's own processing fails that request only; the batch goes on.

Faults are injected into one real request at a time (its grammar object, its random generator) or into the
drafter; the other requests must finish with the tokens they get alone (deterministic inference)."""

from __future__ import annotations

import json

import pytest

from sglang_dspark import Engine
from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.sampling.sampling_params import SamplingParams

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
PROMPTS = ["Write a haiku about rain.", "A JSON object:", "Count from one to ten."]


def engine(algorithm: str | None) -> Engine:
    return Engine(
        speculative_algorithm=algorithm, enable_deterministic_inference=True, max_total_tokens=4096, log_level="error"
    )


def params(i: int) -> dict:
    """Request i's sampling params: the free-text requests run their 24 tokens (all three must be running at
    once for the faults to be injected), the JSON one until its object closes."""
    extra = {"json_schema": SCHEMA} if i == 1 else {"ignore_eos": True}
    return {"temperature": 0, "max_new_tokens": 24, **extra}


def run(eng: Engine, inject) -> dict[str, dict]:
    """The three requests together; ``inject(reqs_by_rid)`` runs once all of them are running."""
    scheduler = eng.scheduler
    for i, prompt in enumerate(PROMPTS):
        sp = SamplingParams.from_dict(params(i))
        ids = eng.tokenizer.encode(prompt)
        scheduler.add_request(TokenizedGenerateReqInput(rid=f"r{i}", input_ids=ids, sampling_params=sp))
    results: dict[str, dict] = {}
    injected = False
    while scheduler.has_work():
        if not injected and len(scheduler.running) == 3:
            inject({r.rid: r for r in scheduler.running})
            injected = True
        for out in scheduler.step():
            res = results.setdefault(out.rid, {"ids": []})
            res["ids"] += out.new_output_ids
            res["finish"] = out.finished_reason
    assert injected
    return results


def raise_boom(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.mark.parametrize("algorithm", [None, "DSPARK"], ids=["plain", "dspark"])
def test_a_failing_grammar_fails_its_request_only(algorithm):
    eng = engine(algorithm)
    try:
        alone = [eng.generate(p, params(i))["output_ids"] for i, p in enumerate(PROMPTS)]
        eng.flush_cache()

        def inject(reqs):
            reqs["r1"].grammar.accept_token = raise_boom

        results = run(eng, inject)
        assert results["r1"]["finish"]["type"] == "abort"
        assert "RuntimeError: boom" in results["r1"]["finish"]["message"]
        assert [results[r]["ids"] for r in ("r0", "r2")] == [alone[0], alone[2]]
        assert eng.scheduler.kv_usage().in_use == 0
    finally:
        eng.shutdown()


def test_a_failing_sampler_fails_its_request_only():
    """A broken random generator makes the batched sampling raise: each request then samples alone."""
    eng = engine(None)
    try:
        alone = [eng.generate(p, params(i))["output_ids"] for i, p in enumerate(PROMPTS)]
        eng.flush_cache()

        def inject(reqs):
            reqs["r2"].sampling_params.temperature = 1.0  # samples with its generator, which is broken
            reqs["r2"].generator = object()

        results = run(eng, inject)
        assert results["r2"]["finish"]["type"] == "abort"
        assert [results[r]["ids"] for r in ("r0", "r1")] == [alone[0], alone[1]]
    finally:
        eng.shutdown()


def test_a_failing_drafter_decodes_without_drafts():
    eng = engine("DSPARK")
    try:
        alone = [eng.generate(p, params(i))["output_ids"] for i, p in enumerate(PROMPTS)]
        eng.flush_cache()

        def inject(reqs):
            eng.scheduler.spec.worker.draft = raise_boom

        results = run(eng, inject)
        assert [results[f"r{i}"]["ids"] for i in range(3)] == alone
        assert all(results[f"r{i}"]["finish"]["type"] != "abort" for i in range(3))
    finally:
        eng.shutdown()
