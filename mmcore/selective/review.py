"""The review app: one page where people label the answers the service routed to review (issue 14).

    python -m mmcore.selective.review [--capture DIR ...] [--labels DIR] [--host 127.0.0.1] [--port 3001]

Defaults as the monitor flow resolves them: capture folders from params `monitor.capture_dirs`, else
PARCEL_CAPTURE_DIR's default; the label feed from params `ingest.labels`. The queue and the batches
an answer becomes are mmcore/selective/review_queue.py's.

The page (`GET /`, static/review.html: plain HTML, CSS and JS) loads without a key, because it holds
no data; every `/api` call needs a reviewer's own key (PARCEL_REVIEWER_KEYS `name:key,...` or the file
PARCEL_REVIEWER_KEYS_FILE names) as header `x-api-key` or `Authorization: Bearer`, checked by the service's
own middleware (mmcore/serving/auth.py); the service's key (PARCEL_API_KEY) is refused with a 403, and
every label line records the reviewer's name as `labeller`. The page keeps the key in sessionStorage and
asks again on a 401, which is what a reviewer sees after the key rotated. Without reviewer keys the app
refuses to start unless PARCEL_ALLOW_OPEN=1 (then labels record `anonymous`).

    GET  /api/next                     {"record": <the head of the queue> | null, "waiting", "classes", ...}
    GET  /api/records/<id>/image       the photo as received (image/jpeg or image/png)
    POST /api/records/<id>/label       {"label": "<class>"} -> 201 {"batch_id", ...}; 400, 404, 409
    POST /api/records/<id>/skip        the record moves to the back of the queue (this process only)
"""
from __future__ import annotations

import argparse
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mmcore.config import CLASSES
from mmcore.selective.review_queue import (NotFound, ReviewError, ReviewQueue, check_label, image_bytes,
                                           record_view)
from mmcore.serving.auth import (KEY_ENV, REVIEWERS_ENV, REVIEWERS_FILE_ENV, ApiKeyMiddleware, KeySettingError,
                                 configured_key, require_keys, reviewer_keys)
from mmcore.serving.capture import MONITOR_NAME, CaptureSettings

logger = logging.getLogger("mmcore.review")
PAGE = "static/review.html"
PROTECTED = "/api"


def guarded(path: str) -> bool:
    """Every path under /api: the page itself is static and holds no data."""
    return path == PROTECTED or path.startswith(PROTECTED + "/")


def image_type(data: bytes) -> str:
    """The service takes JPEG and PNG only; anything else is served as bytes, not guessed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def label_of(request: Request) -> str:
    """The body's label, checked; BadLabel (400) says what a good body looks like."""
    body = await request.body()
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ReviewError(f"request body is not JSON ({exc}): send {{\"label\": \"<class>\"}}") from None
    if not isinstance(payload, dict) or "label" not in payload:
        raise ReviewError('request body must be a JSON object with a "label": send {"label": "<class>"}')
    return check_label(payload["label"])


def create_app(queue: ReviewQueue, reviewers: Mapping[str, str], service_key: str | None = None) -> Starlette:
    """The app over `queue`; `reviewers` (name -> key) may use /api, `service_key` gets a 403 there;
    no reviewers: open (main() allows that only with PARCEL_ALLOW_OPEN=1)."""
    page = resources.files("mmcore.selective").joinpath(PAGE).read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def next_record(request: Request) -> Response:
        def head() -> dict[str, Any]:
            pending = queue.pending()
            return {"record": record_view(pending[0]) if pending else None, "waiting": len(pending),
                    "classes": list(CLASSES), "unreadable_lines": queue.unreadable,
                    "lost": queue.lost}

        return JSONResponse(await run_in_threadpool(head), headers={"Cache-Control": "no-store"})

    async def image(request: Request) -> Response:
        pid = request.path_params["prediction_id"]
        data = await run_in_threadpool(lambda: image_bytes(queue.find(pid)))
        if data is None:
            raise NotFound(f"the photo of {pid} is not in the capture store (it came without one, or the "
                           "blob was removed)")
        return Response(data, media_type=image_type(data),
                        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    async def label(request: Request) -> Response:
        pid, chosen = request.path_params["prediction_id"], await label_of(request)
        labeller = request.state.caller
        batch_id = await run_in_threadpool(lambda: queue.answer(pid, chosen, labeller=labeller))
        logger.info("review: %s labelled %s %s (label batch %s)", labeller, pid, chosen, batch_id)
        return JSONResponse({"prediction_id": pid, "label": chosen, "batch_id": batch_id, "labeller": labeller},
                            status_code=201)

    async def skip(request: Request) -> Response:
        pid = request.path_params["prediction_id"]
        await run_in_threadpool(queue.skip, pid)
        return JSONResponse({"prediction_id": pid, "skipped": True})

    async def refused(request: Request, exc: Exception) -> Response:
        return error(getattr(exc, "status", 400), str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path} (see GET / and /api/next)")

    routes = [Route("/", index), Route("/api/next", next_record),
              Route("/api/records/{prediction_id}/image", image),
              Route("/api/records/{prediction_id}/label", label, methods=["POST"]),
              Route("/api/records/{prediction_id}/skip", skip, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={ReviewError: refused, HTTPException: http_error})
    app.add_middleware(ApiKeyMiddleware, keys=reviewers, guarded=guarded, hint=" with your current reviewer key",
                       refused={"service": service_key} if service_key else None,
                       refused_error=f"the service's key ({KEY_ENV}) cannot label: use your own reviewer key")
    return app


def resolve_dirs(capture: list[str] | None, labels: str | None, params: Path) -> tuple[list[Path], Path]:
    """Flags first; otherwise params.yaml, as flows/monitor.py's `capture_roots` and ingest read it."""
    if capture and labels:
        return [Path(c) for c in capture], Path(labels)
    from mmcore.config import load_params

    p = load_params(params)
    dirs = capture or list(p.monitor.capture_dirs) or [str(CaptureSettings.from_env().dir)]
    return [Path(d) for d in dirs], Path(labels or p.ingest.labels)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Label the answers the service routed to human review.")
    ap.add_argument("--capture", action="append", metavar="DIR",
                    help="a capture folder (repeat per replica); default: params monitor.capture_dirs, "
                         "else PARCEL_CAPTURE_DIR's default")
    ap.add_argument("--labels", metavar="DIR", help="the label feed; default: params ingest.labels")
    ap.add_argument("--monitor", default=MONITOR_NAME, help="the capture's BentoML monitor name")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="read for the defaults above")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve reviewers on other machines")
    ap.add_argument("--port", type=int, default=3001)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    roots, labels = resolve_dirs(args.capture, args.labels, args.params)
    for root in roots:
        if not (root / "log" / args.monitor).is_dir():
            logger.warning("capture folder %s has no log/%s yet: nothing from it is in the queue", root, args.monitor)
    try:
        reviewers = reviewer_keys()
    except KeySettingError as exc:
        raise SystemExit(f"the review app cannot start: {exc}") from None
    require_keys(reviewers, "the review app", f"{REVIEWERS_ENV} (name:key,...) or {REVIEWERS_FILE_ENV}")
    logger.info("reviewers: %s", ", ".join(sorted(reviewers)) or "none (open)")
    logger.info("review queue over %s; answers go to %s", ", ".join(map(str, roots)), labels)
    import uvicorn

    app = create_app(ReviewQueue(roots, labels, args.monitor), reviewers, configured_key())
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
