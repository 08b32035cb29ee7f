"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (streaming or not)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import accumulate

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sglang_dspark.entrypoints.http_utils import json_body, read_json_object, run_to_completion, stream_events
from sglang_dspark.entrypoints.openai_protocol import ChatCompletionRequest, CompletionRequest
from sglang_dspark.entrypoints.server_state import ServerState, server_state
from sglang_dspark.entrypoints.tool_calls import (
    FORMATS,
    ToolCall,
    ToolCallFormat,
    ToolCallStream,
    ToolPlan,
    template_messages,
    with_tool_prompt,
)
from sglang_dspark.entrypoints.tool_calls import plan as tool_plan
from sglang_dspark.managers.io_struct import TokenLogprob, TopLogprobs
from sglang_dspark.managers.scheduler_client import RequestGroup
from sglang_dspark.managers.tokenizer_manager import GenerateReqInput, RequestState
from sglang_dspark.sampling.sampling_params import SamplingParams

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(request: Request) -> dict:
    state = server_state(request)
    card = {
        "id": state.served_model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "sglang-dspark",
        "root": state.served_model_name,
        "max_model_len": state.info.context_len,
    }
    return {"object": "list", "data": [card]}


@router.post("/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request) -> Response:
    state = server_state(request)
    req = CompletionRequest.model_validate(await read_json_object(request))
    if req.echo and req.logprobs is not None:
        raise ValueError("echo together with logprobs is not supported yet")
    as_text = isinstance(req.prompt, str) or (bool(req.prompt) and isinstance(req.prompt[0], str))
    obj = GenerateReqInput(
        text=req.prompt if as_text else None,
        input_ids=None if as_text else req.prompt,
        sampling_params=req.sampling_params(req.max_tokens),
        rid=req.rid,
        return_logprob=req.logprobs is not None,
        top_logprobs_num=req.logprobs or 0,
    )
    responder = _Responder(state, "text_completion", "cmpl", req.n, req.logprobs is not None)
    reqs = state.tokenizer_manager.tokenize(obj)
    if req.echo:
        responder.prefixes = [state.tokenizer_manager.tokenizer.decode(r.input_ids) for r in reqs]
    if req.stream:
        return await stream_events(state.client, reqs, False, responder.stream(req.include_usage))
    return JSONResponse(responder.complete(await run_to_completion(request, state.client, reqs, False)))


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    req = ChatCompletionRequest.model_validate(await read_json_object(request))
    fmt = FORMATS[state.server_args.tool_call_parser]
    tools = tool_plan(req, fmt)
    prompt_ids = req.input_ids or _apply_chat_template(state.tokenizer_manager.tokenizer, req, fmt, tools)
    max_new_tokens = req.max_completion_tokens or req.max_tokens or state.max_sequence_len - len(prompt_ids)
    sampling_params = req.sampling_params(max_new_tokens)
    if tools.structural_tag is not None:
        given = [k for k in SamplingParams.CONSTRAINT_FIELDS if sampling_params.get(k) is not None]
        if given:
            raise ValueError(f"tools with tool_choice {req.tool_choice!r} cannot be combined with {given[0]}")
        sampling_params["structural_tag"] = json.dumps(tools.structural_tag)
        if tools.only_calls:
            args = state.server_args
            for key, default in (
                ("max_json_string_length", args.tool_call_max_string_length),
                ("max_json_array_items", args.tool_call_max_array_items),
            ):
                if sampling_params[key] is None and default:
                    sampling_params[key] = default
    obj = GenerateReqInput(
        input_ids=prompt_ids,
        sampling_params=sampling_params,
        rid=req.rid,
        return_logprob=req.logprobs,
        top_logprobs_num=req.top_logprobs,
    )
    responder = _Responder(state, "chat.completion", "chatcmpl", req.n, req.logprobs)
    responder.tool_format = fmt if tools.parse else None
    reqs = state.tokenizer_manager.tokenize(obj)
    if req.stream:
        return await stream_events(state.client, reqs, False, responder.stream(req.include_usage))
    return JSONResponse(responder.complete(await run_to_completion(request, state.client, reqs, False)))


_PROBE_MESSAGES = [{"role": "user", "content": "?"}]
_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool", "parameters": {"type": "object"}}}]


def _renders_tools(tokenizer) -> bool:
    """Whether the model's chat template writes the `tools` it is given into the prompt."""
    render = tokenizer.apply_chat_template
    return render(_PROBE_MESSAGES, tools=_PROBE_TOOLS, tokenize=False) != render(_PROBE_MESSAGES, tokenize=False)


def _apply_chat_template(tokenizer, req: ChatCompletionRequest, fmt: ToolCallFormat, tools: ToolPlan) -> list[int]:
    """The prompt: the model's chat template with the tools when it renders them, else the format's tool
    prompt in the system message."""
    try:
        renders = _renders_tools(tokenizer)
        messages = template_messages(req, fmt, renders)
        if tools.functions and not renders:
            messages = with_tool_prompt(messages, fmt.system_prompt(tools.functions))
        return tokenizer.apply_chat_template(
            messages,
            tools=[f.openai() for f in tools.functions] if tools.functions and renders else None,
            add_generation_prompt=not req.continue_final_message,
            continue_final_message=req.continue_final_message,
            tokenize=True,
            return_dict=False,
            **(req.chat_template_kwargs or {}),
        )
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template failed on these messages: {e}") from None


@dataclass
class _Sent:
    """How much of one choice a streaming client has already received."""

    text: str = ""
    logprobs: int = 0
    tool_calls: ToolCallStream | None = None  # chat with tools: what of the calls was sent


class _Responder:
    """Renders the final states of one call (or their progress, streaming) as OpenAI objects."""

    def __init__(self, state: ServerState, kind: str, id_prefix: str, n: int, logprobs: bool) -> None:
        self.tm = state.tokenizer_manager
        self.model = state.served_model_name
        self.kind = kind  # "text_completion" | "chat.completion"
        self.chat = kind == "chat.completion"
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.n = n
        self.logprobs = logprobs
        self.prefixes: list[str] | None = None  # completions with echo: each choice starts with its prompt
        self.tool_format: ToolCallFormat | None = None  # chat with tools: outputs are parsed for calls

    def _text(self, i: int, state: RequestState) -> str:
        text = self.tm.output_text(state)
        return self.prefixes[i] + text if self.prefixes else text

    def _envelope(self, choices: list[dict], object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model, "choices": choices}

    def complete(self, states: list[RequestState]) -> dict:
        choices = [
            self._choice(i, s, self._text(i, s), s.output_token_logprobs, s.output_top_logprobs, streaming=False)
            for i, s in enumerate(states)
        ]
        return {**self._envelope(choices, self.kind), "usage": self._usage(states)}

    def stream(self, include_usage: bool):
        chunk_kind = "chat.completion.chunk" if self.chat else "text_completion"

        async def events(group: RequestGroup) -> AsyncIterator[dict]:
            sent = [_Sent(tool_calls=self.tool_format and ToolCallStream(self.tool_format)) for _ in group.states]
            if self.chat:
                for i in range(len(group.states)):
                    start = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
                    yield self._envelope([{**start, "finish_reason": None}], chunk_kind)
            async for changed in group.updates():
                for i in changed:
                    choice = self._delta(i, group.states[i], sent[i])
                    if choice is not None:
                        yield self._envelope([choice], chunk_kind)
            if include_usage:
                yield {**self._envelope([], chunk_kind), "usage": self._usage(group.states)}

        return events

    def _delta(self, i: int, state: RequestState, sent: _Sent) -> dict | None:
        text = self._text(i, state)
        delta = text[len(sent.text) :] if text.startswith(sent.text) else ""
        sent.text += delta
        calls: list[ToolCall] = []
        if sent.tool_calls is not None:
            delta, calls = sent.tool_calls.delta(text, state.finished)
        entries = state.output_token_logprobs[sent.logprobs :]
        tops = state.output_top_logprobs[sent.logprobs :]
        sent.logprobs = len(state.output_token_logprobs)
        if not (delta or calls or entries or state.finished):
            return None
        choice = self._choice(i, state, delta, entries, tops, streaming=True)
        if calls:
            first = sent.tool_calls.sent_calls - len(calls)
            choice["delta"]["tool_calls"] = [c.openai(index=first + k) for k, c in enumerate(calls)]
        if state.finished and sent.tool_calls is not None and sent.tool_calls.sent_calls:
            choice["finish_reason"] = _tool_calls_finish(choice["finish_reason"])
        return choice

    def _choice(
        self,
        i: int,
        state: RequestState,
        text: str,
        entries: list[TokenLogprob],
        tops: list[TopLogprobs],
        streaming: bool,
    ) -> dict:
        if not self.chat:
            content = {"text": text}
        elif streaming:
            content = {"delta": {"content": text} if text else {}}
        elif self.tool_format is None:
            content = {"message": {"role": "assistant", "content": text}}
        else:
            parsed = self.tool_format.parse(text)
            if not parsed.calls:
                content = {"message": {"role": "assistant", "content": text}}
            else:
                message = {"role": "assistant", "content": parsed.content.strip() or None}
                message["tool_calls"] = [c.openai() for c in parsed.calls]
                finish = _finish(state)
                finish["finish_reason"] = _tool_calls_finish(finish["finish_reason"])
                logprobs = self._logprobs(entries, tops) if self.logprobs else None
                return {"index": i, "message": message, "logprobs": logprobs, **finish}
        logprobs = self._logprobs(entries, tops) if self.logprobs else None
        return {"index": i, **content, "logprobs": logprobs, **_finish(state)}

    def _logprobs(self, entries: list[TokenLogprob], tops: list[TopLogprobs]) -> dict:
        decode = self.tm.tokenizer.decode
        if self.chat:

            def item(lp: float, tid: int) -> dict:
                token = decode([tid])
                return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

            content = [
                {**item(lp, tid), "top_logprobs": [item(a, b) for a, b in top or []]}
                for (lp, tid), top in zip(entries, tops)
            ]
            return {"content": content}
        tokens = [decode([tid]) for _, tid in entries]
        offsets = [0, *accumulate(len(t) for t in tokens)][: len(tokens)]
        return {
            "tokens": tokens,
            "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [None if top is None else {decode([b]): a for a, b in top} for top in tops],
            "text_offset": offsets,
        }

    def _usage(self, states: list[RequestState]) -> dict:
        firsts = states[:: self.n]  # the n samples of a prompt share it: count it once
        prompt = sum(len(s.req.input_ids) for s in firsts)
        completion = sum(s.completion_tokens for s in states)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(s.cached_tokens for s in firsts)},
        }


def _tool_calls_finish(reason: str | None) -> str | None:
    """OpenAI's finish_reason of an answer with calls: "tool_calls" where it stopped by itself."""
    return "tool_calls" if reason == "stop" else reason


def _finish(state: RequestState) -> dict:
    reason = state.finished_reason
    if reason is None:
        return {"finish_reason": None}
    return {"finish_reason": reason["type"], "matched_stop": reason.get("matched")}
