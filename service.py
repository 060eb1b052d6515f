"""BentoML service: the champion parcel-condition model over HTTP (DESIGN §5).

POST /predict takes {"records": [...]}; each record may carry a note, an image
as base64 and sensor channels as arrays, and any of them may be missing.
Every check runs while the request is parsed (pydantic: mmcore/serving/schemas.py, limits.py), in a
worker thread, before adaptive batching merges requests: a bad record is a 400 for its own request, never
a failed batch for its neighbours; images that decode past the request's budget are a 413. Errors name
the field at fault; logs never carry the payload (guards.py).
Every answered record gets a prediction_id and is captured (mmcore/serving/capture.py, by adapter.py)
for the capture step that lands served traffic as ordinary batches; capture never fails a request.
This module is only the BentoML wiring that bentofile.yaml names (`service:ParcelCondition`).
"""
from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field

from mmcore.config import CLASSES
from mmcore.serving.adapter import answer, warm_up_record
from mmcore.serving.auth import KEY_ENV, SERVICE, ApiKeyMiddleware, configured_key, require_keys, service_middleware
from mmcore.serving.capture import Capture, CaptureSettings
from mmcore.serving.guards import BodyGuard, ClientErrorsWithoutPayload, guarded
from mmcore.serving.limits import MAX_IMAGE_BYTES, MAX_NOTE_CHARS, check_image_bytes
from mmcore.serving.middleware import CaptureMiddleware
from mmcore.serving.runtime import load_predictor, threads_setting
from mmcore.serving.schemas import CaptureTime, LandingId, PredictInput, Prediction, Record, Records, Sensor


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

# Capture of answered traffic: PARCEL_CAPTURE_DIR, _SAMPLE, _QUEUE, _QUEUE_BYTES, _MAX_BYTES, _RETENTION_DAYS
# (docs/serving.md: capture).
CAPTURE = CaptureSettings.from_env()


@bentoml.service(traffic={"timeout": 60}, resources={"cpu": "2"}, monitoring=CAPTURE.monitoring_config())
class ParcelCondition:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
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

    @bentoml.on_deployment
    def closed_by_default() -> None:
        """`bentoml serve` stops here, before any worker starts, when no key is set, unless PARCEL_ALLOW_OPEN=1
        says the service is open on purpose (then a warning here and an x-auth-warning header on every answer)."""
        key = configured_key()
        require_keys({SERVICE: key} if key else {}, "the service", KEY_ENV)

    def __is_ready__(self) -> bool:
        """/readyz: 200 only once the model is loaded and a warm-up prediction has run."""
        return self.ready

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS,
                 input_spec=PredictInput)   # parsed and checked in a worker thread, not on the event loop
    def predict(self, records: Records) -> list[Prediction]:
        """Label, class probabilities, the modalities used and the model version, per record."""
        return self._predict(records)

    def _predict(self, records: list[Record]) -> list[Prediction]:
        return answer(self.predictor, self.version, self.capture, records)

    @bentoml.api(route="/predict_file")
    def predict_file(self, image: Path, note: Annotated[str | None, Field(max_length=MAX_NOTE_CHARS)] = None,
                     sensor: Sensor | None = None, shipment_id: LandingId | None = None,
                     hub: LandingId | None = None, captured_at: CaptureTime | None = None) -> Prediction:
        """Multipart form: one image file plus optional `note` and `sensor` (a JSON object of channel arrays)."""
        # a sync API: this runs in BentoML's thread pool, so the image checks and decode are off the event loop
        if (size := Path(image).stat().st_size) > MAX_IMAGE_BYTES:
            raise bentoml.exceptions.InvalidArgument(f"image: {size} bytes, limit {MAX_IMAGE_BYTES}")
        data = Path(image).read_bytes()
        try:
            check_image_bytes(data)   # header, the request's budget (413), then the full decode
        except ValueError as exc:
            raise bentoml.exceptions.InvalidArgument(f"image: {exc}") from None
        rec = Record.model_construct(record_id=None, note=note, image=base64.b64encode(data).decode(), sensor=sensor,
                                     shipment_id=shipment_id, hub=hub, captured_at=captured_at)
        return self._predict([rec])[0]

    @bentoml.api(route="/labels")
    def labels(self) -> dict[str, Any]:
        return {"labels": list(CLASSES), "model_version": self.version}


ParcelCondition.add_asgi_middleware(CaptureMiddleware)  # outermost: every answer, a 401 too, has x-request-id
# before BodyGuard: no body is read before the key is checked
ParcelCondition.add_asgi_middleware(ApiKeyMiddleware, **service_middleware(guarded))
ParcelCondition.add_asgi_middleware(BodyGuard)
