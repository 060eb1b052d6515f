"""ASGI middleware of the service: a request id on every answer, the capture state on the probes.

BentoML merges the records of concurrent requests into one batch before `predict` runs, so a
request's id cannot be read there; it is set in a context variable here, read when the request's
records are parsed (still in the request's own task), and travels with each record object.
"""
from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from mmcore.serving.capture import RequestInfo, current

REQUEST_ID_HEADER = "x-request-id"
_REQUEST: ContextVar[RequestInfo | None] = ContextVar("parcel_request", default=None)


def current_request() -> RequestInfo:
    """The HTTP request being parsed; a fresh one outside a request (the class called directly)."""
    return _REQUEST.get() or RequestInfo()


def capture_headers() -> list[tuple[bytes, bytes]]:
    """`x-capture: ok|degraded` and, when degraded, `x-capture-reason` (e.g. store_full)."""
    cap = current()
    if cap is None:
        return [(b"x-capture", b"off")]
    status = cap.status()
    headers = [(b"x-capture", status["capture"].encode())]
    if status["reason"]:
        headers.append((b"x-capture-reason", status["reason"].encode()))
    return headers


class CaptureMiddleware:
    """Every HTTP answer gets `x-request-id` (the id captured with its records); `/readyz` keeps
    BentoML's status and body and gains the `x-capture` headers, so a capture problem never takes
    the service out of rotation; `GET /capturez` answers the capture status as JSON (200 ok,
    503 degraded: for alerting, never for readiness)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/capturez" and scope.get("method") == "GET":
            await self.capturez(send)
            return
        info = RequestInfo()
        extra = [(REQUEST_ID_HEADER.encode(), info.request_id.encode())]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                more = capture_headers() if path == "/readyz" else []
                message = {**message, "headers": [*message.get("headers", []), *extra, *more]}
            await send(message)

        token = _REQUEST.set(info)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _REQUEST.reset(token)

    @staticmethod
    async def capturez(send: Any) -> None:
        cap = current()
        status = cap.status() if cap is not None else {"capture": "off", "reason": "service not started"}
        body = json.dumps(status).encode()
        await send({"type": "http.response.start", "status": 200 if status["capture"] == "ok" else 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
