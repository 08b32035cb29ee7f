"""In-process Engine with sglang.Engine's calling convention."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from transformers import AutoTokenizer

from sglang_dspark.managers.cache_manager import KVUsage
from sglang_dspark.managers.scheduler import Scheduler
from sglang_dspark.managers.tokenizer_manager import GenerateReqInput, RequestState, TokenizerManager
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs


class Engine:
    """`Engine(model_path=None, **server_args).generate(prompt_or_list, sampling_params)`.

    Runs the scheduler in the calling thread: a `generate` call with a list of prompts is
    batched continuously; `stream=True` yields cumulative responses as tokens arrive.
    """

    def __init__(self, model_path: str | None = None, **kwargs) -> None:
        self.server_args = ServerArgs(model_path=model_path, **kwargs)
        logging.basicConfig(level=self.server_args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
        self.model_dir = resolve_model_path(self.server_args.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.server_args.tokenizer_path or self.model_dir)
        self.tokenizer_manager = TokenizerManager(self.tokenizer)
        self.scheduler = Scheduler(self.server_args, self.model_dir, self.tokenizer)

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict | list[dict] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool = False,
        stream: bool = False,
    ) -> dict | list[dict] | Iterator[dict]:
        obj = GenerateReqInput(
            text=prompt,
            input_ids=input_ids,
            sampling_params=sampling_params,
            return_logprob=return_logprob,
            logprob_start_len=-1 if logprob_start_len is None else logprob_start_len,
            top_logprobs_num=top_logprobs_num or 0,
            return_text_in_logprobs=return_text_in_logprobs,
            stream=stream,
        )
        reqs = self.tokenizer_manager.tokenize(obj)
        for req in reqs:  # all or nothing: a bad entry rejects the whole call before anything runs
            self.scheduler.validate(req)
        states = {r.rid: RequestState(r, return_text_in_logprobs) for r in reqs}
        if len(states) != len(reqs):
            raise ValueError("request ids must be unique")
        if stream:
            if len(reqs) != 1:
                raise ValueError("stream=True takes a single prompt with n=1")
            return self._stream(states)
        for _ in self._run(states):
            pass
        responses = [self.tokenizer_manager.response(s) for s in states.values()]
        return responses[0] if obj.is_single and len(responses) == 1 else responses

    def _run(self, states: dict[str, RequestState]) -> Iterator[RequestState]:
        for state in states.values():
            self.scheduler.add_request(state.req)
        try:
            while not all(s.finished for s in states.values()):
                for out in self.scheduler.step():
                    if out.rid in states:
                        states[out.rid].update(out)
                        yield states[out.rid]
        finally:  # an exception or a closed stream must not leave requests holding KV
            for rid, state in states.items():
                if not state.finished:
                    self.scheduler.abort_request(rid)

    def _stream(self, states: dict[str, RequestState]) -> Iterator[dict]:
        for state in self._run(states):
            yield self.tokenizer_manager.response(state)

    def flush_cache(self) -> bool:
        return self.scheduler.flush_cache()

    def kv_usage(self) -> KVUsage:
        return self.scheduler.kv_usage()

    def shutdown(self) -> None:
        for req in [*self.scheduler.grammars.queue, *self.scheduler.waiting, *self.scheduler.running]:
            self.scheduler.abort_request(req.rid, "engine shut down")
        self.scheduler.grammars.close()
        self.scheduler.runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
