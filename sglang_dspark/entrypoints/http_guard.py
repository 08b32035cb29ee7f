"""What every HTTP request passes before a route sees it: the API key and the body size limit.

Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streamed responses).
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Routes that answer without the key: a load balancer's liveness probe carries no credentials.
OPEN_PATHS = frozenset({"/health"})


class RequestTooLarge(ValueError):
    """A body past --max-request-bytes (a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the server's limit of {limit} bytes (--max-request-bytes)")


def error_body(path: str, status: int, message: str) -> dict:
    """Errors in the API's own shape: OpenAI's under /v1, SGLang's elsewhere."""
    if path.startswith("/v1/"):
        kind = {401: "AuthenticationError", 413: "RequestTooLargeError"}.get(
            status, "BadRequestError" if status < 500 else "InternalServerError"
        )
        return {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return {"error": {"message": message}}


async def _send_error(scope: Scope, send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps(error_body(scope["path"], status, message)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route but OPEN_PATHS requires `Authorization: Bearer <api_key>` (SGLang's --api-key);
    anything else is a 401. The key is compared in constant time and never echoed."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            message = "missing or wrong API key: send `Authorization: Bearer <key>`"
            return await _send_error(scope, send, 401, message, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Bodies past `limit` bytes are a 413: at once when Content-Length says so, else (chunked upload)
    as soon as the received bytes pass it, raised from the route's body read as RequestTooLarge."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(scope, send, 413, str(RequestTooLarge(self.limit)))
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestTooLarge(self.limit)
            return message

        await self.app(scope, counted_receive, send)
