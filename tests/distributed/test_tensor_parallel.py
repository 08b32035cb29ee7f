"""``--tp-size 2`` computes what ``--tp-size 1`` computes on the real default model. Dense fp32 weights: logits
within 1e-4 and the same greedy tokens, plain, DSPARK and SELF, with and without a JSON schema. Its Q4_1
blocks split between the ranks: the same model up to the int8 rounding of activations (the all-reduce sums
the two halves of a row-parallel matmul in another order than one rank does, and a last-bit difference
moves roundings further on)."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a linked list is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name a famous painting by Leonardo da Vinci.",
    "Give me a tip for learning to code.",
    "Describe a cat in five words.",
    "Why is the sky blue?",
]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
MAX_NEW_TOKENS = 24
ENGINE_ARGS = {
    "dtype": "float32",
    "quantization": "none",
    "max_total_tokens": 2048,
    "max_running_requests": 16,
    "log_level": "warning",
}


def outputs(engine: Engine, schema: dict | None) -> list[list[int]]:
    ids = [
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in PROMPTS
    ]
    params = {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS}
    if schema is not None:
        params["json_schema"] = json.dumps(schema)
    return [r["output_ids"] for r in engine.generate(input_ids=ids, sampling_params=params)]


@pytest.fixture(scope="module")
def expected() -> dict[str, list[list[int]]]:
    with Engine(**ENGINE_ARGS) as engine:
        return {"plain": outputs(engine, None), "json": outputs(engine, SCHEMA)}


@pytest.mark.parametrize("algorithm", [None, "DSPARK", "SELF"])  # SELF: every rank runs the truncated forward
def test_tp2_greedy_tokens_equal_tp1(expected, sps_path, algorithm):
    spec = {"speculative_algorithm": algorithm, "speculative_dspark_sps_table_path": sps_path} if algorithm else {}
    with Engine(**ENGINE_ARGS, tp_size=2, **spec) as engine:
        got = {"plain": outputs(engine, None), "json": outputs(engine, SCHEMA)}
    assert got["plain"] == expected["plain"]
    assert got["json"] == expected["json"]


def prefill_then_decode(runner: ModelRunner, prompt: list[int]) -> torch.Tensor:
    """Logits [len(prompt) + 1, V] of a prefill of ``prompt`` and one greedy decode step after it."""
    table = runner.req_to_token_pool.req_to_token
    n = len(prompt)
    table[0, : n + 1] = torch.arange(1, n + 2)

    def step(ids: list[int], start: int, logits_rows: int) -> torch.Tensor:
        k = len(ids)
        fb = ForwardBatch(
            input_ids=torch.tensor(ids),
            positions=torch.arange(start, start + k),
            out_cache_loc=table[0, start : start + k].clone(),
            req_pool_indices=torch.tensor([0]),
            seq_lens=[start + k],
            extend_lens=[k],
            logits_indices=torch.arange(k - logits_rows, k),
            kv_pool=runner.kv_pool,
            req_to_token=table,
        )
        return runner.forward(fb).logits

    prefill = step(prompt, 0, n)
    decode = step([int(prefill[-1].argmax())], n, 1)
    return torch.cat([prefill, decode])


def logits_of(tp: int, quantization: str) -> torch.Tensor:
    args = ServerArgs(dtype="float32", tp_size=tp, quantization=quantization, max_total_tokens=128)
    runner = ModelRunner(args, resolve_model_path(None))
    try:
        return prefill_then_decode(runner, list(range(100, 140)))
    finally:
        runner.close()


def test_tp2_logits_within_1e4_on_dense_weights():
    assert (logits_of(1, "none") - logits_of(2, "none")).abs().max().item() < 1e-4


def test_tp2_on_quantized_weights_is_within_the_quantization_error():
    """tp2 differs from tp1 by less than quantizing differs from the dense model, and picks the same greedy
    token at >= 90% of the positions."""
    tp1, tp2 = logits_of(1, "auto"), logits_of(2, "auto")
    quantization_error = (tp1 - logits_of(1, "none")).abs()
    split_error = (tp2 - tp1).abs()
    assert split_error.mean() < quantization_error.mean() and split_error.max() < 2 * quantization_error.max()
    assert (tp1.argmax(-1) == tp2.argmax(-1)).float().mean() >= 0.9
