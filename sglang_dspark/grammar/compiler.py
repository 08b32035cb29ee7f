"""Compile constraints off the model loop: a thread pool, a shared cache, and a time limit.

``submit`` returns at once with a Future (the same one for every request with the same constraint);
the scheduler polls it and never blocks the batch. ``compile`` waits at most the time limit, for
callers off the model loop (request validation in an HTTP handler). Failures are cached like
successes: compiling is deterministic.

A compile that overruns the time limit fails its requests with a GrammarError. A thread cannot be
killed: xgrammar and llguidance bound their own work (llguidance's lexer fuel); outlines-core's
regex-to-DFA construction, which can run long and grow without bound on pathological input, runs in a
child process that is killed at the limit (``compile_process``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from sglang_dspark.grammar.base import (
    BaseGrammarObject,
    Constraint,
    GrammarBackend,
    GrammarError,
    compile_timeout_error,
)
from sglang_dspark.grammar.json_bounds import JsonBounds

logger = logging.getLogger(__name__)


@dataclass
class PendingGrammar:
    """A request's compile in flight: poll ``ready()``, then ``grammar()``."""

    future: Future
    deadline: float  # time.monotonic() after which the request fails
    timeout: float
    constraint: Constraint

    def ready(self) -> bool:
        return self.future.done() or time.monotonic() > self.deadline

    def compiled(self) -> Any:
        """The compiled grammar; GrammarError if compiling failed or is past the deadline."""
        if not self.future.done():
            raise compile_timeout_error(self.constraint, self.timeout)
        return self.future.result()


class GrammarCompiler:
    def __init__(
        self, backend: GrammarBackend, timeout: float | None = None, max_workers: int = 2, cache_size: int = 512
    ) -> None:
        """timeout: seconds a request waits for its compile; None = the backend's compile limit."""
        self.backend = backend
        self.timeout = backend.limits.timeout if timeout is None else timeout
        self.cache_size = cache_size
        self.max_workers = max_workers  # compiles that run at once
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[tuple[str, str, str], Future] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, constraint: Constraint) -> PendingGrammar:
        """Start compiling (or reuse the cached compile); returns immediately."""
        key = (self.backend.name, constraint.kind.value, constraint.text)
        with self._lock:
            future = self._cache.get(key)
            if future is None:
                future = self._pool.submit(self._compile, constraint)
                self._cache[key] = future
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return PendingGrammar(future, time.monotonic() + self.timeout, self.timeout, constraint)

    def compile(self, constraint: Constraint) -> Any:
        """Block until compiled, at most the time limit; raises GrammarError with the reason."""
        pending = self.submit(constraint)
        try:
            return pending.future.result(timeout=max(0.0, pending.deadline - time.monotonic()))
        except FutureTimeout:
            raise compile_timeout_error(constraint, self.timeout) from None

    def make_grammar(self, compiled: Any, bounds: JsonBounds | None = None) -> BaseGrammarObject:
        return self.backend.make_grammar(compiled, bounds)

    def _compile(self, constraint: Constraint) -> Any:
        start = time.perf_counter()
        try:
            compiled = self.backend.compile(constraint)
        except GrammarError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # library errors, including Rust panics (BaseException in pyo3)
            raise GrammarError(f"invalid {constraint.kind.value}: {type(e).__name__}: {e}") from None
        logger.debug("compiled %s in %.3f s", constraint.kind.value, time.perf_counter() - start)
        return compiled

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.backend.close()
