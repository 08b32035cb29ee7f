"""llama.cpp on the same GGUF file, as the benchmarks' reference (optional: ``pip install llama-cpp-python``).

The prompts are token ids from our tokenizer (chat template applied), so both engines prefill the same
tokens; decoding is greedy, one sequence at a time, stopping at the model's end-of-sequence token or after
``max_new_tokens``; a request with a ``json_schema`` decodes under llama.cpp's own grammar for that schema
(built before the clock starts, as our benchmarks compile schemas before timing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CppRequest:
    """What one request of a llama.cpp run measured."""

    tokens: int
    seconds: float  # wall time, prefill included
    first_token_seconds: float


def cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo lists AMX tiles."""
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class LlamaCppBaseline:
    """One llama.cpp context over ``gguf`` with ``threads`` threads.

    ``extra_buffers`` is llama.cpp's ``use_extra_bufts`` (weights repacked for AMX or wider SIMD). By default it
    is llama.cpp's own default (on) except on a CPU with AMX: there llama.cpp 0.3.36's AMX matmul crashes the
    process (SIGSEGV in ggml_backend_amx_mul_mat at the first prompt), so llama.cpp runs its AVX-512 kernels.
    """

    def __init__(self, gguf: Path, threads: int, n_ctx: int = 4096, extra_buffers: bool | None = None) -> None:
        import llama_cpp.llama_cpp as api
        from llama_cpp import Llama

        defaults = api.llama_model_default_params
        if extra_buffers is None:
            extra_buffers = not cpu_has_amx()

        def model_params():
            params = defaults()
            params.use_extra_bufts = extra_buffers
            return params

        api.llama_model_default_params = model_params  # Llama() has no argument for it
        try:
            self.llm = Llama(
                model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
            )
        finally:
            api.llama_model_default_params = defaults
        self._grammars: dict[str, object] = {}

    @staticmethod
    def available() -> bool:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return False
        return True

    def prepare(self, json_schema: str) -> bool:
        """Build (once) llama.cpp's grammar for a JSON schema; False if llama.cpp refuses the schema."""
        from llama_cpp import LlamaGrammar

        if json_schema not in self._grammars:
            try:
                self._grammars[json_schema] = LlamaGrammar.from_json_schema(json_schema, verbose=False)
            except Exception:  # its converter raises assorted errors on schemas it does not support
                return False
        return True

    def generate(
        self, ids: list[int], max_new_tokens: int, json_schema: str | None = None, ignore_eos: bool = False
    ) -> CppRequest:
        """Greedy decode of one prompt; stops at end-of-sequence (unless ``ignore_eos``) or after max_new_tokens."""
        grammar = None
        if json_schema is not None:
            if not self.prepare(json_schema):
                raise ValueError("llama.cpp cannot build a grammar for this schema")
            grammar = self._grammars[json_schema]
        self.llm.reset()
        eos = self.llm.token_eos()
        n, first = 0, 0.0
        start = time.perf_counter()
        for token in self.llm.generate(ids, temp=0.0, grammar=grammar):
            n += 1
            if n == 1:
                first = time.perf_counter() - start
            if (token == eos and not ignore_eos) or n == max_new_tokens:
                break
        return CppRequest(n, time.perf_counter() - start, first)
