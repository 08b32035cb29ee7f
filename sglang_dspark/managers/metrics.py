"""Prometheus metrics of the HTTP process (SGLang's metric names, one registry per server).

Request-side numbers (requests, tokens, TTFT, inter-token latency, end-to-end latency) are observed
as outputs arrive from the scheduler; scheduler-side gauges (running / queued requests, KV usage,
radix cache hit rate, speculative accept length) are refreshed from its internal state at scrape time.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sglang_dspark.managers.io_struct import ReqOutput
from sglang_dspark.managers.tokenizer_manager import RequestState

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}

        def make(kind, name: str, doc: str, **kwargs):
            return kind(f"sglang:{name}", doc, list(labels), registry=self.registry, **kwargs).labels(**labels)

        self.requests = make(Counter, "num_requests", "Requests accepted by the scheduler")
        self.aborted = make(Counter, "num_aborted_requests", "Requests aborted before finishing")
        self.prompt_tokens = make(Counter, "prompt_tokens", "Prompt tokens of accepted requests")
        self.generation_tokens = make(Counter, "generation_tokens", "Generated tokens")
        self.ttft = make(Histogram, "time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS)
        self.itl = make(Histogram, "inter_token_latency_seconds", "Time between tokens", buckets=TOKEN_LATENCY_BUCKETS)
        self.e2e = make(Histogram, "e2e_request_latency_seconds", "End-to-end request latency", buckets=LATENCY_BUCKETS)
        self.running = make(Gauge, "num_running_reqs", "Requests in the running batch")
        self.queued = make(Gauge, "num_queue_reqs", "Requests waiting for admission")
        self.token_usage = make(Gauge, "token_usage", "Share of the KV pool held by running requests")
        self.kv_cached = make(Gauge, "kv_cached_tokens", "KV slots held by the radix cache")
        self.cache_hit_rate = make(Gauge, "cache_hit_rate", "Prompt tokens served from the radix cache")
        self.spec_accept_length = make(Gauge, "spec_accept_length", "Mean tokens committed per verify")
        self.resources = Gauge(
            "sglang:resources_in_use",
            "What requests hold (managers/resource_counts.py); all zero when idle",
            ["model_name", "resource"],
            registry=self.registry,
        )
        self.model_name = model_name

    def on_submit(self, states: list[RequestState]) -> None:
        self.requests.inc(len(states))
        self.prompt_tokens.inc(sum(len(s.req.input_ids) for s in states))

    def on_output(self, state: RequestState, out: ReqOutput) -> None:
        """Call before `state.update(out)`: the state still holds the previous token's time."""
        now = time.perf_counter()
        n = len(out.new_output_ids)
        if n:
            self.generation_tokens.inc(n)
            if state.last_token_time is None:
                self.ttft.observe(now - state.created)
            else:
                for _ in range(n):  # tokens that arrive together share the gap
                    self.itl.observe((now - state.last_token_time) / n)
        if out.finished_reason is not None:
            self.e2e.observe(now - state.created)

    def on_abort(self, count: int) -> None:
        self.aborted.inc(count)

    def render(self, internal_state: dict) -> bytes:
        """The exposition text, with the scheduler gauges set from `internal_state` first."""
        kv = internal_state["kv_usage"]
        self.running.set(internal_state["num_running_reqs"])
        self.queued.set(internal_state["num_waiting_reqs"])
        self.token_usage.set(kv["in_use"] / kv["total"])
        self.kv_cached.set(kv["cached"])
        self.cache_hit_rate.set(internal_state["cache_hit_rate"])
        for name, count in internal_state["resources"].items():
            self.resources.labels(model_name=self.model_name, resource=name).set(count)
        if internal_state["avg_spec_accept_length"] is not None:
            self.spec_accept_length.set(internal_state["avg_spec_accept_length"])
        return generate_latest(self.registry)
