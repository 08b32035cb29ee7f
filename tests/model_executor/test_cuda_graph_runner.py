"""CudaGraphRunner's static buffers, run eagerly on the CPU (``use_graphs=False``): a decode batch copied into
a padded bucket gives the logits and captured hidden states of running the batch itself, and writes no KV
but its own slots and the padding slot. (Capture and replay on a GPU: tests/gpu, launch/gpu_check.sh.)"""

import pytest
import torch

from sglang_dspark.kernels.cpu_ops import load_cpu_ops
from sglang_dspark.layers.attention import build_attention_metadata
from sglang_dspark.model_executor.cuda_graph_runner import CudaGraphRunner
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.sequence_forward import SequenceRunner
from sglang_dspark.models.tiny import tiny_random_gemma3, tiny_random_model

NATIVE = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
PROMPT_LENS = [3, 20, 9, 14, 6]  # the Gemma model's window is 8: some requests attend past it


def decode_batch(runner: SequenceRunner, rows: list[int], capture: tuple[int, ...]) -> ForwardBatch:
    """One new token for each of ``rows``, on top of what the runner holds (slots allocated, table written)."""
    slots = torch.arange(runner.next_slot, runner.next_slot + len(rows))
    runner.next_slot += len(rows)
    positions = []
    for row, slot in zip(rows, slots):
        runner.req_to_token[row, runner.lens[row]] = slot
        positions.append(runner.lens[row])
        runner.lens[row] += 1
    fb = ForwardBatch(
        input_ids=torch.tensor([7 * r + 5 for r in rows]),
        positions=torch.tensor(positions),
        out_cache_loc=slots,
        req_pool_indices=torch.tensor(rows),
        seq_lens=[runner.lens[r] for r in rows],
        extend_lens=[1] * len(rows),
        logits_indices=torch.arange(len(rows)),
        kv_pool=runner.pool,
        req_to_token=runner.req_to_token,
        capture_layers=capture,
    )
    window = runner.model.config.sliding_window
    fb.attn_metadata = build_attention_metadata(fb, runner.pool_attention, True, window)
    return fb


@pytest.mark.skipif(not NATIVE, reason="needs the native CPU pool-attention kernel (AVX2)")
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_padded_bucket_gives_the_batchs_own_forward(arch):
    model = tiny_random_model() if arch == "llama" else tiny_random_gemma3()
    attend = load_cpu_ops().pool_attention
    runner = SequenceRunner(model, len(PROMPT_LENS), 256, 64, attend, all_in_pool=True)
    runner.extend({row: list(range(1, n + 1)) for row, n in enumerate(PROMPT_LENS)})
    window = model.config.sliding_window
    graphs = CudaGraphRunner(model, runner.pool, attend, 8, 64, window, "cpu", use_graphs=False)
    assert graphs.buckets == [1, 2, 4, 8]
    for rows, capture in (([1, 3, 4], (1,)), ([0, 1, 2, 3, 4], ()), ([2], (-1, 0))):
        fb = decode_batch(runner, rows, capture)
        assert graphs.can_run(fb)
        want = model(fb)  # writes the batch's KV, as the replay does again
        before = [t.clone() for t in runner.pool.k_buffer + runner.pool.v_buffer]
        got = graphs.replay(fb)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.logits.argmax(-1), want.logits.argmax(-1))
        assert len(got.hidden_states) == len(capture)
        for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        changed = set()
        for old, new in zip(before, runner.pool.k_buffer + runner.pool.v_buffer, strict=True):
            bits_differ = old.view(torch.uint8) != new.view(torch.uint8)  # bitwise: unwritten slots may hold NaN
            changed |= set(bits_differ.flatten(1).any(1).nonzero().flatten().tolist())
        own = set(fb.out_cache_loc.tolist())  # rewritten, to the last bit as a GEMM over the bucket's rows gives
        assert changed <= own | {0}, "the replay wrote KV outside the batch's slots and the padding slot"


@pytest.mark.skipif(not NATIVE, reason="needs the native CPU pool-attention kernel (AVX2)")
def test_only_pool_attended_decode_batches_within_the_largest_bucket_run():
    model = tiny_random_model()
    attend = load_cpu_ops().pool_attention
    runner = SequenceRunner(model, 6, 256, 64, attend, all_in_pool=True)
    runner.extend({row: [1, 2, 3] for row in range(6)})
    graphs = CudaGraphRunner(model, runner.pool, attend, 4, 64, None, "cpu", use_graphs=False)
    assert graphs.can_run(decode_batch(runner, [0, 1, 2, 3], ()))
    assert not graphs.can_run(decode_batch(runner, [0, 1, 2, 3, 4], ()))  # past the largest bucket
    fb = decode_batch(runner, [5], ())
    fb.attn_metadata = build_attention_metadata(fb, None)  # SDPA over gathered keys: not capturable
    assert not graphs.can_run(fb)
