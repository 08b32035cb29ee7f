"""The scheduler's resource counts: non-zero while requests hold KV, table rows, grammars and drafter state;
zero once they finish or are aborted (what /server_info and /metrics show an operator)."""

from __future__ import annotations

import json

from sglang_dspark import Engine
from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.managers.resource_counts import ResourceCounts, count_resources
from sglang_dspark.sampling.sampling_params import SamplingParams

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
IDLE = ResourceCounts(requests=0, kv_slots=0, req_rows=0, grammar_objects=0, drafter_states=0)


def test_counts_follow_requests_and_return_to_zero():
    # no pacing: the drafter gate and the proposal backoff read the wall clock, and every request must hold
    # proposer state after the first rounds whatever the host's speed
    engine = Engine(
        speculative_algorithm="DSPARK",
        speculative_config='{"gate": false, "backoff": false}',
        max_total_tokens=4096,
        log_level="warning",
    )
    scheduler = engine.scheduler
    try:
        assert count_resources(scheduler) == IDLE
        ids = engine.tokenizer.encode("A JSON object with a name:")
        for i, params in enumerate([{"max_new_tokens": 64, "json_schema": SCHEMA}, {"max_new_tokens": 64}]):
            params = SamplingParams.from_dict({**params, "temperature": 0, "ignore_eos": i == 1})
            scheduler.add_request(TokenizedGenerateReqInput(rid=f"r{i}", input_ids=ids, sampling_params=params))
        for _ in range(6):  # compile, prefill, a few speculative rounds
            scheduler.step()
        busy = count_resources(scheduler)
        assert busy.requests == 2 and busy.kv_slots > 0 and busy.req_rows == 2, busy
        assert busy.grammar_objects == 1 and busy.drafter_states == 2, busy
        scheduler.abort_request("r1")
        while scheduler.has_work():
            scheduler.step()
        assert count_resources(scheduler) == IDLE
    finally:
        engine.shutdown()
