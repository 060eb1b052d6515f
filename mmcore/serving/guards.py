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


FILE_ROUTES = ("/predict_file",)   # multipart/form-data; every other POST takes application/json
FILE_FIELDS = ("image",)            # their file parts


def media_type_error(method: str, path: str, media_type: str) -> str | None:
    """Why a body's content-type is refused (415), or None. BentoML parses any type it does not know as
    JSON (text/plain passed), reads form fields as JSON, and on a file route takes a JSON or bare body as
    a URL it downloads; so each route gets the one type it is documented with. A JSON route's body
    without a content-type is read as JSON, as BentoML does."""
    if method != "POST":
        return None
    if path.startswith(FILE_ROUTES):
        if media_type != "multipart/form-data":
            return f"content-type {media_type or 'missing'}: send multipart/form-data with the image as a file part"
        return None
    if media_type not in ("application/json", ""):
        return f"content-type {media_type}: send the body as application/json"
    return None


class BodyGuard:
    """Refuses oversized bodies (413), a content-type the route does not take (415) and malformed
    multipart bodies (400) before BentoML parses them.

    A body with a content-length over the limit is refused unread; a chunked body (no content-length)
    is read here, counted against the same limit, then replayed, as multipart bodies are: BentoML
    1.4 turns starlette's 400 for a multipart body without a boundary, or with broken part headers,
    into a 500 (its catch-all wraps the HTTPException); the schemathesis run found it.
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
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if error := media_type_error(scope["method"], scope["path"], media_type):
            await _answer(send, receive, scope, 415, error)
            return
        multipart = media_type.startswith("multipart/")
        if not multipart and "chunked" not in headers.get("transfer-encoding", "").lower():
            await self.app(scope, receive, send)   # the server holds the body to its content-length
            return
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
        except ClientGone:
            return
        if body is None:
            await _answer(send, receive, scope, 413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        if multipart and (error := await multipart_error(scope, body)):
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


class ClientGone(Exception):
    """The client went away before its body was read: nobody to answer."""


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (what was read is dropped at once)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        more = message.get("more_body", False)
    return b"".join(chunks)


async def multipart_error(scope: dict, body: bytes) -> str | None:
    """The parse error of a multipart body, as starlette (what BentoML uses) reports it, or None."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request({**scope, "app": None}, receive).form()
        # BentoML downloads a file field given as text (a URL): a cost nobody measured, and not the API
        file_route = scope["path"].startswith(FILE_ROUTES)
        texts = [k for k in FILE_FIELDS if file_route and isinstance(form.get(k), str)]
        await form.close()
        if texts:
            return f"{texts[0]} must be a file part, not a text field"
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
