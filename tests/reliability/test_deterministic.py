"""--enable-deterministic-inference: a request's bf16 greedy tokens don't depend on what runs beside it.

Every request of a mixed set (code, chat, JSON schema) runs alone through a plain engine; then, through
plain, NGRAM and DSPARK engines, inside batches of 3 and 16, again over the radix cache the batch left
(every prompt a cache hit), and alone. Prefill chunks are small (32 tokens, 64 per batch), so where a
prompt's chunks start depends on the batch around it. Each must give the reference tokens exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.kernels.cpu_ops import select_cpu_ops
from sglang_dspark.kernels.quant_linear import missing_cpu_flags

DATA = Path(__file__).resolve().parents[2] / "data" / "prompts"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}, "tags": {"type": "array"}},
    "required": ["name", "year", "tags"],
}
NEW_TOKENS = 40


def mixed_requests() -> list[tuple[str, dict]]:
    """16 (prompt, sampling params): code and chat first turns, two of them JSON-schema constrained."""
    sets = []
    for name in ("mbpp.jsonl", "arena-hard-v2.jsonl"):
        with open(DATA / name) as f:
            sets.append([json.loads(line)["turns"][0][:400] for line in f if line.strip()][:7])
    greedy = {"temperature": 0, "max_new_tokens": NEW_TOKENS}
    reqs = [(p, greedy) for pair in zip(*sets) for p in pair]
    schema = {**greedy, "json_schema": json.dumps(SCHEMA)}
    reqs += [(f"Describe the book {title} as JSON.", schema) for title in ("Dune", "Emma")]
    return reqs


def engine(quantization: str, algorithm: str | None) -> Engine:
    return Engine(
        dtype="bfloat16",
        quantization=quantization,
        speculative_algorithm=algorithm,
        enable_deterministic_inference=True,
        chunked_prefill_size=32,
        max_prefill_tokens=64,
        max_total_tokens=8192,
        log_level="warning",
    )


def generate(eng: Engine, reqs: list[tuple[str, dict]]) -> list[list[int]]:
    out = eng.generate([p for p, _ in reqs], [sp for _, sp in reqs])
    return [r["output_ids"] for r in out]


def kernels_available(quantization: str) -> bool:
    if quantization != "none" and missing_cpu_flags():
        return False
    try:
        select_cpu_ops("native", "cpu", torch.bfloat16)
    except RuntimeError:
        return False
    return True


@pytest.fixture(scope="module", params=["auto", "none"], ids=["quantized", "dense"])
def reference(request):
    """(quantization, each mixed request's tokens alone in a plain deterministic engine, no cache)."""
    if not kernels_available(request.param):
        pytest.skip("needs the native CPU kernels (and AVX-512 for the quantized matmul)")
    eng = engine(request.param, None)
    try:
        alone = []
        for req in mixed_requests():
            eng.flush_cache()
            alone.append(generate(eng, [req])[0])
    finally:
        eng.shutdown()
    return request.param, alone


@pytest.mark.parametrize("algorithm", [None, "NGRAM", "DSPARK"], ids=["plain", "ngram", "dspark"])
def test_same_tokens_alone_batched_cached_and_speculative(reference, algorithm):
    quantization, alone = reference
    reqs = mixed_requests()
    eng = engine(quantization, algorithm)
    try:
        assert generate(eng, reqs) == alone  # batch of 16, cold cache
        assert generate(eng, reqs[::-1]) == alone[::-1]  # every prompt a radix-cache hit
        picks = [0, 7, 15]
        eng.flush_cache()
        assert generate(eng, [reqs[i] for i in picks]) == [alone[i] for i in picks]  # batch of 3
        for i in picks:
            assert generate(eng, [reqs[i]]) == [alone[i]]  # alone, over the cached prefix
    finally:
        eng.shutdown()


def test_deterministic_inference_on_another_device_is_refused():
    with pytest.raises(ValueError, match="CPU only"):
        select_cpu_ops("auto", "cuda", torch.bfloat16, batch_invariant=True)
