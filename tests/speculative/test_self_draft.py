"""SELF: training-free self-drafting with the target's first k layers, its final norm and LM head, sharing the
target's KV pool.

- The proposer's drafts are the truncated model's own greedy continuation (computed here on a private KV
  pool), from the anchor and from grammar-forced tokens without KV, and a round leaves the target's
  allocator and request table as it found them.
- In the runtime, float32 greedy output equals plain decoding on the default model (Llama architecture) and
  on a tiny random Gemma 3 (sliding window 8), one request at a time and eight at once, with and without a
  JSON schema, alone and combined with the n-gram proposer; afterwards no KV slot or request row is held.
- A K the target cannot draft with fails at start-up, saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from sglang_dspark import Engine
from sglang_dspark.model_executor.forward_batch import ForwardBatch
from sglang_dspark.model_executor.model_runner import ModelRunner
from sglang_dspark.model_executor.sequence_forward import forward_sequences
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.sampling.sampling_params import SamplingParams
from sglang_dspark.server_args import ServerArgs
from sglang_dspark.speculative.self_draft_proposer import SelfDraftProposer

PROMPTS = [
    "Write a python class for a linked list with insert, delete and print methods.",
    "List the first 10 US states as a JSON array of objects with name and capital.",
    "Repeat after me three times: the quick brown fox jumps over the lazy dog.",
]
GREEDY = {"temperature": 0, "max_new_tokens": 40}
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"states": {"type": "array", "items": {"type": "string"}}},
        "required": ["states"],
    }
)
# drafting layers per target: the default model (30 layers) drafts acceptably only near its top (see
# benchmarks/results/self_drafting.md); the tiny Gemma 3's first 3 of 4 layers agree with it on about 40% of
# its tokens, with confidences near 1/V (its random weights spread every distribution flat), with which the
# adaptive planner verifies nothing: it verifies every draft (fixed)
DRAFT_LAYERS = {"llama": 26, "gemma3": 3}
VERIFY_MODE = {"llama": "adaptive", "gemma3": "fixed"}


@dataclass
class Request:
    """What SpecRequest reads of a scheduler request."""

    rid: str
    origin_input_ids: list[int]
    output_ids: list[int]
    sampling_params: SamplingParams
    req_pool_idx: int
    kv_len: int
    generator: torch.Generator | None = None
    grammar: object | None = None


def prefill(runner: ModelRunner, row: int, ids: list[int]) -> None:
    """Run ids through every layer of the runner's model into fresh slots of its request row."""
    slots = runner.token_allocator.alloc(len(ids))
    runner.req_to_token_pool.req_to_token[row, : len(ids)] = slots
    runner.forward(
        ForwardBatch(
            input_ids=torch.tensor(ids),
            positions=torch.arange(len(ids)),
            out_cache_loc=slots,
            req_pool_indices=torch.tensor([row]),
            seq_lens=[len(ids)],
            extend_lens=[len(ids)],
            logits_indices=torch.tensor([len(ids) - 1]),
            kv_pool=runner.kv_pool,
            req_to_token=runner.req_to_token_pool.req_to_token,
        )
    )


def truncated_greedy(runner: ModelRunner, ids: list[int], layers: int, n: int) -> tuple[list[int], list[float]]:
    """The first `layers` layers + final norm + LM head, greedy, n tokens after ids (whole-sequence forwards,
    attending as the runner does): (tokens, the head's probability of each)."""
    model, attention = runner.model, runner.cpu_ops.pool_attention if runner.batch_invariant else None
    seq, probs = list(ids), []
    for _ in range(n):
        hidden = forward_sequences(model, [seq], (layers - 1,), pool_attention=attention)[0].hidden_states[0]
        with torch.inference_mode():
            p = torch.softmax(model.compute_logits(model.norm(hidden[-1:]))[0].float(), dim=-1)
        seq.append(int(p.argmax()))
        probs.append(float(p.max()))
    return seq[len(ids) :], probs


@pytest.fixture(scope="module")
def runner():
    r = ModelRunner(ServerArgs(dtype="float32", max_total_tokens=512), resolve_model_path(None))
    yield r
    r.close()


@pytest.mark.parametrize("without_kv", [1, 3], ids=["anchor", "forced-tokens"])
def test_drafts_are_the_truncated_models_greedy_continuation_and_the_pools_stay_as_found(runner, without_kv):
    """The committed tokens before kv_len have KV from a full forward; the last `without_kv` committed tokens
    (the anchor, after grammar-forced ones) have none yet. The drafts equal the first-k-layers model's greedy
    continuation of the whole context, with its probabilities as confidences; the allocator's free slots and
    the row's committed slots are unchanged."""
    layers, n = DRAFT_LAYERS["llama"], 4
    context = list(range(200, 240))
    req = Request("r", context[:-2], context[-2:], SamplingParams(temperature=0), 0, len(context) - without_kv)
    prefill(runner, 0, context[: req.kv_len])
    table = runner.req_to_token_pool.req_to_token
    committed = table[0, : req.kv_len].clone()
    free = runner.token_allocator.available_size()
    free_slots = set(runner.token_allocator.alloc(free).tolist())
    runner.token_allocator.free(torch.tensor(sorted(free_slots)))
    try:
        proposer = SelfDraftProposer(runner, layers, max_tokens=n, seed=0)
        (draft,) = proposer.propose([req], [n])
        tokens, probs = truncated_greedy(runner, context, layers, n)
        assert draft.tokens == tokens
        assert draft.confidences == pytest.approx(probs, abs=1e-4)
        assert draft.probs is None and draft.source == "self"
        assert all(0 < c <= 1 for c in draft.confidences)
        sampled = Request("s", req.origin_input_ids, req.output_ids, SamplingParams(temperature=0.8), 0, req.kv_len)
        (q,) = proposer.propose([sampled], [n])
        assert q.probs.shape == (n, runner.vocab_size) and q.source == "self/sampled"
        assert torch.equal(table[0, : req.kv_len], committed)
        assert runner.token_allocator.available_size() == free
        assert set(runner.token_allocator.alloc(free).tolist()) == free_slots
    finally:
        runner.token_allocator.clear()


def engine(model_path: str | None, **kwargs) -> Engine:
    return Engine(model_path=model_path, dtype="float32", max_total_tokens=4096, log_level="warning", **kwargs)


def chat_ids(engine: Engine) -> list[list[int]]:
    return [
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in PROMPTS
    ]


def params(schema: bool) -> dict:
    return {**GREEDY, "json_schema": SCHEMA} if schema else GREEDY


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def target(request, gemma3_dir):
    """(name, model path, prompt ids, plain greedy outputs without and with the schema)."""
    path = None if request.param == "llama" else gemma3_dir[0]
    base = engine(path)
    try:
        ids = chat_ids(base)
        outputs = {
            s: [base.generate(input_ids=i, sampling_params=params(s))["output_ids"] for i in ids] for s in (0, 1)
        }
    finally:
        base.shutdown()
    return request.param, path, ids, outputs


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "with-ngram"])
def test_self_drafting_greedy_is_lossless_and_frees_everything(target, sps_path, alone):
    name, path, ids, outputs = target
    spec = engine(
        path,
        speculative_algorithm="SELF",
        speculative_self_draft_layers=DRAFT_LAYERS[name],
        speculative_dspark_sps_table_path=sps_path,
        speculative_dspark_disable_ngram=alone,
        speculative_dspark_verify_mode=VERIFY_MODE[name],
    )
    try:
        responses = []
        for schema in (0, 1):
            one = [spec.generate(input_ids=i, sampling_params=params(schema)) for i in ids]
            assert [r["output_ids"] for r in one] == outputs[schema]
            batch = spec.generate(input_ids=(ids * 3)[:8], sampling_params=params(schema))
            assert [r["output_ids"] for r in batch] == (outputs[schema] * 3)[:8]
            responses += one + batch
        assert sum(r["meta_info"]["spec_num_correct_drafts"] for r in responses) > 0  # drafts were accepted
        usage = spec.kv_usage()
        assert usage.in_use == 0 and usage.free + usage.cached == usage.total
        rows = spec.scheduler.runner.req_to_token_pool
        assert rows.available_size() == rows.size
        assert spec.scheduler.spec.request_states() == 0
    finally:
        spec.shutdown()


def test_self_draft_layers_the_target_lacks_fail_at_start_up(gemma3_dir):
    for layers in (4, 9):  # the tiny Gemma 3 has 4 decoder layers
        with pytest.raises(ValueError, match=rf"self-draft-layers {layers} must be in \[1, 3\].*4 decoder layers"):
            engine(gemma3_dir[0], speculative_algorithm="SELF", speculative_self_draft_layers=layers)
    with pytest.raises(ValueError, match="self-draft-layers must be >= 1"):
        ServerArgs(speculative_algorithm="SELF", speculative_self_draft_layers=0)
    with pytest.raises(ValueError, match="self-draft-layers needs --speculative-algorithm SELF"):
        ServerArgs(speculative_algorithm="NGRAM", speculative_self_draft_layers=2)
