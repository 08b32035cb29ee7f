"""Speculative decoding on a tiny random Gemma 3 (sliding window 8) in the runtime: float32 greedy outputs equal
plain decoding, one request at a time and eight at once, with and without a JSON schema. The verify rows of
every round attend through the sliding window of each request's position, and the outputs run far past it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_drafter import make_drafter
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from sglang_dspark import Engine
from sglang_dspark.models.config import DecoderConfig
from sglang_dspark.models.gemma3 import Gemma3ForCausalLM as OurGemma3
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.speculative.dspark import save_drafter

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


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    """A 4-layer random Gemma 3 (sliding, sliding, global, sliding) in HF format with the default model's
    tokenizer, and an untrained DSpark drafter for it."""
    out = tmp_path_factory.mktemp("tiny_gemma3")
    tokenizer_dir = resolve_model_path(None)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=1024,
        architectures=["Gemma3ForCausalLM"],
    )
    hf = Gemma3ForCausalLM(cfg)
    hf.save_pretrained(out / "model", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(out / name, out / "model" / name)
    ours = OurGemma3(DecoderConfig.from_hf(cfg.to_dict()))
    ours.load_weights(hf.state_dict().items())
    drafter = save_drafter(make_drafter(ours), out / "drafter")
    return str(out / "model"), str(drafter)


@pytest.fixture(scope="module")
def sps_path(tmp_path_factory):
    """Flat to 8 tokens, then slower: the planner verifies several drafts per round."""
    path = tmp_path_factory.mktemp("sps") / "sps.json"
    path.write_text(
        json.dumps(
            {"sample_batch_tokens": [1, 8, 16, 64], "sample_steps_per_sec": [0.027, 0.0238, 0.0204, 0.010]}
            | {"max_batch_tokens": 64}
        )
    )
    return str(path)


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
