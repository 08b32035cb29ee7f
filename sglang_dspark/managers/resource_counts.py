"""What requests hold in the scheduler process, counted for operators: every count is zero when idle.

`/server_info` (``internal_states[0]["resources"]``) and `/metrics` (``sglang:resources_in_use``) show
them, so a leak (a finished or disconnected request that still holds KV, a table row, a grammar matcher
or drafter state) is visible from outside.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceCounts:
    requests: int  # compiling their grammar, waiting or running
    kv_slots: int  # KV pool slots held by requests (the radix cache's own are not counted)
    req_rows: int  # rows of the request -> KV slot table
    grammar_objects: int  # live per-request grammar matchers
    drafter_states: int  # per-request proposer state: drafter KV rows and features, n-gram indexes


def count_resources(scheduler) -> ResourceCounts:
    """The counts of a ``managers.scheduler.Scheduler``."""
    pool = scheduler.runner.req_to_token_pool
    return ResourceCounts(
        requests=len(scheduler.grammars.queue) + len(scheduler.waiting) + len(scheduler.running),
        kv_slots=scheduler.kv_usage().in_use,
        req_rows=pool.size - pool.available_size(),
        grammar_objects=scheduler.grammars.live_grammars(),
        drafter_states=scheduler.spec.request_states() if scheduler.spec else 0,
    )
