"""Compiles in child processes that can be killed.

A thread cannot be stopped: outlines-core's regex-to-DFA construction, past the time limit on a
pathological schema, would keep a core busy and grow its memory until the server is OOM-killed. Each
compile here runs in a worker process (a script that imports only its library) under an address-space
limit; it is killed at the time limit and dies on its own past the memory limit. Idle workers are kept
(with the vocabulary they were started with) for the next compile; a killed one is replaced on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sglang_dspark.grammar.base import CompileLimits, Constraint, GrammarError, compile_timeout_error

STDERR_TAIL = 2000  # characters of a dead worker's stderr quoted in the error
MEMORY_MARKERS = ("memory allocation of", "MemoryError", "Cannot allocate memory")


class CompileProcess:
    """One worker: ``python <script> <request fd> <reply fd> <memory bytes>``, first sent ``init_message``."""

    def __init__(self, script: Path, init_message: Any, memory_gb: float) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self.stderr = tempfile.TemporaryFile()
        memory_bytes = int(memory_gb * 2**30)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(request_read), str(reply_write), str(memory_bytes)],
            pass_fds=(request_read, reply_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        os.close(request_read)
        os.close(reply_write)
        self.requests = Connection(request_write, readable=False)
        self.replies = Connection(reply_read, writable=False)
        self.requests.send(init_message)

    def request(self, message: Any, timeout: float) -> Any | None:
        """The worker's reply, or None if it did not answer within ``timeout`` s (it is then killed).
        Raises EOFError if the worker died."""
        self.requests.send(message)
        if not self.replies.poll(timeout):
            self.kill()
            return None
        return self.replies.recv()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.requests.close()
        self.replies.close()

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-STDERR_TAIL:].strip()


class CompileProcessPool:
    """Workers running ``script``, each compile in its own worker; thread-safe."""

    def __init__(self, script: Path, init_message: Any, limits: CompileLimits) -> None:
        self.script = script
        self.init_message = init_message
        self.limits = limits
        self._idle: list[CompileProcess] = []
        self._lock = threading.Lock()

    def run(self, message: Any, constraint: Constraint) -> Any:
        """The worker's reply to ``message``; GrammarError if it overran the time or memory limit or died."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            try:
                worker = CompileProcess(self.script, self.init_message, self.limits.memory_gb)
            except OSError as e:  # the worker could not start, or died before reading its first message
                raise GrammarError(f"could not start a compile process for the {constraint.kind.value}: {e}") from None
        try:
            reply = worker.request(message, self.limits.timeout)
        except (EOFError, OSError):
            worker.kill()
            raise self._death_error(worker, constraint) from None
        except BaseException:
            worker.kill()
            raise
        if reply is None:
            raise compile_timeout_error(constraint, self.limits.timeout)
        if reply[0] == "memory":
            worker.kill()
            raise self._memory_error(constraint)
        with self._lock:
            self._idle.append(worker)
        return reply

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def _death_error(self, worker: CompileProcess, constraint: Constraint) -> GrammarError:
        stderr = worker.stderr_tail()
        code = worker.process.returncode
        if code == -signal.SIGXCPU:
            return compile_timeout_error(constraint, self.limits.timeout)
        if code == -signal.SIGABRT or any(marker in stderr for marker in MEMORY_MARKERS):
            return self._memory_error(constraint)
        return GrammarError(f"the {constraint.kind.value} compile process died (exit code {code}): {stderr}")

    def _memory_error(self, constraint: Constraint) -> GrammarError:
        return GrammarError(
            f"compiling the {constraint.kind.value} needed more than the {self.limits.memory_gb:g} GiB memory "
            f"limit (--grammar-compile-memory-limit); simplify it"
        )
