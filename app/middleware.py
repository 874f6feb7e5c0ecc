"""Pure ASGI middleware: request ids and access logs, body-size limit, API key, one-line start-up errors."""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app import metrics

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "RequestLogMiddleware", "StartupErrorMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("app.access")
KNOWN_ROUTES = {"/", "/segment", "/health", "/ready", "/model", "/models", "/metrics", "/docs",
                "/openapi.json", "/redoc", "/v1.0/removebg", "/v1.0/account"}
# remove.bg-compatible paths answer errors in remove.bg's envelope, and a refused key with its 403.
REMOVEBG_PREFIX = "/v1.0/"


def is_removebg(scope: Scope) -> bool:
    return scope["path"].startswith(REMOVEBG_PREFIX)


def error_body(scope: Scope, message: str, code: str, title: str) -> dict[str, Any]:
    """``{"detail": ...}``, or on remove.bg's paths its envelope with remove.bg's ``code`` and ``title``."""
    if is_removebg(scope):
        return {"errors": [{"title": title, "code": code, "detail": message}]}
    return {"detail": message}


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestLogMiddleware:
    """One log line per request (id, method, path, status, bytes, ms); ``X-Request-ID`` echoed or generated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (_header(scope, b"x-request-id") or uuid.uuid4().hex)[:64]
        started = time.perf_counter()
        status = 500
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, counting_receive, tagged_send)
        finally:
            seconds = time.perf_counter() - started
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            metrics.REQUESTS.labels(scope["method"], route, str(status)).inc()
            metrics.LATENCY.labels(route).observe(seconds)
            log.info("id=%s %s %s status=%d bytes_in=%d ms=%.1f", request_id, scope["method"], scope["path"],
                     status, received, seconds * 1000)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` while they stream in (413), before the multipart parser sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = error_body(scope, f"request body is larger than the limit of {self.max_bytes} bytes",
                             "file_too_large", "File too large")
        status = 400 if is_removebg(scope) else 413  # remove.bg: every problem with the request is a 400
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            metrics.REJECTED.labels("too_large").inc()
            await send_json(send, status, too_big)
            return
        # Buffer up to the limit, then replay: a chunked upload cannot sneak past the declared length.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                metrics.REJECTED.labels("too_large").inc()
                await send_json(send, status, too_big)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKeyMiddleware:
    """When a key is configured, every path but /health, /ready (probes) and the page at / (which asks for the key) needs
    ``X-API-Key`` or ``Authorization: Bearer``. CORS preflights pass: they carry no credentials by design."""

    OPEN_PATHS = frozenset({"/health", "/ready", "/"})

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.api_key is None or scope["type"] != "http" or scope["path"] in self.OPEN_PATHS
                or scope["method"] == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        offered = _header(scope, b"x-api-key")
        bearer = _header(scope, b"authorization")
        if offered is None and bearer and bearer.lower().startswith("bearer "):
            offered = bearer[7:].strip()
        if offered is None or not hmac.compare_digest(offered.encode(), self.api_key):
            metrics.REJECTED.labels("unauthorized").inc()
            if is_removebg(scope):
                await send_json(send, 403, error_body(scope, "missing or wrong API key (send X-Api-Key)",
                                                      "auth_failed", "Authentication failed"))
                return
            await send_json(send, 401, {"detail": "missing or wrong API key (send X-API-Key)"},
                            {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


class StartupErrorMiddleware:
    """Replace the traceback in a failed lifespan start-up with the one-line reason the app recorded."""

    def __init__(self, app: ASGIApp, get_reason: Callable[[], str | None]) -> None:
        self.app = app
        self.get_reason = get_reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def summarising_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.get_reason():
                message = {**message, "message": f"petseg cannot start: {self.get_reason()}"}
            await send(message)

        await self.app(scope, receive, summarising_send)
