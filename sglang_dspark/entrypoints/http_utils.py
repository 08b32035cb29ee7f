"""HTTP plumbing shared by the native and OpenAI routes: body parsing, disconnect-aware waiting, SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sglang_dspark.managers.io_struct import TokenizedGenerateReqInput
from sglang_dspark.managers.scheduler_client import SCHEDULER_DIED, RequestGroup, SchedulerClient, SchedulerUnavailable
from sglang_dspark.managers.tokenizer_manager import RequestState


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object; ValueError (-> 400) with the parser's message otherwise."""
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ValueError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def _inline_refs(node: Any, defs: dict) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def json_body(model: type) -> dict:
    """`openapi_extra` that documents `model` (pydantic model or dataclass, not recursive) as a route's JSON
    body, for routes that parse the body themselves (read_json_object) to answer bad input with a 400."""
    schema = TypeAdapter(model).json_schema()
    schema = _inline_refs(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def sse_event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _until_disconnected(request: Request) -> None:
    # the body is already read, so the next ASGI message is the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_to_completion(
    request: Request, client: SchedulerClient, reqs: list[TokenizedGenerateReqInput], with_text: bool
) -> list[RequestState]:
    """Run `reqs` and return their final states; a client that disconnects first aborts them."""
    async with client.open(reqs, with_text) as group:
        work = asyncio.ensure_future(group.wait_finished())
        watcher = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()
            watcher.cancel()
        if not group.finished:
            raise ClientDisconnect()
    if client.died:  # the requests were failed, not finished: a 503 says so
        raise SchedulerUnavailable(f"{SCHEDULER_DIED}; the server is shutting down")
    return group.states


class _GroupStreamingResponse(StreamingResponse):
    """Closes the request group's exit stack (aborting what is unfinished) however the stream ends."""

    def __init__(self, content: AsyncIterator[str], stack: AsyncExitStack) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.stack:
            await super().__call__(scope, receive, send)


async def stream_events(
    client: SchedulerClient,
    reqs: list[TokenizedGenerateReqInput],
    with_text: bool,
    events: Callable[[RequestGroup], AsyncIterator[dict]],
) -> StreamingResponse:
    """SSE response `data: {json}` for each payload of `events(group)`, then `data: [DONE]`.

    The requests are submitted before the response starts, so a rejection is still a plain 400.
    """
    stack = AsyncExitStack()
    group = await stack.enter_async_context(client.open(reqs, with_text))

    async def body() -> AsyncIterator[str]:
        async for payload in events(group):
            yield sse_event(payload)
        if client.died:  # the status line is long sent: the stream's last event carries the error
            yield sse_event({"error": {"message": f"{SCHEDULER_DIED}; the server is shutting down", "code": 503}})
        yield "data: [DONE]\n\n"

    return _GroupStreamingResponse(body(), stack)
