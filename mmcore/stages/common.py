"""Small helpers the stage CLIs share: JSON reports, split loading, data version."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mmcore.data.ingest import write_atomic
from mmcore.data.raw import load_records


def write_json(path: Path, obj: Any) -> None:
    write_atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2), encoding="utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonable(obj: Any) -> Any:
    """numpy scalars, sets and NaN -> plain JSON (NaN becomes null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in (sorted(obj, key=str) if isinstance(obj, set) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return None if obj is pd.NA else str(obj)


GATE_SPLIT = "test"


class GateSetAccess(RuntimeError):
    """A choice (training, early stopping, a sweep) tried to read the gate set."""


def split_records(raw: Path, splits: Path, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Records and labels of one split, in record_id order; never the gate set.

    Everything that fits or selects reads its data here; the gate set has one reader,
    `mmcore.stages.evaluate.gate_set`, so no setting can be chosen on it by accident."""
    if name == GATE_SPLIT:
        raise GateSetAccess(f"the {GATE_SPLIT!r} split is the gate set: only the evaluate stage reads it. "
                            "Fit on 'train' and choose every setting on 'val'.")
    table = pd.read_parquet(splits)
    part = table[table["split"] == name]
    _, records = load_records(raw, list(part["record_id"]))
    return records, list(part["label"])


def data_version(raw: Path, lock: Path = Path("dvc.lock")) -> str:
    """The DVC hash of data/raw as recorded by the ingest stage; travels with each model."""
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("ingest", {}).get("outs", []):
            if Path(out["path"]) == Path(raw):
                return str(out.get("md5", "unknown"))
    return "unknown"
