"""The gate set cannot be rewritten by data (issue 25 point 4): split membership is stored, so a
back-dated copy of a gate-set photo cannot move the original out, a gate-set label changes only with
its audit entry, and a future-dated label is quarantined before it can win."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import yaml

from mmcore.config import SplitConfig
from mmcore.data import membership
from mmcore.data.ingest import ingest
from mmcore.data.split import assign, split, split_run
from tests.conftest import ROOT, good_files, jpeg_bytes, record, write_batch

CFG = SplitConfig(val_fraction=0.15, test_fraction=0.2, salt="t")
TEST_SHIP = next(f"s{i}" for i in range(1000) if assign(f"s{i}", CFG) == "test")
TRAIN_SHIP = next(f"s{i}" for i in range(1000) if assign(f"s{i}", CFG) == "train")


def rows(*recs: dict) -> pd.DataFrame:
    base = {"label_source": "landing", "labelled_at": None, "labeller": None, "has_image": True, "has_sensor": True}
    return pd.DataFrame([{**base, **r} for r in recs])


def put(raw: Path, profile: pd.DataFrame, audit: pd.DataFrame | None = None) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    profile.to_parquet(raw / "records.parquet", index=False)
    if audit is not None:
        audit.to_parquet(raw / "label_audit.parquet", index=False)


def splits(out: Path) -> pd.Series:
    return pd.read_parquet(out).set_index("record_id")["split"]


ORIGINAL = {"record_id": "orig", "shipment_id": TEST_SHIP, "captured_at": "2026-03-01T00:00:00+00:00",
            "label": "damaged", "content_sha256": "c-orig", "image_sha256": "i-orig"}
COPY = {**ORIGINAL, "record_id": "copy", "shipment_id": TRAIN_SHIP, "captured_at": "2026-01-01T00:00:00+00:00"}


def test_a_back_dated_copy_cannot_move_a_gate_set_record(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "split" / "splits.parquet"
    out.parent.mkdir()
    put(raw, rows(ORIGINAL))
    split_run(raw, out, CFG)
    assert splits(out)["orig"] == "test"
    attacked = rows(ORIGINAL, COPY)
    assert split(attacked, CFG).set_index("record_id")["split"]["orig"] == "train"   # recomputed: it moves

    put(raw, attacked)
    report = split_run(raw, out, CFG)
    assert splits(out).to_dict() == {"copy": "test", "orig": "test"}      # stored: it stays, the copy joins it
    assert report["membership"] == "kept" and report["gate"]["records"] == 2 and report["gate"]["added"] == 1


def test_a_gate_set_label_changes_only_with_its_audit_entry(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "split" / "splits.parquet"
    out.parent.mkdir()
    put(raw, rows(ORIGINAL))
    split_run(raw, out, CFG)
    audit = pd.DataFrame([{"record_id": "orig", "label": "damaged", "batch_id": "L1", "superseded_by_label": "wet"}])
    put(raw, rows({**ORIGINAL, "label": "wet", "label_source": "claim", "labelled_at": "2026-03-05T00:00:00+00:00",
                   "labeller": "ana"}), audit)
    gate = split_run(raw, out, CFG)["gate"]
    assert gate["label_changes"] == [{"record_id": "orig", "from": "damaged", "to": "wet", "applied": True,
                                      "label_source": "claim", "labelled_at": "2026-03-05T00:00:00+00:00",
                                      "labeller": "ana", "audit_batch": "L1"}]
    assert pd.read_parquet(out).set_index("record_id")["label"]["orig"] == "wet"

    (raw / "label_audit.parquet").unlink()     # the label batch is gone: the label falls back, unaudited
    put(raw, rows(ORIGINAL))
    gate = split_run(raw, out, CFG)["gate"]
    assert (gate["label_changes_applied"], gate["label_changes_held"]) == (0, 1)
    assert pd.read_parquet(out).set_index("record_id").loc["orig", ["label", "split"]].tolist() == ["wet", "test"]
    again = split_run(raw, out, CFG)["gate"]      # held, and said on every run until someone looks
    assert [(c["from"], c["to"], c["applied"]) for c in again["label_changes"]] == [("wet", "damaged", False)]


def test_other_split_settings_reset_the_membership(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "split" / "splits.parquet"
    out.parent.mkdir()
    put(raw, rows(ORIGINAL))
    split_run(raw, out, CFG)
    assert split_run(raw, out, dataclasses.replace(CFG, salt="other"))["membership"] == "reset"
    before = (out.parent / membership.MEMBERSHIP_FILE).read_bytes()
    split_run(raw, out, dataclasses.replace(CFG, salt="other"))
    assert (out.parent / membership.MEMBERSHIP_FILE).read_bytes() == before       # same data, same bytes


def test_dvc_keeps_the_membership_between_runs() -> None:
    """DVC deletes a stage's outs before it runs and restores them from its run cache unless `persist`."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["split"]
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage["outs"]}
    assert outs["data/split"] == {"data/split": {"persist": True}}
    assert "--report reports/split.json" in " ".join(stage["cmd"].split())


def test_through_ingest_a_back_dated_copy_and_a_future_label_leave_the_gate_set_as_it_was(
        tmp_path: Path, ingest_cfg) -> None:
    """The whole path: the landing feed and the label feed as a sender would abuse them."""
    photo = jpeg_bytes(color=(10, 200, 30))
    rec = record("orig", shipment_id=TEST_SHIP, captured_at="2026-03-01T00:00:00+00:00")
    write_batch(tmp_path / "landing", "b1", [rec], {**good_files("orig"), "images/orig.jpg": photo})
    raw, out = tmp_path / "raw", tmp_path / "split" / "splits.parquet"
    out.parent.mkdir()
    ingest(tmp_path / "landing", raw, tmp_path / "q", ingest_cfg, workers=1, labels=tmp_path / "labels")
    split_run(raw, out, CFG)
    assert splits(out)["orig"] == "test"

    copy = {**rec, "record_id": "copy", "shipment_id": TRAIN_SHIP, "captured_at": "2026-01-01T00:00:00+00:00",
            "image": "images/copy.jpg", "sensor": "sensors/copy.csv"}
    write_batch(tmp_path / "landing", "b2", [copy], {**good_files("copy"), "images/copy.jpg": photo})
    bdir = tmp_path / "labels" / "L1"
    bdir.mkdir(parents=True)
    (bdir / "labels.jsonl").write_text(json.dumps({"record_id": "orig", "label": "normal", "source": "claim",
                                                   "labelled_at": "9999-12-31T00:00:00+00:00"}) + "\n")
    (bdir / "_SUCCESS").write_text("")
    summary = ingest(tmp_path / "landing", raw, tmp_path / "q", ingest_cfg, workers=1, labels=tmp_path / "labels")
    report = split_run(raw, out, CFG)

    assert summary["labels"]["by_reason"] == {"timestamp_out_of_range": 1}
    table = pd.read_parquet(out).set_index("record_id")
    assert table.loc["orig", ["split", "label"]].tolist() == ["test", "damaged"]
    assert table.loc["copy", "split"] == "test" and report["gate"]["label_changes"] == []


def test_the_run_report_shows_gate_set_label_changes() -> None:
    from mmcore.report import render

    change = {"record_id": "orig", "from": "damaged", "to": "wet", "applied": True, "label_source": "claim",
              "labelled_at": "2026-03-05T00:00:00+00:00", "labeller": "<b>ana</b>", "audit_batch": "L1"}
    split_report = {"membership": "kept", "gate": {"records": 2, "added": 1, "missing_from_raw": 0,
                                                   "label_changes": [change], "label_changes_applied": 1,
                                                   "label_changes_held": 0}}
    page = render({"name": "r", "stages": []}, {"split": split_report}, {}, {})
    assert "id='gate-set'" in page and "<td>orig</td><td>damaged</td><td>wet</td><td>applied</td>" in page
    assert "&lt;b&gt;ana&lt;/b&gt;" in page                       # a labeller is text, never markup
