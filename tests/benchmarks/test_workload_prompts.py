"""bench_spec's multi-turn and long-context prompts (benchmarks/workload_prompts.py), with the default model's
tokenizer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.training.data import chat_prompt_ids

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark_module(name: str):
    """A module of benchmarks/ (a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wp = load_benchmark_module("workload_prompts")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(None))


def test_conversations_alternate_sources_and_carry_the_answer() -> None:
    convs = wp.load_conversations(ROOT / "data" / "prompts", 7, max_chars=3000)
    assert len(convs) == 7
    assert convs[0].first.startswith("Write a python function")  # mbpp
    assert convs[1].first.startswith("Janet")  # gsm8k
    assert all(len(c.first) <= 3000 and c.second == wp.FOLLOW_UP for c in convs)
    assert [m["role"] for m in convs[0].messages()] == ["user"]
    chat = convs[0].messages("def f(): pass")
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[1]["content"] == "def f(): pass" and chat[2]["content"] == wp.FOLLOW_UP


def test_turn_two_starts_with_turn_one_and_its_answer(tokenizer) -> None:
    """The prefix the radix cache holds after turn 1 (its prompt, then the answer) starts turn 2's prompt."""
    conv = wp.load_conversations(ROOT / "data" / "prompts", 1, max_chars=3000)[0]
    first = chat_prompt_ids(tokenizer, conv.messages())
    answer = "def remove_occ(s, ch):\n    return s.replace(ch, '', 1)"
    second = chat_prompt_ids(tokenizer, conv.messages(answer))
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    assert second[: len(first) + len(answer_ids)] == first + answer_ids


@pytest.mark.parametrize("bucket", wp.CONTEXT_BUCKETS)
def test_long_prompts_fill_their_bucket(tokenizer, bucket: int) -> None:
    messages = wp.load_long_messages(tokenizer, bucket, len(wp.LONGCTX_MODULES))
    assert len(messages) == len(wp.LONGCTX_MODULES) == len(set(messages))
    for module, message in zip(wp.LONGCTX_MODULES, messages):
        tokens = len(chat_prompt_ids(tokenizer, [{"role": "user", "content": message}]))
        assert bucket - 128 <= tokens <= bucket, (module, tokens)
        assert message.endswith(wp.LONGCTX_INSTRUCTION.format(module=module))
    shorter = wp.long_message(tokenizer, "argparse", bucket // 2)
    code = shorter.removesuffix(wp.LONGCTX_INSTRUCTION.format(module="argparse")).rstrip().removesuffix("```")
    assert messages[0].startswith(code)  # every bucket cuts the same source: buckets differ in length only


def test_bucket_label() -> None:
    assert [wp.bucket_label(b) for b in (2048, 4096, 6144, 3000)] == ["2k", "4k", "6k", "3000"]


def test_module_source_of_a_package_and_of_a_missing_module() -> None:
    assert "def getLogger" in wp.module_source("logging")
    with pytest.raises(ValueError, match="no Python source"):
        wp.module_source("sys")  # built in
