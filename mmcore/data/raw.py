"""Reading the dataset of record (`data/raw/`) back as records for training and evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from mmcore.schema import SENSOR_HEADER


def load_profile(raw: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(raw) / "records.parquet")


def load_records(raw: Path, ids: list[str] | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Profile rows and, aligned with them, record dicts in the serving format (mmcore.features)."""
    df = load_profile(raw)
    if ids is not None:
        df = df.set_index("record_id").loc[ids].reset_index()
    wanted = set(df["record_id"])
    payload: dict[str, dict[str, Any]] = {}
    for shard in sorted(df["shard"].unique()):
        table = pq.read_table(Path(raw) / "shards" / shard).to_pylist()
        for row in table:
            if row["record_id"] not in wanted:
                continue
            sensor = None if row["t_s"] is None else {ch: row[ch] for ch in SENSOR_HEADER}
            payload[row["record_id"]] = {"image": row["image"], "sensor": sensor}
    records = []
    for rid, note in zip(df["record_id"], df["note"]):
        rec = {"record_id": rid, "note": None if pd.isna(note) else note, **payload[rid]}
        records.append(rec)
    return df, records
