"""The runtime on a CUDA device (marked ``gpu``; launch/gpu_check.sh runs them, they skip without a GPU):
logits of each attention backend against the CPU fp32 reference, CUDA-graph replay against eager forwards,
and greedy speculative decoding token-identical to plain decoding, with and without a JSON schema."""

import json

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.layers.attention_backend import select_attention_backend
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.model_executor.cuda_graph_runner import CudaGraphRunner
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.models.model_source import ModelLoadError, default_model_gguf
from sglang_dspark.models.tiny import tiny_random_gemma3, tiny_random_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (launch/gpu_check.sh)"),
]
BACKENDS = ["triton", "torch_native", "flashinfer"]
# (row, new tokens) per forward: two prefills, then decode, a verify chain and a short extend together
STEPS = [{0: list(range(1, 21)), 1: list(range(30, 39))}, {0: [5], 1: [6, 7, 8, 9]}, {0: [11, 12], 1: [13]}]


@pytest.fixture(autouse=True)
def exact_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 GEMMs in fp32, as on the CPU
    yield


def tiny_gemma3():
    return tiny_random_gemma3(head_dim=64)  # FlashInfer's smallest head size


def tiny_llama():
    return tiny_random_model(hidden_size=256)  # head_dim 64, FlashInfer's smallest


class Sequences:
    """A private KV pool and request table over which ForwardBatches extend rows of tokens."""

    def __init__(self, model, device: str, rows: int) -> None:
        cfg = model.config
        self.pool = KVPool(512, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32, device)
        self.table = torch.zeros(rows, 64, dtype=torch.int64, device=device)
        self.lens, self.next_slot, self.device = [0] * rows, 1, device

    def batch(self, step: dict[int, list[int]], backend, capture: tuple[int, ...] = ()) -> ForwardBatch:
        """step: row -> its new tokens (slots allocated, table written, attention metadata built)."""
        ids, pos, locs = [], [], []
        for row, toks in step.items():
            slots = torch.arange(self.next_slot, self.next_slot + len(toks), device=self.device)
            self.next_slot += len(toks)
            self.table[row, self.lens[row] : self.lens[row] + len(toks)] = slots
            ids += toks
            pos += range(self.lens[row], self.lens[row] + len(toks))
            locs.append(slots)
            self.lens[row] += len(toks)
        dev = {"dtype": torch.int64, "device": self.device}
        fb = ForwardBatch(
            input_ids=torch.tensor(ids, **dev),
            positions=torch.tensor(pos, **dev),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(list(step), **dev),
            seq_lens=[self.lens[r] for r in step],
            extend_lens=[len(t) for t in step.values()],
            logits_indices=torch.arange(len(ids), **dev),
            kv_pool=self.pool,
            req_to_token=self.table,
            capture_layers=capture,
        )
        fb.attn_metadata = backend.metadata(fb)
        return fb


def backend_for(model, name: str, device: str):
    attn = model.layers[0].self_attn
    args = {
        "dtype": torch.float32,
        "num_heads": attn.num_heads,
        "num_kv_heads": attn.num_kv_heads,
        "head_dim": attn.head_dim,
        "scale": attn.scale,
    }
    return select_attention_backend(name, device, None, False, model.config.sliding_window, args)


def run_steps(model, backend_name: str, device: str) -> list[torch.Tensor]:
    """The logits of every new token of STEPS, run on ``device`` with the backend."""
    model = model.to(device)
    backend = backend_for(model, backend_name, device)
    seqs = Sequences(model, device, 2)
    return [model(seqs.batch(step, backend)).logits.cpu() for step in STEPS]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logits_match_the_cpu_fp32_reference(backend, arch):
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    make = tiny_llama if arch == "llama" else tiny_gemma3
    want = run_steps(make(), "torch_native", "cpu")
    got = run_steps(make(), backend, "cuda")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cuda_graph_replay_equals_eager(arch):
    """Decode batches of 1..7 requests (buckets 1, 2, 4, 8) with a captured layer: the graph's logits and
    hidden states are the eager forward's."""
    model = (tiny_llama if arch == "llama" else tiny_gemma3)().cuda()
    backend = backend_for(model, "triton", "cuda")
    seqs = Sequences(model, "cuda", 7)
    graphs = CudaGraphRunner(model, seqs.pool, backend.pool_attention, 8, 64, model.config.sliding_window, "cuda")
    model(seqs.batch({row: list(range(1, n + 1)) for row, n in enumerate([3, 20, 9, 14, 6, 11, 2])}, backend))
    for rows in ([1, 3, 4], list(range(7)), [2], [0, 5]):
        fb = seqs.batch({r: [7 * r + 5] for r in rows}, backend, capture=(1,))
        assert graphs.can_run(fb)
        want = model(fb)
        got = graphs.replay(fb)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.hidden_states[0], want.hidden_states[0], rtol=1e-4, atol=1e-4)
    assert all(graph is not None for graph, _ in graphs.graphs.values())


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
SPEC = {
    "NGRAM": {"speculative_algorithm": "NGRAM"},
    "DSPARK": {"speculative_algorithm": "DSPARK"},
}


@pytest.fixture(scope="module")
def plain_outputs():
    """The default model's fp32 greedy outputs on the GPU, plain decoding."""
    try:
        default_model_gguf()
    except ModelLoadError as e:
        pytest.skip(f"{e} (launch/gpu_pack.sh carries it to a GPU machine)")
    engine = Engine(device="cuda", dtype="float32", max_total_tokens=4096)
    try:
        yield {grammar: generate(engine, grammar) for grammar in (False, True)}
    finally:
        engine.shutdown()


def generate(engine, grammar: bool) -> list[list[int]]:
    prompts = ["def quicksort(xs):\n    " * 2, "List three colours:", "Describe a person as JSON."]
    params = {"temperature": 0, "max_new_tokens": 24}
    if grammar:
        params["json_schema"] = json.dumps(SCHEMA)
    return [r["output_ids"] for r in engine.generate(prompts, params)]


@pytest.mark.parametrize("algorithm", list(SPEC))
def test_greedy_speculation_on_the_gpu_is_token_identical(plain_outputs, algorithm):
    engine = Engine(
        device="cuda",
        dtype="float32",
        max_total_tokens=4096,
        speculative_dspark_verify_mode="fixed",
        speculative_config='{"backoff": false, "gate": false}',
        **SPEC[algorithm],
    )
    try:
        assert engine.scheduler.runner.device == "cuda"
        for grammar in (False, True):
            assert generate(engine, grammar) == plain_outputs[grammar], f"{algorithm}, grammar {grammar}"
    finally:
        engine.shutdown()
