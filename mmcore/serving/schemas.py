"""The service's request and answer bodies (pydantic). Every check runs while a request is parsed,
before adaptive batching merges requests: a bad record is a 400 for its own request, never a
failed batch for its neighbours. Errors name the field at fault and never quote the input.

/predict's body is parsed and checked in a worker thread (`PredictInput`), not on the event loop:
each image's header first (format, size, decoded cost), then the request's budget, then the full
decode of each image (mmcore/serving/limits.py), so no pixel is decoded for a request over budget."""
from __future__ import annotations

import base64
import binascii
import functools
import os
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from bentoml import IODescriptor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mmcore.data.checks import Rejected, check_timestamp
from mmcore.schema import RECORD_ID_RE
from mmcore.serving.capture import RequestInfo
from mmcore.serving.limits import (MAX_IMAGE_BYTES, MAX_NOTE_CHARS, MAX_RECORDS, MAX_SENSOR_ROWS, ImageCost,
                                   check_budget, decode_check, image_cost)
from mmcore.serving.middleware import current_request

FloatList = Annotated[list[float], Field(min_length=2, max_length=MAX_SENSOR_ROWS)]


def landing_id(value: str) -> str:
    """shipment_id and hub follow ingest's id rule (RECORD_ID_RE): captured records land with them."""
    if not RECORD_ID_RE.fullmatch(value):
        raise ValueError("must be 1..64 letters, digits, '_' or '-' (the landing contract's id rule)")
    return value


def landing_time(value: str) -> str:
    """captured_at as ingest checks it (ISO 8601 with a timezone, inside ingest's sane window), in UTC."""
    try:
        return check_timestamp(value, "captured_at")
    except Rejected as exc:
        raise ValueError(exc.detail) from None


LandingId = Annotated[str, Field(max_length=64, json_schema_extra={"pattern": "^[A-Za-z0-9_-]{1,64}$"}),
                      AfterValidator(landing_id)]
CaptureTime = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"}),
                        AfterValidator(landing_time)]


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


class CheckedImage(str):
    """A record's base64 image whose header passed, with what decoding it will cost."""

    cost: ImageCost


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    record_id: str | None = Field(None, max_length=64)
    shipment_id: LandingId | None = Field(None, description="the parcel's shipment, as in landing batches; kept "
                                          "when captured traffic lands (without it: one per request, counted)")
    hub: LandingId | None = Field(None, description="the hub code, as in landing batches; kept when captured traffic "
                                  "lands (without it: `unknown`, counted)")
    captured_at: CaptureTime | None = Field(None, description="when the record was captured: ISO 8601 with a timezone, "
                                            "as in landing batches; kept when captured traffic lands (without it: "
                                            "the answer time, counted)")
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
        checked = CheckedImage(v)
        checked.cost = image_cost(data)   # the header only: decoded once the whole request fits its budget
        return checked

    @model_validator(mode="after")
    def some_modality(self) -> "Record":
        if self.image is None and not (self.note or "").strip() and self.sensor is None:
            raise ValueError("no modality present: give at least one of image, note (non-blank) or sensor")
        return self


def decode_within_budget(records: list[Record]) -> list[Record]:
    """The request's images within its budget (413 otherwise), then each decoded in full (400 naming it)."""
    images = [(i, r.image) for i, r in enumerate(records) if r.image is not None]
    check_budget([getattr(im, "cost", None) or image_cost(base64.b64decode(im)) for _, im in images])
    for i, im in images:
        try:
            decode_check(base64.b64decode(im))
        except ValueError as exc:
            raise ValueError(f"records[{i}].image: {exc}") from None
    return records


Records = Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS), AfterValidator(decode_within_budget)]


PARSE_THREADS = min(4, os.cpu_count() or 1)   # bodies parsed at once: each may decode a budget's pixels
_parse_limiter: anyio.CapacityLimiter | None = None


class PredictInput(IODescriptor):
    """/predict's body. BentoML parses a body on the event loop (`from_http_request`, then the API
    function in its thread pool); here the parse, the checks and the decodes run in a worker thread,
    so a costly request never stalls /healthz or other requests, and still ends before adaptive
    batching merges it with others. At most PARSE_THREADS bodies are parsed at once (memory: each may
    hold a budget's decoded pixels); the others wait without holding the loop. The body guard admits
    only application/json here."""

    records: Records

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> "PredictInput":
        global _parse_limiter
        if serde.media_type != "application/json":   # BentoML's own path for what the guard let through
            return await super().from_http_request(request, serde)
        body = await request.body()
        _parse_limiter = _parse_limiter or anyio.CapacityLimiter(PARSE_THREADS)   # needs the running loop
        return await anyio.to_thread.run_sync(functools.partial(cls.model_validate_json, body or b"{}"),
                                              limiter=_parse_limiter)


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
