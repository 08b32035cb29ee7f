"""--attention-backend: which kernel each choice runs, the errors of choices that can't run, and the Triton
pool-attention backend serving a real model (in Triton's interpreter here, on a GPU in launch/gpu_check.sh)."""

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.layers.attention_backend import select_attention_backend

# every proposed draft verified, whatever the wall clock says
NGRAM_EVERY_DRAFT = {
    "speculative_algorithm": "NGRAM",
    "speculative_dspark_verify_mode": "fixed",
    "speculative_config": '{"backoff": false, "gate": false}',
}


def fake_pool_attention(*args):
    raise AssertionError("not called")


def test_auto_picks_the_native_kernel_on_the_cpu_and_sdpa_without_it():
    native = select_attention_backend("auto", "cpu", fake_pool_attention, batch_invariant=True)
    assert (native.name, native.pool_attention, native.all_in_pool) == ("native", fake_pool_attention, True)
    plain = select_attention_backend("auto", "cpu", None, batch_invariant=False)
    assert (plain.name, plain.pool_attention, plain.all_in_pool) == ("torch_native", None, False)


def test_triton_sends_every_query_through_the_pool_kernel():
    from sglang_dspark.kernels.pool_attention_triton import pool_attention_triton

    backend = select_attention_backend("triton", "cpu", fake_pool_attention, batch_invariant=False, sliding_window=8)
    assert (backend.pool_attention, backend.all_in_pool, backend.sliding_window) == (pool_attention_triton, True, 8)


@pytest.mark.parametrize(
    "requested,batch_invariant,message",
    [
        ("flashinfer", False, "runs on a GPU only"),
        ("torch_native", True, "runs batch-invariant"),
    ],
)
def test_choices_that_cannot_run_name_the_flag(requested, batch_invariant, message):
    with pytest.raises(ValueError, match=f"--attention-backend {requested}.*{message}"):
        select_attention_backend(requested, "cpu", fake_pool_attention, batch_invariant)


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_attention_backend("triton", "cpu", None, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs on the CPU only")
def test_triton_backend_decodes_and_speculates_like_torch_native():
    """fp32 greedy: the same tokens with the Triton kernel attending every query (prefill chunks, decode, NGRAM
    verify chains) as with SDPA over gathered keys; the speculative run is token-identical to plain decoding."""
    prompt = "def fibonacci(n):\n    " * 3  # repeats, so that the n-gram proposer has drafts to verify
    params = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}
    common = {"dtype": "float32", "quantization": "none", "max_total_tokens": 512, "chunked_prefill_size": 16}
    outputs = {}
    for name, extra in (
        ("torch_native", {"attention_backend": "torch_native"}),
        ("triton", {"attention_backend": "triton"}),
        ("triton+ngram", {"attention_backend": "triton", **NGRAM_EVERY_DRAFT}),
    ):
        engine = Engine(**common, **extra)
        try:
            assert engine.scheduler.runner.attention.name == name.split("+")[0]
            out = engine.generate(prompt, params)
            outputs[name] = out["output_ids"]
            if "ngram" in name:
                assert out["meta_info"]["spec_num_proposed_drafts"] > 0
        finally:
            engine.shutdown()
    assert outputs["triton"] == outputs["torch_native"]
    assert outputs["triton+ngram"] == outputs["torch_native"]
