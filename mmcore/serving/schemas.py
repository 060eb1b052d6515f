"""The service's request and answer bodies (pydantic). Every check runs while a request is parsed,
before adaptive batching merges requests: a bad record is a 400 for its own request, never a
failed batch for its neighbours. Errors name the field at fault and never quote the input."""
from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mmcore.serving.capture import RequestInfo
from mmcore.serving.limits import MAX_IMAGE_BYTES, MAX_NOTE_CHARS, MAX_SENSOR_ROWS, check_image_bytes
from mmcore.serving.middleware import current_request

FloatList = Annotated[list[float], Field(min_length=2, max_length=MAX_SENSOR_ROWS)]
# shipment_id and hub follow the landing id rule: captured records land with them (DESIGN §2)
LandingId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


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
