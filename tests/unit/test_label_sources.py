"""Labels keep their source (DESIGN §2b): from the feed through ingest into data/raw, and into the
split, where labels the model chose (review; unknown, a line without source) train but never enter
the gate set or calib, whose guarantees hold only for labels sampled independently of the model."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmcore.config import SplitConfig
from mmcore.data.ingest import ingest
from mmcore.data.split import assign, split_run
from mmcore.report import gate_set_section
from tests.conftest import good_files, jpeg_bytes, record, write_batch
from tests.unit.test_labels import lab, write_labels

CFG = SplitConfig(val_fraction=0.15, test_fraction=0.25, calib_fraction=0.2, salt="sources")


def source_of(i: int) -> str | None:
    return ("review", "inspection", "claim", None)[i % 4]


def test_review_labels_train_but_never_enter_the_gate_set_or_calib(tmp_path: Path, ingest_cfg) -> None:
    recs = [record(f"cap-p{i}", shipment_id=f"S{i}", label=None, prediction_id=f"p{i}") for i in range(80)]
    files: dict = {}
    for i, r in enumerate(recs):   # a different photo each: every record is its own parcel
        files.update({**good_files(r["record_id"]), f"images/cap-p{i}.jpg": jpeg_bytes(color=(3 * i, 90, 250 - 3 * i))})
    write_batch(tmp_path / "landing", "capture-1", recs, files)
    lines = []
    for i in range(80):
        line = {**lab("wet", source=source_of(i) or "x", prediction_id=f"p{i}"), "labeller": f"ana{i % 2}"}
        if source_of(i) is None:
            del line["source"]           # an older sender: no source
        lines.append(line)
    write_labels(tmp_path / "labels", "review-and-inspections", lines)
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg, labels=tmp_path / "labels")
    assert summary["labels"]["joined"] == 80 and summary["labels"]["quarantined"] == 0

    raw = pd.read_parquet(tmp_path / "raw" / "records.parquet").set_index("record_id")
    for i in range(80):   # source, labeller and the delivery that joined it, kept in data/raw
        assert raw.loc[f"cap-p{i}", ["label_source", "labeller", "label_batch"]].tolist() == [
            source_of(i) or "unknown", f"ana{i % 2}", "review-and-inspections"]

    report = split_run(tmp_path / "raw", tmp_path / "split" / "splits.parquet", CFG)
    splits = pd.read_parquet(tmp_path / "split" / "splits.parquet").set_index("record_id")["split"]
    shipment_split = {i: assign(f"S{i}", CFG) for i in range(80)}
    chosen = [i for i in range(80) if source_of(i) in ("review", None)]
    trained = [i for i in chosen if shipment_split[i] in ("train", "val")]
    withheld = [i for i in chosen if shipment_split[i] in ("test", "calib")]
    assert trained and withheld
    assert all(splits[f"cap-p{i}"] == "train" for i in trained)        # a review label in the training data
    assert not any(f"cap-p{i}" in splits.index for i in withheld)      # never in the gate set or calib
    gate_calib = splits[splits.isin(["test", "calib"])].index
    assert set(raw.loc[gate_calib, "label_source"]) <= {"inspection", "claim"} and len(gate_calib) > 5
    unbiased = [i for i in range(80) if source_of(i) in ("inspection", "claim")]
    assert all(splits[f"cap-p{i}"] == shipment_split[i] for i in unbiased)   # the rest split by shipment
    assert set(report["gate"]["by_source"]) <= {"inspection", "claim"}
    assert sum(report["gate"]["by_source"].values()) == report["gate"]["records"]
    assert report["sources"]["withheld"] == {s: sum(shipment_split[i] == s for i in withheld) for s in ("test", "calib")}
    assert "review" in report["sources"]["by_source"]["train"]
    assert "id='gate-sources'" in gate_set_section(json.loads(json.dumps(report)))
