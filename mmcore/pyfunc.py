"""MLflow pyfunc wrapper around mmcore, logged as "models from code" (no pickled model object).

Input: a DataFrame with columns `note` (str|null), `image` (base64 str|null) and
`sensor` (JSON object of channel arrays | null). Output: label, one probability column per
class, and the routing (decision; prediction_set and review_reason comma-joined).
"""
from __future__ import annotations

import base64
import json
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


def _value(v: Any) -> Any:
    """None for a missing cell: null, NaN (pandas' missing) or an empty string."""
    return None if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()) else v


def frame_to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for row in df.to_dict(orient="records"):
        image, sensor = _value(row.get("image")), _value(row.get("sensor"))
        records.append({"note": _value(row.get("note")),
                         "image": base64.b64decode(image) if image else None,
                         "sensor": json.loads(sensor) if isinstance(sensor, str) else sensor})
    return records


class ParcelConditionModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from mmcore.predict import load_model

        self.predictor = load_model(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        preds = self.predictor.predict(frame_to_records(model_input))
        return pd.DataFrame([{"label": p["label"], **p["probabilities"], "decision": p["decision"],
                              "prediction_set": ",".join(p["prediction_set"]),
                              "review_reason": ",".join(p["review_reason"])} for p in preds])


mlflow.models.set_model(ParcelConditionModel())
