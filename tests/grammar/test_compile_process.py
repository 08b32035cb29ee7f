"""outlines-core compiles in worker processes: killed at the time limit, dead past the memory limit,
reused after an ordinary compile or a refused regex (real library, real tokenizer)."""

import os

import pytest

from sglang_dspark.grammar import CompileLimits, Constraint, ConstraintKind, GrammarError, create_backend

VOCAB, EOS = 49152, 2
SLOW_REGEX = "(a|b)*a(a|b){16}"  # ~2^16 DFA states: tens of seconds, under 200 MB
HUNGRY_REGEX = "[a-z ]{0,2000}"  # ~1 MB of token transitions per state: gigabytes


def regex(text: str) -> Constraint:
    return Constraint(ConstraintKind.REGEX, text)


def worker_pids(backend) -> list[int]:
    return [w.process.pid for w in backend.processes._idle]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (killed, not yet reaped) does not count
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def outlines(tokenizer):
    def make(timeout: float = 30.0, memory_gb: float = 4.0):
        backend = create_backend("outlines", tokenizer, VOCAB, [EOS], CompileLimits(timeout, memory_gb))
        made.append(backend)
        return backend

    made = []
    yield make
    for backend in made:
        backend.close()


def test_worker_is_reused_and_refusals_keep_it(outlines, tokenizer):
    backend = outlines()
    backend.compile(regex("(yes|no)"))
    [pid] = worker_pids(backend)
    with pytest.raises(GrammarError, match="invalid regex"):
        backend.compile(regex("(a"))
    backend.compile(
        Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "object", "properties": {"x": {"type": "integer"}}}')
    )
    assert worker_pids(backend) == [pid]
    grammar = backend.make_grammar(backend.compile(regex("(yes|no)")))  # the Index came back from the worker
    assert not grammar.accept_token(tokenizer.encode("maybe")[0])
    assert all(grammar.accept_token(t) for t in tokenizer.encode("yes"))
    assert grammar.accept_token(EOS) and grammar.is_terminated()


def test_time_limit_kills_the_compile(outlines):
    backend = outlines(timeout=1.0)
    backend.compile(regex("(yes|no)"))
    [pid] = worker_pids(backend)
    with pytest.raises(GrammarError, match="took longer than the 1 s limit"):
        backend.compile(regex(SLOW_REGEX))
    assert not is_running(pid) and worker_pids(backend) == []
    backend.compile(regex("[0-9]+"))  # a new worker
    assert len(worker_pids(backend)) == 1 and worker_pids(backend) != [pid]


def test_memory_limit_fails_the_compile_not_the_process(outlines):
    backend = outlines(memory_gb=0.25)
    with pytest.raises(GrammarError, match="more than the 0.25 GiB memory limit"):
        backend.compile(regex(HUNGRY_REGEX))
    assert worker_pids(backend) == []
    backend.compile(regex("[a-z ]{0,20}"))  # the same shape, small enough


def test_close_stops_the_workers(outlines):
    backend = outlines()
    backend.compile(regex("(yes|no)"))
    [pid] = worker_pids(backend)
    backend.close()
    assert not is_running(pid)
