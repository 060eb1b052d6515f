"""BentoML service: the champion parcel-condition model over HTTP (DESIGN §5).

POST /predict takes {"records": [...]}; each record may carry a note, an image
as base64 and sensor channels as arrays, and any of them may be missing.
Malformed input is refused with a 400 that names the field at fault.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcore.config import CLASSES

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_SENSOR_ROWS = 5000
MAX_NOTE_CHARS = 10_000
MAX_RECORDS = 256
MODEL_TAG = os.environ.get("PARCEL_MODEL_TAG", "parcel-condition:latest")

FloatList = Annotated[list[float], Field(min_length=2, max_length=MAX_SENSOR_ROWS)]


class Sensor(BaseModel):
    """Channels as equal-length arrays; `t_s` optional (fixed rate assumed without it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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
    model_config = ConfigDict(extra="forbid")
    record_id: str | None = Field(None, max_length=64)
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)
    image: str | None = Field(None, description="JPEG or PNG bytes, base64-encoded",
                              max_length=MAX_IMAGE_BYTES * 4 // 3 + 8)
    sensor: Sensor | None = None

    @field_validator("image")
    @classmethod
    def base64_image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image is not valid base64: {exc}") from exc
        return v


class Prediction(BaseModel):
    record_id: str | None
    label: str
    probabilities: dict[str, float]
    modalities: list[str]
    model_version: str


def to_mmcore(rec: Record) -> dict[str, Any]:
    return {"note": rec.note, "image": base64.b64decode(rec.image) if rec.image else None,
            "sensor": rec.sensor.model_dump() if rec.sensor else None}


def check_images(records: list[Record], limit_pixels: int = 40_000_000) -> None:
    """Decode every image before inference so a bad one is a 400 for that record, not a 500."""
    from mmcore.preprocess import decode_image
    from PIL import Image

    for i, rec in enumerate(records):
        if not rec.image:
            continue
        data = base64.b64decode(rec.image)
        if len(data) > MAX_IMAGE_BYTES:
            raise bentoml.exceptions.InvalidArgument(f"records[{i}].image: {len(data)} bytes, limit {MAX_IMAGE_BYTES}")
        try:
            import io

            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > limit_pixels:
                    raise bentoml.exceptions.InvalidArgument(
                        f"records[{i}].image: {img.width}x{img.height} exceeds {limit_pixels} pixels")
            decode_image(data)
        except bentoml.exceptions.InvalidArgument:
            raise
        except Exception as exc:
            raise bentoml.exceptions.InvalidArgument(
                f"records[{i}].image: not a decodable JPEG/PNG ({type(exc).__name__})") from exc


OPEN_PATHS = ("/healthz", "/readyz", "/livez", "/metrics", "/docs", "/docs.json")


class ApiKeyMiddleware:
    """With PARCEL_API_KEY set, every call but health, metrics and docs needs header `x-api-key`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.key = os.environ.get("PARCEL_API_KEY") or None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key and scope["type"] == "http" and not scope["path"].startswith(OPEN_PATHS):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"x-api-key", b"").decode("latin-1") != self.key:
                from starlette.responses import JSONResponse

                await JSONResponse({"error": "missing or wrong x-api-key header"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@bentoml.service(traffic={"timeout": 60}, resources={"cpu": "2"})
class ParcelCondition:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from mmcore.predict import load_model

        self.predictor = load_model(self.model_ref.path)
        self.version = str(self.model_ref.info.metadata.get("model_version", self.model_ref.tag.version))
        self.predictor.predict([{"note": "warm-up", "image": None, "sensor": None}])

    @bentoml.api
    def predict(self, records: Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)]
                ) -> list[Prediction]:
        return self._predict(records)

    def _predict(self, records: list[Record]) -> list[Prediction]:
        check_images(records)
        for i, rec in enumerate(records):
            if rec.image is None and not (rec.note or "").strip() and rec.sensor is None:
                raise bentoml.exceptions.InvalidArgument(
                    f"records[{i}]: no modality (image, note or sensor) present")
        preds = self.predictor.predict([to_mmcore(r) for r in records])
        return [Prediction(record_id=r.record_id, model_version=self.version, **p)
                for r, p in zip(records, preds)]

    @bentoml.api(route="/predict_file")
    def predict_file(self, image: Path, note: Annotated[str | None, Field(max_length=MAX_NOTE_CHARS)] = None,
                     sensor: Sensor | None = None) -> Prediction:
        """Multipart form: one image file plus optional `note` and `sensor` (a JSON object of channel arrays)."""
        data = Path(image).read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            raise bentoml.exceptions.InvalidArgument(f"image: {len(data)} bytes, limit {MAX_IMAGE_BYTES}")
        return self._predict([Record(note=note, image=base64.b64encode(data).decode(), sensor=sensor)])[0]

    @bentoml.api(route="/labels")
    def labels(self) -> dict[str, Any]:
        return {"labels": list(CLASSES), "model_version": self.version}


ParcelCondition.add_asgi_middleware(ApiKeyMiddleware)
