"""Guards in front of the model: which paths need the API key, a body guard that refuses oversized
and malformed bodies before BentoML parses them, and a log filter that keeps refused payloads out
of the logs. They run as ASGI middleware (or a logging filter), so a refusal costs no model work."""
from __future__ import annotations

import logging
from typing import Any

import bentoml
from pydantic import ValidationError

from mmcore.serving.limits import MAX_BODY_BYTES

OPEN_PATHS = ("/healthz", "/readyz", "/livez", "/metrics", "/capturez", "/docs.json", "/static_content")


def guarded(path: str) -> bool:
    """With PARCEL_API_KEY set, every call but health, metrics and the OpenAPI page needs the key."""
    return path != "/" and not path.startswith(OPEN_PATHS)


async def _answer(send: Any, receive: Any, scope: dict, status: int, error: str) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"error": error}, status_code=status)(scope, receive, send)


class BodyGuard:
    """Refuses oversized bodies (413) and malformed multipart bodies (400) before BentoML parses them.

    BentoML 1.4 turns starlette's 400 for a multipart body without a boundary, or with broken
    part headers, into a 500 (its catch-all wraps the HTTPException); the schemathesis run
    found it. Multipart bodies are therefore read and parsed here first, then replayed.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _answer(send, receive, scope, 413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        if not headers.get("content-type", "").lower().startswith("multipart/"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                await _answer(send, receive, scope, 413, f"request body over {MAX_BODY_BYTES} bytes")
                return
        body = b"".join(chunks)
        if error := await multipart_error(scope, body):
            await _answer(send, receive, scope, 400, f"malformed multipart body: {error}")
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def multipart_error(scope: dict, body: bytes) -> str | None:
    """The parse error of a multipart body, as starlette (what BentoML uses) reports it, or None."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request({**scope, "app": None}, receive).form()
        await form.close()
    except MultiPartException as exc:
        return exc.message
    except HTTPException as exc:
        return str(exc.detail)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        return type(exc).__name__
    return None


class ClientErrorsWithoutPayload(logging.Filter):
    """BentoML logs a traceback for every refused request; a pydantic error's text quotes the
    offending input, so 4xx are logged as one line with the error type and no exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(getattr(exc, "error_code", None), "value", 500)
        if isinstance(exc, ValidationError) or (isinstance(exc, bentoml.exceptions.BentoMLException) and code < 500):
            record.msg = f"{record.msg} -> client error {type(exc).__name__} (detail returned to the client, not logged)"
            record.exc_info, record.exc_text = None, None
        return True
