"""The drafters shipped as package data: found by their target's name, refused by other targets, and (where the
target is installed) lossless with the target they were trained for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_dspark import Engine
from sglang_dspark.models.model_source import ModelLoadError
from sglang_dspark.models.qwen_coder_assembly import qwen_coder_gguf
from sglang_dspark.speculative.dspark.checkpoint import PACKAGED_DIR, packaged_drafter
from sglang_dspark.training.data import chat_prompt_ids

QWEN_DIR = PACKAGED_DIR / "qwen2.5-coder-0.5b-instruct"


def qwen_gguf():
    try:
        return qwen_coder_gguf()
    except ModelLoadError as e:
        pytest.skip(f"Qwen2.5-Coder is not installed: {e}")


def test_a_shipped_drafter_is_found_by_its_targets_model_directory():
    assert packaged_drafter("qwen2.5-coder-0.5b-instruct-awq.Q4_K_M-eb142f2a8fee") == QWEN_DIR
    assert packaged_drafter("SmolLM2-135M-Instruct-Q4_1-0123") == PACKAGED_DIR / "smollm2-135m-instruct"
    assert packaged_drafter("gemma-3-270m-q4_k_m-0123") is None


def test_the_qwen_drafter_on_another_target_fails_at_start_up_naming_both_sizes(sps_path):
    with pytest.raises(ValueError, match=r"vocab_size 151936 \(target 49152\), hidden_size 896 \(target 576\)"):
        Engine(
            log_level="warning",
            speculative_algorithm="DSPARK",
            speculative_draft_model_path=str(QWEN_DIR),
            speculative_dspark_sps_table_path=sps_path,
        )


def test_qwen_coder_with_its_shipped_drafter_is_lossless(sps_path):
    """Greedy DSPARK output (the shipped drafter, chosen by the target's name) equals plain greedy output, one
    request at a time, two together and under a JSON schema, in the quantized path."""
    path = str(qwen_gguf())
    lines = (Path(__file__).resolve().parents[2] / "data/prompts/mbpp.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["turns"][0] for line in lines[:2]]
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    greedy = {"temperature": 0, "max_new_tokens": 48}
    outputs = {}
    for algorithm in (None, "DSPARK"):
        spec = {} if algorithm is None else {"speculative_algorithm": algorithm}
        engine = Engine(model_path=path, log_level="warning", speculative_dspark_sps_table_path=sps_path, **spec)
        try:
            ids = [chat_prompt_ids(engine.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
            one = [engine.generate(input_ids=i, sampling_params=greedy)["output_ids"] for i in ids]
            both = engine.generate(input_ids=ids, sampling_params=greedy)
            constrained = engine.generate(input_ids=ids, sampling_params=dict(greedy, json_schema=json.dumps(schema)))
            outputs[algorithm] = one + [o["output_ids"] for o in both + constrained]
            if algorithm is not None:  # the drafter drafted, and some drafts were accepted
                assert sum(o["meta_info"].get("spec_num_correct_drafts", 0) for o in both + constrained) > 0
        finally:
            engine.shutdown()
    assert outputs["DSPARK"] == outputs[None]
