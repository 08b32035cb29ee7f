import torch

from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.managers.schedule_batch import ForwardInput, Req, ScheduledChunk
from sglang_dspark.mem_cache.memory_pool import KVPool
from sglang_dspark.models.llama import ModelOutput
from sglang_dspark.sampling.sampling_params import SamplingParams


def make_req(rid: str, prompt: list[int], row: int, **fields) -> Req:
    req = Req(TokenizedGenerateReqInput(rid, prompt, SamplingParams(max_new_tokens=8), **fields), None)
    req.req_pool_idx = row
    return req


def test_forward_input_names_every_logits_row_and_splits_them_back():
    """A decode that verifies two drafts, a prefill that wants input logprobs and a decode that samples in
    one forward: the logits rows are gathered by purpose and each group comes back under its name."""
    prefill = make_req("p", [1, 2, 3, 4], row=0, return_logprob=True, logprob_start_len=0)
    sampling = make_req("s", [5, 6], row=1)
    sampling.output_ids, sampling.kv_len = [7], 2
    verifying = make_req("v", [8, 9], row=2)
    verifying.output_ids, verifying.kv_len = [10], 2
    table = torch.arange(3 * 16).reshape(3, 16)  # [rows, context] slot of every (request, position)
    chunks = [ScheduledChunk(verifying, 3, [11, 12]), ScheduledChunk(prefill, 4), ScheduledChunk(sampling, 1)]
    kv = KVPool(64, num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32)

    forward = ForwardInput.build(chunks, kv, table, capture_layers=())

    batch = forward.batch
    assert batch.input_ids.tolist() == [10, 11, 12, 1, 2, 3, 4, 7]
    assert batch.positions.tolist() == [2, 3, 4, 0, 1, 2, 3, 2]
    assert batch.out_cache_loc.tolist() == [34, 35, 36, 0, 1, 2, 3, 18]
    # the logits at prompt positions 0-2 score the input tokens after them; the prefill's last row and the
    # sampling decode sample; the verify rows are the anchor and the two drafts
    assert [(r.req.rid, r.position) for r in forward.input_logprob_rows] == [("p", 0), ("p", 1), ("p", 2)]
    assert [r.rid for r in forward.sample_reqs] == ["p", "s"]
    assert [c.req.rid for c in forward.verify_chunks] == ["v"]
    assert batch.logits_indices.tolist() == [3, 4, 5, 6, 7, 0, 1, 2]

    logits = batch.logits_indices.float()[:, None]  # [M, 1]: each row holds its flat-batch row
    out = forward.split(ModelOutput(logits, []))
    assert out.input_logprob_logits[:, 0].tolist() == [3, 4, 5]
    assert out.sample_logits[:, 0].tolist() == [6, 7]
    assert out.verify_logits[:, 0].tolist() == [0, 1, 2]
