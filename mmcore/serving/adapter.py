"""The predictor adapter: validated records to the inputs a runtime predictor takes
(mmcore.serving.runtime, ONNX or torch), its answers to `Prediction`s, and each answer offered to
capture. The service class only wires this to BentoML; the class called directly and the bench
in process take the same path."""
from __future__ import annotations

import base64
import io
from typing import Any

from mmcore.serving.capture import Capture, new_id
from mmcore.serving.runtime import forget_embeddings
from mmcore.serving.schemas import Prediction, Record


def to_mmcore(rec: Record) -> dict[str, Any]:
    return {"note": rec.note, "image": base64.b64decode(rec.image) if rec.image else None,
            "sensor": rec.sensor.model_dump() if rec.sensor else None}


def warm_up_record() -> dict[str, Any]:
    """Every modality, so both frozen encoders are loaded before the service says it is ready."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (150, 120, 90)).save(buf, format="JPEG")
    trace = [0.0, 1.0, 0.5]
    return {"note": "warm-up", "image": buf.getvalue(),
            "sensor": {"temperature_c": trace, "humidity_pct": trace, "shock_g": trace, "light_lux": trace}}


def answer(predictor: Any, version: str, capture: Capture, records: list[Record]) -> list[Prediction]:
    """One `Prediction` per record, each offered to capture with the request it came in."""
    inputs = [to_mmcore(r) for r in records]
    preds = predictor.predict(inputs)
    forget_embeddings(predictor)
    out = [Prediction(record_id=r.record_id, prediction_id=new_id(), model_version=version,
                      **{k: v for k, v in p.items() if k != "disagreement"}) for r, p in zip(records, preds)]
    for r, x, p in zip(records, inputs, out):  # O(1) each: a bounded queue, written in the background
        capture.offer_answer(r._request, x, p.model_dump(),
                             {"record_id": r.record_id, "shipment_id": r.shipment_id, "hub": r.hub,
                              "captured_at": r.captured_at})
    return out
