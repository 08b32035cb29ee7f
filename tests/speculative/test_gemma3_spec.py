"""Speculative decoding on a tiny random Gemma 3 (sliding window 8) in the runtime: float32 greedy outputs equal
plain decoding, one request at a time and eight at once, with and without a JSON schema. The verify rows of
every round attend through the sliding window of each request's position, and the outputs run far past it."""

from __future__ import annotations

import json

import pytest

from sglang_dspark import Engine

PROMPTS = [
    "Write a python class for a linked list with insert, delete and print methods.",
    "List the first 10 US states as a JSON array of objects with name and capital.",
    "Repeat after me three times: the quick brown fox jumps over the lazy dog.",
]
GREEDY = {"temperature": 0, "max_new_tokens": 32}
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"states": {"type": "array", "items": {"type": "string"}}},
        "required": ["states"],
    }
)


def engine(model_path: str, **kwargs) -> Engine:
    return Engine(model_path=model_path, dtype="float32", max_total_tokens=4096, log_level="warning", **kwargs)


@pytest.fixture(scope="module")
def plain(gemma3_dir):
    """The prompts' token ids and plain greedy outputs without and with the schema."""
    base = engine(gemma3_dir[0])
    try:
        ids = [
            base.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for p in PROMPTS
        ]
        outputs = {
            schema: [base.generate(input_ids=i, sampling_params=params(schema))["output_ids"] for i in ids]
            for schema in (False, True)
        }
    finally:
        base.shutdown()
    return ids, outputs


def params(schema: bool) -> dict:
    return {**GREEDY, "json_schema": SCHEMA} if schema else GREEDY


@pytest.mark.parametrize("schema", [False, True], ids=["plain", "json"])
@pytest.mark.parametrize("algorithm", ["NGRAM", "DSPARK"])
def test_greedy_speculation_on_gemma3_is_lossless(gemma3_dir, plain, sps_path, algorithm, schema):
    model, drafter = gemma3_dir
    ids, outputs = plain
    expected = outputs[schema]
    assert all(len(e) > 16 for e in expected)  # well past the window of 8
    extra = {"speculative_draft_model_path": drafter} if algorithm == "DSPARK" else {}
    spec = engine(model, speculative_algorithm=algorithm, speculative_dspark_sps_table_path=sps_path, **extra)
    try:
        one = [spec.generate(input_ids=i, sampling_params=params(schema)) for i in ids]
        assert [r["output_ids"] for r in one] == expected
        batch = spec.generate(input_ids=(ids * 3)[:8], sampling_params=params(schema))
        assert [r["output_ids"] for r in batch] == (expected * 3)[:8]
        assert sum(r["meta_info"]["spec_num_correct_drafts"] for r in one + batch) > 0  # multi-token verify rows
        assert spec.kv_usage().in_use == 0
    finally:
        spec.shutdown()
