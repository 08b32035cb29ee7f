"""The compile cache, the thread pool and the time limit, with a stub backend (no library, no model)."""

import threading
import time

import pytest

from sglang_dspark.grammar.base import Constraint, ConstraintKind, GrammarBackend, GrammarError
from sglang_dspark.grammar.compiler import GrammarCompiler


class StubBackend(GrammarBackend):
    name = "stub"

    def __init__(self) -> None:
        super().__init__(vocab_size=64, stop_token_ids=[0])
        self.calls = 0
        self.release = threading.Event()

    def compile(self, constraint: Constraint):
        self.calls += 1
        if constraint.text == "slow":
            self.release.wait(10)
        if constraint.text == "bad":
            raise GrammarError("bad grammar")
        if constraint.text == "crash":
            raise RuntimeError("library crashed")
        return ("compiled", constraint.text)

    def make_grammar(self, compiled):
        return compiled


def regex(text: str) -> Constraint:
    return Constraint(ConstraintKind.REGEX, text)


@pytest.fixture
def backend():
    b = StubBackend()
    yield b
    b.release.set()


def test_cache_shares_one_compile(backend):
    compiler = GrammarCompiler(backend, timeout=5)
    first, second = compiler.submit(regex("a")), compiler.submit(regex("a"))
    assert first.future is second.future
    assert compiler.compile(regex("a")) == ("compiled", "a")
    assert backend.calls == 1
    assert compiler.submit(Constraint(ConstraintKind.EBNF, "a")).future is not first.future


def test_failures_are_cached_and_wrapped(backend):
    compiler = GrammarCompiler(backend, timeout=5)
    for _ in range(2):
        with pytest.raises(GrammarError, match="bad grammar"):
            compiler.compile(regex("bad"))
    assert backend.calls == 1
    with pytest.raises(GrammarError, match="RuntimeError: library crashed"):
        compiler.compile(regex("crash"))


def test_time_limit_fails_the_request_but_not_others(backend):
    compiler = GrammarCompiler(backend, timeout=0.3, max_workers=2)
    pending = compiler.submit(regex("slow"))
    assert not pending.ready()
    start = time.monotonic()
    with pytest.raises(GrammarError, match="took longer than the 0.3 s limit"):
        compiler.compile(regex("slow"))
    assert time.monotonic() - start < 1.0
    assert compiler.compile(regex("fast")) == ("compiled", "fast")  # the other worker still serves
    time.sleep(0.05)
    assert pending.ready()  # past its deadline
    with pytest.raises(GrammarError, match="limit"):
        pending.compiled()
    backend.release.set()
    assert compiler.submit(regex("slow")).future.result(5) == ("compiled", "slow")  # cached once done


def test_cache_is_bounded(backend):
    compiler = GrammarCompiler(backend, timeout=5, cache_size=2)
    for text in "abc":
        compiler.compile(regex(text))
    compiler.compile(regex("a"))  # evicted: compiled again
    assert backend.calls == 4
