import torch

from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.managers.schedule_batch import Req, ScheduledChunk
from sglang_dspark.managers.spec_round import VerifyLogprobRows
from sglang_dspark.sampling.sampling_params import SamplingParams


def make_req(rid: str, **fields) -> Req:
    return Req(TokenizedGenerateReqInput(rid, [1, 2], SamplingParams(max_new_tokens=8), **fields), None)


def test_committed_tokens_report_the_raw_rows_that_scored_them():
    """Three requests verify in one round, the middle one without logprobs: each committed token of the others
    reports log_softmax of its own verify row (the anchor's row first) as it was before the grammar mask
    wrote the rows in place, with the top alternatives its request asked for."""
    first = make_req("a", return_logprob=True)
    plain = make_req("b")
    last = make_req("c", return_logprob=True, top_logprobs_num=2)
    chunks = [ScheduledChunk(first, 3, [5, 6]), ScheduledChunk(plain, 2, [7]), ScheduledChunk(last, 2, [4])]
    torch.manual_seed(0)
    logits = torch.randn(7, 10)  # [3 + 2 + 2 rows, V]: anchor + drafts of each chunk, in order
    logprobs = torch.log_softmax(logits, dim=-1)
    rows = VerifyLogprobRows.copy(chunks, logits)
    logits[:] = -torch.inf  # what the grammar mask may do to the verify rows, in place

    # the first accepts one draft of two, the middle all, the last fails to verify
    scored = rows.committed(chunks, [[5, 9], [7, 3], None])
    assert scored[1:] == [[], []]
    assert [lp.token for lp in scored[0]] == [(float(logprobs[0, 5]), 5), (float(logprobs[1, 9]), 9)]
    assert [lp.top for lp in scored[0]] == [None, None]

    scored = rows.committed(chunks, [[5, 6, 1], [7, 3], [4, 2]])
    assert [lp.token for lp in scored[2]] == [(float(logprobs[5, 4]), 4), (float(logprobs[6, 2]), 2)]
    top = torch.topk(logprobs[6], 2)
    assert scored[2][1].top == list(zip(top.values.tolist(), top.indices.tolist()))
    assert scored[0][2].token == (float(logprobs[2, 1]), 1)
