"""The HTTP server: FastAPI app with SGLang's native API, the OpenAI API and /metrics.

This process runs the HTTP server and the tokenizer manager (tokenize, detokenize, per-request
state); the scheduler and the model run in a child process (managers/scheduler_process.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pydantic.dataclasses
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ConfigDict, ValidationError
from starlette.requests import ClientDisconnect
from transformers import AutoTokenizer

from sglang_dspark import __version__
from sglang_dspark.entrypoints.http_guard import (
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    RequestTooLarge,
    error_body,
)
from sglang_dspark.entrypoints.http_utils import json_body, read_json_object, run_to_completion, stream_events
from sglang_dspark.entrypoints.openai_api import router as openai_router
from sglang_dspark.entrypoints.server_state import ServerState, server_state
from sglang_dspark.entrypoints.sglang_fields import GENERATE_FIELDS
from sglang_dspark.managers.metrics import ServerMetrics
from sglang_dspark.managers.scheduler_client import (
    SCHEDULER_DIED,
    RequestGroup,
    SchedulerClient,
    SchedulerUnavailable,
)
from sglang_dspark.managers.tokenizer_manager import GenerateReqInput, TokenizerManager
from sglang_dspark.models.model_source import resolve_model_path
from sglang_dspark.server_args import ServerArgs

logger = logging.getLogger(__name__)

HEALTH_GENERATE_TIMEOUT_S = 120.0
# on SIGTERM / SIGINT: stop accepting, let in-flight requests finish this long, then abort what is left
GRACEFUL_SHUTDOWN_S = 30.0

# GenerateReqInput with type checks and unknown keys rejected, for bodies that come off the wire
_CheckedGenerateReqInput = pydantic.dataclasses.dataclass(
    GenerateReqInput, config=ConfigDict(extra="forbid", strict=True)
)


# SGLang lets these be null (the default) or one value per prompt of a batch
_PER_PROMPT_FIELDS = {"return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0}


def _generate_request(body: dict) -> GenerateReqInput:
    """The /generate body (any SGLang GenerateReqInput field) as our GenerateReqInput; ValueError -> 400."""
    body = GENERATE_FIELDS.strip(body)
    for name, default in _PER_PROMPT_FIELDS.items():
        value = body.get(name)
        if value is None:
            body[name] = default
        elif isinstance(value, list):
            if len(set(map(repr, value))) > 1:
                raise ValueError(f"`{name}` must be the same for every prompt of a batch here, got {value!r}")
            body[name] = value[0] if value else default
    return _CheckedGenerateReqInput(**body)


def _error_message(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors(include_url=False)
        )
    return str(e)


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status_code=status)


router = APIRouter()


@router.post("/generate", openapi_extra=json_body(_CheckedGenerateReqInput))
async def generate(request: Request) -> Response:
    state = server_state(request)
    obj = _generate_request(await read_json_object(request))
    tm = state.tokenizer_manager
    reqs = tm.tokenize(obj)
    multi = not obj.is_single or len(reqs) > 1
    if obj.stream:

        async def events(group: RequestGroup) -> AsyncIterator[dict]:
            async for changed in group.updates():
                for i in changed:
                    chunk = tm.response(group.states[i])
                    yield {**chunk, "index": i} if multi else chunk

        return await stream_events(state.client, reqs, obj.return_text_in_logprobs, events)
    states = await run_to_completion(request, state.client, reqs, obj.return_text_in_logprobs)
    responses = [tm.response(s) for s in states]
    return JSONResponse(responses if multi else responses[0])


@router.get("/health")
async def health(request: Request) -> Response:
    return Response(status_code=200 if server_state(request).client.alive else 503)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """200 once a one-token generation went through the scheduler, 503 otherwise."""
    state = server_state(request)
    obj = GenerateReqInput(
        input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0}, rid=f"health-{uuid.uuid4().hex}"
    )
    async with state.client.open(state.tokenizer_manager.tokenize(obj), False) as group:
        try:
            await asyncio.wait_for(group.wait_finished(), HEALTH_GENERATE_TIMEOUT_S)
        except TimeoutError:
            return Response(status_code=503)
    ok = group.states[0].finished_reason["type"] != "abort"
    return Response(status_code=200 if ok else 503)


@router.get("/model_info")
@router.get("/get_model_info")
async def model_info(request: Request) -> dict:
    state = server_state(request)
    return {
        "model_path": state.model_path,
        "tokenizer_path": state.tokenizer_path,
        "served_model_name": state.served_model_name,
        "is_generation": True,
        "context_length": state.info.context_len,
        "vocab_size": state.info.vocab_size,
    }


@router.get("/server_info")
@router.get("/get_server_info")
async def server_info(request: Request) -> dict:
    state = server_state(request)
    args = dataclasses.asdict(state.server_args)
    args["api_key"] = "<set>" if args["api_key"] else None  # never the key itself
    return {
        **args,
        "max_total_num_tokens": state.info.max_total_tokens,
        "context_length": state.info.context_len,
        "internal_states": [await state.client.internal_state()],
        "version": __version__,
    }


@router.get("/get_load")
async def get_load(request: Request) -> list[dict]:
    """SGLang's load report, one entry per data-parallel rank of this server (one): what sglang-router's
    load monitor reads (``num_tokens``: KV slots held by running requests)."""
    state = await server_state(request).client.internal_state()
    return [
        {
            "dp_rank": 0,
            "num_reqs": state["num_running_reqs"] + state["num_waiting_reqs"],
            "num_waiting_reqs": state["num_waiting_reqs"],
            "num_tokens": state["kv_usage"]["in_use"],
        }
    ]


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request) -> Response:
    if await server_state(request).client.flush_cache():
        return PlainTextResponse("Cache flushed.\n")
    return PlainTextResponse("Cache not flushed: requests are running or waiting.\n", status_code=400)


@router.post("/abort_request")
async def abort_request(request: Request) -> dict:
    body = await read_json_object(request)
    rid, abort_all = body.get("rid"), body.get("abort_all", False)
    if not isinstance(abort_all, bool) or not (abort_all or isinstance(rid, str)):
        raise ValueError("give `rid` (a string) or `abort_all: true`")
    return {"aborted": server_state(request).client.abort(rid, abort_all)}


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        receiver = state.client.start()
        yield
        receiver.cancel()

    app = FastAPI(title="sglang-dspark", version=__version__, lifespan=lifespan)
    app.state.server = state

    @app.exception_handler(ValueError)  # bad input: JSON, types, sampling params, limits (pydantic's too)
    async def bad_request(request: Request, e: ValueError) -> JSONResponse:
        return error_response(request, 400, _error_message(e))

    @app.exception_handler(RequestTooLarge)  # a chunked body that passed --max-request-bytes
    async def too_large(request: Request, e: RequestTooLarge) -> JSONResponse:
        return error_response(request, 413, str(e))

    @app.exception_handler(SchedulerUnavailable)
    async def unavailable(request: Request, e: SchedulerUnavailable) -> JSONResponse:
        return error_response(request, 503, str(e))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=499)  # nobody reads it; the requests are already aborted

    app.include_router(router)
    app.include_router(openai_router)
    if state.metrics is not None:

        @app.get("/metrics")
        async def metrics(request: Request) -> Response:
            body = state.metrics.render(await state.client.internal_state())
            return Response(body, media_type=CONTENT_TYPE_LATEST)

    args = state.server_args
    if args.max_request_bytes:
        app.add_middleware(BodySizeLimitMiddleware, limit=args.max_request_bytes)
    if args.api_key:  # added last, so it runs first: no body is read for a request without the key
        app.add_middleware(ApiKeyMiddleware, api_key=args.api_key)
    return app


class _Server(uvicorn.Server):
    """uvicorn.Server that logs the URL once it is accepting connections."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            logger.info("The server is ready at http://%s:%d", self.config.host, self.config.port)


def launch_server(server_args: ServerArgs) -> None:
    """Load the model in a scheduler process, then serve HTTP until interrupted."""
    logging.basicConfig(level=server_args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    model_dir = resolve_model_path(server_args.model_path)
    tokenizer_path = server_args.tokenizer_path or str(model_dir)
    model_path = server_args.model_path or str(model_dir)
    served_model_name = server_args.served_model_name or model_path
    metrics = ServerMetrics(served_model_name) if server_args.enable_metrics else None
    client = SchedulerClient(server_args, model_dir, metrics)
    try:
        state = ServerState(
            server_args=server_args,
            model_path=model_path,
            tokenizer_path=tokenizer_path,
            served_model_name=served_model_name,
            tokenizer_manager=TokenizerManager(AutoTokenizer.from_pretrained(tokenizer_path)),
            client=client,
            metrics=metrics,
            created=int(time.time()),
        )
        config = uvicorn.Config(
            create_app(state),
            host=server_args.host,
            port=server_args.port,
            log_level=server_args.log_level.lower(),
            timeout_keep_alive=5,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        server = _Server(config)
        client.on_death = lambda: setattr(server, "should_exit", True)
        # uvicorn handles SIGTERM (graceful shutdown) and then raises it again under the handler it found:
        # this one turns that into a normal return, so a requested stop exits 0
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        server.run()  # until SIGINT / SIGTERM (in-flight requests finish first) or the scheduler's death
    finally:
        client.close()
    if client.died:  # exit non-zero, so whatever supervises the server restarts it with a fresh scheduler
        logger.error("exiting: %s", SCHEDULER_DIED)
        raise SystemExit(1)
