"""Quarantine rules: every bad record is kept with its reason, the good ones go on."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from mmcore.data.ingest import ingest
from tests.conftest import good_files, jpeg_bytes, record, sensor_csv, write_batch


def run(tmp_path: Path, cfg) -> tuple[dict, pd.DataFrame, list[dict]]:
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", cfg)
    df = pd.read_parquet(tmp_path / "raw" / "records.parquet")
    quarantine = [json.loads(x) for x in (tmp_path / "q" / "records.jsonl").read_text().splitlines()]
    return summary, df, quarantine


def test_bad_records_are_quarantined_with_reasons(tmp_path: Path, ingest_cfg) -> None:
    files: dict = {}
    recs = []
    for i in range(10):
        rid = f"ok{i}"
        files.update(good_files(rid))
        recs.append(record(rid))
    bad = {
        "trav": (record("trav", image="../secret.jpg"), "unsafe_path"),
        "absp": (record("absp", image="/etc/passwd"), "unsafe_path"),
        "miss": (record("miss", image="images/nope.jpg"), "missing_file"),
        "corrupt": (record("corrupt"), "bad_image"),
        "empty": (record("empty"), "bad_image"),
        "hdr": (record("hdr"), "bad_sensor"),
        "nan": (record("nan"), "bad_sensor"),
        "order": (record("order"), "bad_sensor"),
        "notz": (record("notz", captured_at="2026-11-20T03:10:00"), "bad_timestamp"),
        "lbl": (record("lbl", label="crushed"), "unknown_label"),
        "nul": (record("nul", note="bad\x00note"), "bad_note"),
        "bad id!": (record("bad id!"), "bad_record_id"),
    }
    for rid, (rec, _) in bad.items():
        recs.append(rec)
        files.update(good_files(rid))
    files["images/corrupt.jpg"] = jpeg_bytes()[:200]
    files["images/empty.jpg"] = b""
    files["sensors/hdr.csv"] = sensor_csv(header="t,temp,hum,shock,light")
    files["sensors/nan.csv"] = sensor_csv(nan=True)
    files["sensors/order.csv"] = sensor_csv(shuffle_time=True)
    recs.append(record("ok0"))  # duplicate of an accepted record
    recs.append({"record_id": "nofields"})
    write_batch(tmp_path / "landing", "b1", recs, files, extra_lines=['{"record_id": "broken", '])
    cfg = dataclasses.replace(ingest_cfg, max_bad_share=0.9)
    summary, df, quarantine = run(tmp_path, cfg)

    assert summary["landed"] == len(recs) + 1
    assert summary["landed"] == summary["accepted"] + summary["quarantined"]
    assert summary["accepted"] == 10 and sorted(df["record_id"]) == sorted(f"ok{i}" for i in range(10))
    reasons = {q["record_id"]: q["reason"] for q in quarantine if q["record_id"] not in ("ok0", None)}
    for rid, (_, reason) in bad.items():
        assert reasons[rid] == reason, rid
    assert {q["reason"] for q in quarantine} >= {"duplicate_record_id", "missing_field", "bad_json"}


def test_bom_crlf_and_non_utf8_lines(tmp_path: Path, ingest_cfg) -> None:
    bdir = write_batch(tmp_path / "landing", "b1", [], {**good_files("a"), **good_files("b")})
    lines = [json.dumps(record("a")).encode(), json.dumps(record("b", note="caf\u00e9")).encode().replace(
        "caf\\u00e9".encode(), b"caf\xe9"), json.dumps(record("b")).encode()]
    (bdir / "records.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    summary, df, quarantine = run(tmp_path, dataclasses.replace(ingest_cfg, max_bad_share=0.9))
    assert sorted(df["record_id"]) == ["a", "b"]
    assert [q["reason"] for q in quarantine] == ["bad_encoding"]


def test_labels_are_normalised_and_batches_need_success(tmp_path: Path, ingest_cfg) -> None:
    files = {**good_files("a"), **good_files("b")}
    write_batch(tmp_path / "landing", "b1", [record("a", label=" Damaged "), record("b", label=None)], files)
    write_batch(tmp_path / "landing", "b2", [record("c")], good_files("c"), success=False)
    summary, df, _ = run(tmp_path, ingest_cfg)
    assert summary["landed"] == 2  # b2 has no _SUCCESS yet
    labels = dict(zip(df["record_id"], df["label"]))
    assert labels["a"] == "damaged" and pd.isna(labels["b"])


def test_bad_share_over_threshold_rejects_whole_batch(tmp_path: Path, ingest_cfg) -> None:
    files = {**good_files("a"), **good_files("b")}
    recs = [record("a"), record("b"), record("x", image="../x.jpg"), record("y", label="??")]
    write_batch(tmp_path / "landing", "b1", recs, files)
    cfg = dataclasses.replace(ingest_cfg, max_bad_share=0.3)
    summary, df, quarantine = run(tmp_path, cfg)
    assert summary["batches"]["b1"]["status"] == "rejected"
    assert summary["accepted"] == 0 and summary["quarantined"] == 4 and len(df) == 0
    assert sum(q["reason"] == "batch_rejected" for q in quarantine) == 2


def test_ingest_twice_is_identical(tmp_path: Path, ingest_cfg) -> None:
    files = {**good_files("a"), **good_files("b")}
    write_batch(tmp_path / "landing", "b1", [record("a"), record("b", image=None)], files)
    first = run(tmp_path, ingest_cfg)[1]
    second = run(tmp_path, ingest_cfg)[1]
    pd.testing.assert_frame_equal(first, second)
    assert not first.loc[first.record_id == "b", "has_image"].item()


def test_symlink_leaving_batch_is_refused(tmp_path: Path, ingest_cfg) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes())
    bdir = write_batch(tmp_path / "landing", "b1", [record("a"), record("s", image="images/link.jpg")],
                       {**good_files("a"), **good_files("s")})
    os.symlink(outside, bdir / "images" / "link.jpg")
    summary, _, quarantine = run(tmp_path, dataclasses.replace(ingest_cfg, max_bad_share=0.9))
    assert [q["reason"] for q in quarantine] == ["unsafe_path"] and summary["accepted"] == 1


def test_process_pool_gives_the_same_result_as_one_process(tmp_path: Path, ingest_cfg) -> None:
    files: dict = {}
    recs = []
    for i in range(300):
        rid = f"r{i}"
        files.update(good_files(rid))
        recs.append(record(rid, label="wet" if i % 2 else "normal") if i % 50 else record(rid, label="??"))
    recs.append(record("r1"))  # a duplicate far from its first occurrence, in another shard
    write_batch(tmp_path / "landing", "b1", recs, files)
    one = ingest(tmp_path / "landing", tmp_path / "raw1", tmp_path / "q1", ingest_cfg, workers=1)
    two = ingest(tmp_path / "landing", tmp_path / "raw2", tmp_path / "q2", ingest_cfg, workers=2)
    assert one == two and one["by_reason"] == {"unknown_label": 6, "duplicate_record_id": 1}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "raw1" / "records.parquet"),
                                  pd.read_parquet(tmp_path / "raw2" / "records.parquet"))
    assert (tmp_path / "q1" / "records.jsonl").read_text() == (tmp_path / "q2" / "records.jsonl").read_text()


def test_crash_before_swap_keeps_old_state_and_rerun_completes(tmp_path: Path, ingest_cfg, monkeypatch) -> None:
    import mmcore.data.ingest as mod

    write_batch(tmp_path / "landing", "b1", [record("a")], good_files("a"))
    ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg)
    write_batch(tmp_path / "landing", "b2", [record("b")], good_files("b"))

    def crash(new: Path, target: Path) -> None:
        raise KeyboardInterrupt("killed mid-run")

    monkeypatch.setattr(mod, "swap_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg)
    assert list(pd.read_parquet(tmp_path / "raw" / "records.parquet")["record_id"]) == ["a"]
    monkeypatch.undo()
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg)
    assert summary["accepted"] == 2
    assert sorted(pd.read_parquet(tmp_path / "raw" / "records.parquet")["record_id"]) == ["a", "b"]


def test_shards_keep_each_record_with_its_own_payload(tmp_path: Path, ingest_cfg) -> None:
    from mmcore.data.raw import load_records
    from tests.conftest import sensor_csv

    files = {**good_files("a"), **good_files("c"), "sensors/c.csv": sensor_csv(rows=90),
             "images/b.jpg": good_files("b")["images/b.jpg"]}
    write_batch(tmp_path / "landing", "b1", [record("a"), record("b", sensor=None), record("c", image=None)], files)
    ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg)
    _, recs = load_records(tmp_path / "raw")
    by_id = {r["record_id"]: r for r in recs}
    assert len(by_id["a"]["sensor"]["t_s"]) == 60 and by_id["b"]["sensor"] is None
    assert len(by_id["c"]["sensor"]["temperature_c"]) == 90 and by_id["c"]["image"] is None
    assert by_id["b"]["image"] == files["images/b.jpg"]
