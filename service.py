"""BentoML service: the champion parcel-condition model over HTTP (DESIGN §5).

POST /predict takes {"records": [...]}; each record may carry a note, an image
as base64 and sensor channels as arrays, and any of them may be missing.
Every check runs while the request is parsed (pydantic), before adaptive batching
merges requests: a bad record is a 400 for its own request, never a failed batch
for its neighbours. Errors name the field at fault; logs never carry the payload.
Every answered record gets a prediction_id and is captured (mmcore/serving/capture.py) for the
capture step that lands served traffic as ordinary batches; capture never fails a request.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mmcore.config import CLASSES, IMAGE_MIN_SIDE
from mmcore.serving.auth import ApiKeyMiddleware, configured_key
from mmcore.serving.capture import Capture, CaptureSettings, RequestInfo, new_id
from mmcore.serving.middleware import CaptureMiddleware, current_request
from mmcore.serving.runtime import forget_embeddings, threads_setting

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_SENSOR_ROWS = 5000
MAX_NOTE_CHARS = 10_000
MAX_RECORDS = 256
MAX_BODY_BYTES = 64 * 1024 * 1024  # a request body over this is a 413: send fewer records per request


class BentoArgs(BaseModel):
    """Build arguments recorded in the bento (`package` passes the champion's model tag), so bento
    v1 serves model v1 even after v2 joined the model store; from source, PARCEL_MODEL_TAG or latest."""

    model_tag: str = os.environ.get("PARCEL_MODEL_TAG", "parcel-condition:latest")
    backend: str = "auto"   # params.yaml serve.backend, as packaged; PARCEL_BACKEND overrides it when serving


ARGS = bentoml.use_arguments(BentoArgs)
MODEL_TAG = ARGS.model_tag
BACKEND = os.environ.get("PARCEL_BACKEND") or ARGS.backend

# Adaptive batching is off by default (PARCEL_BATCHING=1 turns it on). BentoML 1.4.39's dispatcher
# (bentoml/_internal/marshal/dispatcher.py; its main branch is the same) holds a lone request, the
# model idle, while `n * (wn + dt + o_a) <= wait * 0.95`, `wait` being the mean queue wait of its last
# 50 batches, refreshed at most every 5 s and only when a batch runs: a burst's queueing becomes that
# mean, each later lone request waits as long, and its own wait keeps the mean up. No setting of
# @bentoml.api or of the configuration reaches it (max_batch_size 64 still 9x, max_latency_ms only
# turns the wait into 503s). Measured by `python -m mmcore.bench serve` (reports/bench/serve.json):
# p50 at concurrency 1 after a concurrency-32 run, over before, 17.0 batched (60.6 -> 1,030 ms,
# 2026-12-02, torch) against 1.0-1.25 unbatched; on ONNX Runtime the per-record time falls little with
# the batch (`inproc_ms_by_batch`), so batching buys little throughput for that latency.
# With batching on, max_batch_size and max_latency_ms are the derived ones (`batching.derived`):
# the first size within 10% of the best per-record time, and 32 requests of that size at that time,
# times 10 for a shared machine (the dispatcher answers 503 past it); PARCEL_MAX_BATCH_SIZE and
# PARCEL_MAX_LATENCY_MS override them.
#
# Intra-op threads of the one inference thread (ONNX Runtime or torch; PARCEL_THREADS). Measured on
# the shared 2-core machine, batch 1 in process: torch 44-61 ms with 1 thread, 338-369 ms with 2
# (threads waiting on each other when the cores are busy); the serve bench runs in process with this too.
THREADS = threads_setting()
BATCHING = os.environ.get("PARCEL_BATCHING", "0") != "0"
MAX_BATCH_SIZE = int(os.environ.get("PARCEL_MAX_BATCH_SIZE", "4"))
MAX_LATENCY_MS = int(os.environ.get("PARCEL_MAX_LATENCY_MS", "33800"))

# Capture of answered traffic: PARCEL_CAPTURE_DIR, _SAMPLE, _QUEUE, _QUEUE_BYTES, _MAX_BYTES (README, Serving).
CAPTURE = CaptureSettings.from_env()

FloatList = Annotated[list[float], Field(min_length=2, max_length=MAX_SENSOR_ROWS)]
# shipment_id and hub follow the landing id rule: captured records land with them (DESIGN §2)
LandingId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@dataclass(frozen=True)
class ImageLimits:
    """The fields of IngestConfig that `mmcore.data.checks.check_image` reads: the ingest rules
    (JPEG or PNG, size, pixels, at least `image_min_side` px a side) hold for served images too."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    image_min_side: int = IMAGE_MIN_SIDE   # params `ingest.image_min_side` (the bento has no params.yaml)


def check_image_bytes(data: bytes) -> None:
    """The ingest rules (size, pixels, decompression bombs, full decode), then the serving decode."""
    from mmcore.data.checks import Rejected, check_image
    from mmcore.preprocess import decode_image

    try:
        check_image(data, ImageLimits())  # type: ignore[arg-type]
        decode_image(data)
    except Rejected as exc:
        raise ValueError(f"image refused ({exc.reason.value}): {exc.detail[:200]}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ValueError(f"image is not a decodable JPEG/PNG ({type(exc).__name__})") from None


class Sensor(BaseModel):
    """Channels as equal-length arrays; `t_s` optional (fixed rate assumed without it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)
    t_s: FloatList | None = None
    temperature_c: FloatList
    humidity_pct: FloatList
    shock_g: FloatList
    light_lux: FloatList

    @model_validator(mode="after")
    def same_length(self) -> "Sensor":
        lengths = {k: len(v) for k, v in self.model_dump().items() if v is not None}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"sensor channels must have equal lengths, got {lengths}")
        if self.t_s is not None and any(b <= a for a, b in zip(self.t_s, self.t_s[1:])):
            raise ValueError("sensor.t_s must be strictly increasing")
        return self


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    record_id: str | None = Field(None, max_length=64)
    shipment_id: LandingId | None = Field(None, description="kept when captured traffic lands (default: per request)")
    hub: LandingId | None = Field(None, description="kept when captured traffic lands (default: unknown)")
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)
    image: str | None = Field(None, description="JPEG or PNG bytes, base64-encoded",
                              max_length=(MAX_IMAGE_BYTES + 2) // 3 * 4)
    sensor: Sensor | None = None
    # the HTTP request this record came in (its id, its arrival): batching merges requests later
    _request: RequestInfo = PrivateAttr(default_factory=current_request)

    @field_validator("image")
    @classmethod
    def base64_image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            data = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image is not valid base64: {exc}") from None
        check_image_bytes(data)
        return v

    @model_validator(mode="after")
    def some_modality(self) -> "Record":
        if self.image is None and not (self.note or "").strip() and self.sensor is None:
            raise ValueError("no modality present: give at least one of image, note (non-blank) or sensor")
        return self


class Prediction(BaseModel):
    record_id: str | None
    prediction_id: str = Field(description="unique per answer; name it when a label arrives later")
    label: str
    probabilities: dict[str, float]
    modalities: list[str]
    model_version: str
    prediction_set: list[str] = Field(description="classes kept at selective.alpha: the true class is in it "
                                                  "for at least 1 - alpha of records (conformal)")
    decision: Literal["auto", "review"] = Field(description="auto: act on `label`; review: ask a person")
    review_reason: list[str] = Field(description="why review: set_size, low_confidence, modalities_disagree, "
                                                 "uncalibrated; empty when auto")


def to_mmcore(rec: Record) -> dict[str, Any]:
    return {"note": rec.note, "image": base64.b64decode(rec.image) if rec.image else None,
            "sensor": rec.sensor.model_dump() if rec.sensor else None}


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


def warm_up_record() -> dict[str, Any]:
    """Every modality, so both frozen encoders are loaded before the service says it is ready."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (150, 120, 90)).save(buf, format="JPEG")
    trace = [0.0, 1.0, 0.5]
    return {"note": "warm-up", "image": buf.getvalue(),
            "sensor": {"temperature_c": trace, "humidity_pct": trace, "shock_g": trace, "light_lux": trace}}


@bentoml.service(traffic={"timeout": 60}, resources={"cpu": "2"}, monitoring=CAPTURE.monitoring_config())
class ParcelCondition:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from mmcore.serving.runtime import load_predictor

        logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsWithoutPayload())
        self.ready = False
        self.predictor = load_predictor(self.model_ref.path, BACKEND, THREADS)
        self.version = str(self.model_ref.info.metadata.get("model_version", self.model_ref.tag.version))
        self.predictor.predict([warm_up_record()])
        self.capture = Capture(CAPTURE).start()
        self.ready = True

    @bentoml.on_shutdown
    def close_capture(self) -> None:
        """Write what is still queued (a few seconds at most); the rest is counted as dropped."""
        self.capture.close()

    def __is_ready__(self) -> bool:
        """/readyz: 200 only once the model is loaded and a warm-up prediction has run."""
        return self.ready

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, records: Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)]
                ) -> list[Prediction]:
        """Label, class probabilities, the modalities used and the model version, per record."""
        return self._predict(records)

    def _predict(self, records: list[Record]) -> list[Prediction]:
        inputs = [to_mmcore(r) for r in records]
        preds = self.predictor.predict(inputs)
        forget_embeddings(self.predictor)
        out = [Prediction(record_id=r.record_id, prediction_id=new_id(), model_version=self.version,
                          **{k: v for k, v in p.items() if k != "disagreement"}) for r, p in zip(records, preds)]
        for r, x, p in zip(records, inputs, out):  # O(1) each: a bounded queue, written in the background
            self.capture.offer_answer(r._request, x, p.model_dump(),
                                      {"record_id": r.record_id, "shipment_id": r.shipment_id, "hub": r.hub})
        return out

    @bentoml.api(route="/predict_file")
    def predict_file(self, image: Path, note: Annotated[str | None, Field(max_length=MAX_NOTE_CHARS)] = None,
                     sensor: Sensor | None = None, shipment_id: LandingId | None = None,
                     hub: LandingId | None = None) -> Prediction:
        """Multipart form: one image file plus optional `note` and `sensor` (a JSON object of channel arrays)."""
        data = Path(image).read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            raise bentoml.exceptions.InvalidArgument(f"image: {len(data)} bytes, limit {MAX_IMAGE_BYTES}")
        try:
            check_image_bytes(data)
        except ValueError as exc:
            raise bentoml.exceptions.InvalidArgument(f"image: {exc}") from None
        rec = Record.model_construct(record_id=None, note=note, image=base64.b64encode(data).decode(), sensor=sensor,
                                     shipment_id=shipment_id, hub=hub)
        return self._predict([rec])[0]

    @bentoml.api(route="/labels")
    def labels(self) -> dict[str, Any]:
        return {"labels": list(CLASSES), "model_version": self.version}


ParcelCondition.add_asgi_middleware(CaptureMiddleware)  # outermost: every answer, a 401 too, has x-request-id
# before BodyGuard: no body is read before the key is checked
ParcelCondition.add_asgi_middleware(ApiKeyMiddleware, key=configured_key(), guarded=guarded)
ParcelCondition.add_asgi_middleware(BodyGuard)
