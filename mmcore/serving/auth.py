"""The API key, one check for the service and the review app (PARCEL_API_KEY).

A guarded HTTP call needs header `x-api-key: <key>` or `Authorization: Bearer <key>` (what
`bentoml.SyncHTTPClient(token=)` sends); without a key set every call passes.
"""
from __future__ import annotations

import hmac
import os
from typing import Any, Callable

KEY_ENV = "PARCEL_API_KEY"


def configured_key() -> str | None:
    return os.environ.get(KEY_ENV) or None


class ApiKeyMiddleware:
    """ASGI middleware: a 401 naming the headers for a guarded path called without the key."""

    def __init__(self, app: Any, key: str | None, guarded: Callable[[str], bool], hint: str = "") -> None:
        self.app = app
        self.key = (key or "").encode("latin-1") or None
        self.guarded = guarded
        self.error = "missing or wrong API key: send header x-api-key or Authorization: Bearer" + hint

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key and scope["type"] == "http" and self.guarded(scope.get("path", "")):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, self.key):
                from starlette.responses import JSONResponse

                await JSONResponse({"error": self.error}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
