"""The ASGI middleware on its own: a fake app, a scripted ``receive`` and a recorded ``send``, no server."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app import middleware
from app.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestLogMiddleware, StartupErrorMiddleware

Message = dict[str, Any]


def http_scope(path: str = "/segment", method: str = "POST", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "path": path, "method": method, "headers": raw}


class App:
    """Records what reached it; answers 200 with the body it read (or raises ``fail`` before answering)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.received: list[Message] = []
        self.fail = fail

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append(scope)
        if scope["type"] != "http":
            await send({"type": "lifespan.startup.failed", "message": "Traceback (most recent call last)"})
            return
        body = b""
        while True:
            message = await receive()
            self.received.append(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def run(middleware: Any, scope: dict[str, Any], messages: list[Message] | None = None) -> list[Message]:
    """Drive ``middleware`` once; ``messages`` are what the client sends. Returns what it sent back."""
    pending = list(messages if messages is not None else chunks(b""))
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def chunks(*parts: bytes) -> list[Message]:
    last = len(parts) - 1
    return [{"type": "http.request", "body": part, "more_body": i < last} for i, part in enumerate(parts)]


def answer(sent: list[Message]) -> tuple[int, dict[str, str], Any]:
    start, body = sent
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    raw = body["body"]
    is_json = headers.get("content-type") == "application/json"
    return start["status"], headers, json.loads(raw) if is_json else raw


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the body limit ----------------------------------------------------------------------------------------

def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    app, before = App(), counted("petseg_rejected_total", reason="too_large")
    sent = run(BodyLimitMiddleware(app, max_bytes=10), http_scope(content_length="11"), [])
    status, headers, body = answer(sent)
    assert (status, body) == (413, {"detail": "request body is larger than the limit of 10 bytes"})
    assert headers["content-length"] == str(len(sent[1]["body"]))
    assert app.calls == [] and counted("petseg_rejected_total", reason="too_large") == before + 1


def test_remove_bg_paths_get_a_400_in_remove_bgs_envelope() -> None:
    sent = run(BodyLimitMiddleware(App(), max_bytes=10), http_scope("/v1.0/removebg", content_length="11"),
               [])
    error = {"title": "File too large", "code": "file_too_large",
             "detail": "request body is larger than the limit of 10 bytes"}
    assert answer(sent)[0::2] == (400, {"errors": [error]})


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_body_of_exactly_the_limit_reaches_the_app_whole(method: str) -> None:
    app = App()
    sent = run(BodyLimitMiddleware(app, max_bytes=10), http_scope(method=method, content_length="10"),
               chunks(b"abcd", b"efgh", b"ij"))
    assert answer(sent) == (200, {}, b"abcdefghij")
    assert app.received == [{"type": "http.request", "body": b"abcdefghij", "more_body": False}]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_stream_past_the_limit_is_refused_whatever_length_it_declared(method: str) -> None:
    app, before = App(), counted("petseg_rejected_total", reason="too_large")
    sent = run(BodyLimitMiddleware(app, max_bytes=10), http_scope(method=method, content_length="4"),
               chunks(b"abcd", b"efgh", b"ijk"))
    assert answer(sent)[0] == 413 and app.calls == []
    assert counted("petseg_rejected_total", reason="too_large") == before + 1


def test_reads_without_a_body_pass_untouched() -> None:
    app = App()
    messages = chunks(b"abcdefghijklmnop")
    run(BodyLimitMiddleware(app, max_bytes=10), http_scope(method="GET"), messages)
    assert app.received == chunks(b"abcdefghijklmnop")  # not buffered, not refused


def test_a_client_gone_mid_upload_ends_the_request_quietly() -> None:
    app = App()
    sent = run(BodyLimitMiddleware(app, max_bytes=10), http_scope(), [
        {"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}])
    assert sent == [] and app.calls == []


def test_after_the_replay_the_app_reads_the_client_again() -> None:
    """The buffered body is replayed once; a second receive (waiting for a disconnect) goes to the client."""
    seen: list[Message] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.extend([await receive(), await receive()])

    run(BodyLimitMiddleware(app, max_bytes=10), http_scope(), chunks(b"ab"))
    assert seen == [{"type": "http.request", "body": b"ab", "more_body": False}, {"type": "http.disconnect"}]


# --- the API key -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{"x_api_key": "s3cret"}, {"authorization": "Bearer s3cret"},
                                     {"authorization": "bearer   s3cret "}])
def test_the_key_opens_the_api(headers: dict[str, str]) -> None:
    app = App()
    assert answer(run(ApiKeyMiddleware(app, "s3cret"), http_scope(**headers)))[0] == 200
    assert len(app.calls) == 1


@pytest.mark.parametrize("headers", [{}, {"x_api_key": "wrong"}, {"authorization": "Bearer wrong"},
                                     {"authorization": "Basic s3cret"}, {"authorization": "Bearers3cret"},
                                     {"x_api_key": "wrong", "authorization": "Bearer s3cret"}])
def test_a_missing_or_wrong_key_is_a_401_that_asks_for_a_bearer(headers: dict[str, str]) -> None:
    app, before = App(), counted("petseg_rejected_total", reason="unauthorized")
    status, sent_headers, body = answer(run(ApiKeyMiddleware(app, "s3cret"), http_scope(**headers)))
    assert (status, body) == (401, {"detail": "missing or wrong API key (send X-API-Key)"})
    assert sent_headers["www-authenticate"] == "Bearer"
    assert app.calls == [] and counted("petseg_rejected_total", reason="unauthorized") == before + 1


def test_remove_bg_paths_refuse_a_wrong_key_with_its_403() -> None:
    status, headers, body = answer(run(ApiKeyMiddleware(App(), "s3cret"), http_scope("/v1.0/removebg")))
    assert (status, body) == (403, {"errors": [{"title": "Authentication failed", "code": "auth_failed",
                                                "detail": "missing or wrong API key (send X-Api-Key)"}]})
    assert "www-authenticate" not in headers


@pytest.mark.parametrize(("path", "method"), [("/health", "GET"), ("/ready", "GET"), ("/", "GET"),
                                              ("/segment", "OPTIONS")])
def test_probes_the_page_and_preflights_need_no_key(path: str, method: str) -> None:
    app = App()
    assert answer(run(ApiKeyMiddleware(app, "s3cret"), http_scope(path, method)))[0] == 200


@pytest.mark.parametrize("key", [None, ""])
def test_without_a_configured_key_everything_passes(key: str | None) -> None:
    assert answer(run(ApiKeyMiddleware(App(), key), http_scope("/models", "GET")))[0] == 200


# --- request ids, logs, metrics ----------------------------------------------------------------------------

def test_each_request_is_logged_once_with_its_id_status_and_bytes(caplog: pytest.LogCaptureFixture) -> None:
    before = counted("petseg_http_requests_total", method="POST", route="/segment", status="200")
    with caplog.at_level(logging.INFO, logger="app.access"):
        sent = run(RequestLogMiddleware(App()), http_scope(x_request_id="abc-1"), chunks(b"1234", b"567"))
    assert answer(sent)[1] == {"x-request-id": "abc-1"}
    (record,) = caplog.records
    assert record.getMessage().startswith("id=abc-1 POST /segment status=200 bytes_in=7 ms=")
    assert counted("petseg_http_requests_total", method="POST", route="/segment", status="200") == before + 1


def test_a_request_id_is_made_when_none_is_sent_and_a_long_one_is_cut() -> None:
    made = answer(run(RequestLogMiddleware(App()), http_scope()))[1]["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    other = answer(run(RequestLogMiddleware(App()), http_scope()))[1]["x-request-id"]
    assert other != made
    long = answer(run(RequestLogMiddleware(App()), http_scope(x_request_id="x" * 100)))[1]["x-request-id"]
    assert long == "x" * 64


def test_unknown_paths_share_one_route_label_and_latency_is_observed() -> None:
    before = counted("petseg_http_requests_total", method="GET", route="other", status="200")
    seen = counted("petseg_http_request_seconds_count", route="other")
    run(RequestLogMiddleware(App()), http_scope("/wp-admin/setup.php", "GET"))
    assert counted("petseg_http_requests_total", method="GET", route="other", status="200") == before + 1
    assert counted("petseg_http_request_seconds_count", route="other") == seen + 1


def test_an_app_that_fails_before_answering_is_counted_as_a_500(caplog: pytest.LogCaptureFixture) -> None:
    before = counted("petseg_http_requests_total", method="POST", route="/segment", status="500")
    with caplog.at_level(logging.INFO, logger="app.access"), pytest.raises(RuntimeError):
        run(RequestLogMiddleware(App(fail=RuntimeError("boom"))), http_scope())
    assert counted("petseg_http_requests_total", method="POST", route="/segment", status="500") == before + 1
    assert "status=500" in caplog.records[0].getMessage()


def test_lifespan_passes_through_the_log_middleware() -> None:
    app = App()
    sent = run(RequestLogMiddleware(app), {"type": "lifespan"})
    assert app.calls == [{"type": "lifespan"}] and sent[0]["type"] == "lifespan.startup.failed"


# --- start-up errors ---------------------------------------------------------------------------------------

def test_a_failed_start_up_says_the_recorded_reason_in_one_line() -> None:
    sent = run(StartupErrorMiddleware(App(), lambda: "checkpoint not found: x.pt"), {"type": "lifespan"})
    assert sent == [{"type": "lifespan.startup.failed",
                     "message": "petseg cannot start: checkpoint not found: x.pt"}]


def test_without_a_recorded_reason_the_start_up_message_is_left_alone() -> None:
    sent = run(StartupErrorMiddleware(App(), lambda: None), {"type": "lifespan"})
    assert sent[0]["message"].startswith("Traceback")


def test_requests_pass_the_start_up_middleware_untouched() -> None:
    app = App()
    assert answer(run(StartupErrorMiddleware(app, lambda: "reason"), http_scope()))[0] == 200


def test_the_log_gives_the_time_taken_in_milliseconds(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.25])
    monkeypatch.setattr(middleware.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="app.access"):
        run(RequestLogMiddleware(App()), http_scope())
    assert caplog.records[0].getMessage().endswith(" ms=250.0")


def test_optional_asgi_keys_may_be_left_out() -> None:
    """ASGI lets a scope omit ``headers`` and a message omit ``body``, ``more_body`` and ``headers``."""
    app = App()
    scope = {"type": "http", "path": "/segment", "method": "POST"}
    sent = run(RequestLogMiddleware(BodyLimitMiddleware(ApiKeyMiddleware(app, None), max_bytes=10)), scope,
               [{"type": "http.request"}])
    assert answer(sent)[0] == 200 and app.received == chunks(b"")

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    sent = run(RequestLogMiddleware(bare), http_scope())
    assert sent[0]["headers"][0][0] == b"x-request-id"
