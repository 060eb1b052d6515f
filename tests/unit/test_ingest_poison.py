"""Poison lines and files (issue 25 point 1): whatever a sender writes into a landing batch or a label
batch, ingest returns, every line is accepted or quarantined with its reason (landed = accepted +
quarantined, line for line), and a good line next to a bad one is still accepted."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mmcore.config import load_params
from mmcore.data.ingest import ingest
from mmcore.schema import RECORD_FIELDS
from tests.conftest import ROOT, good_files, record, sensor_csv, write_batch

DEEP = "[" * 100_000 + "]" * 100_000
SPARSE = 2 * 1024**3          # a 2 GB "photo" that takes no disk: refused on its stat


def poison_records() -> list[tuple[dict[str, Any] | str, str]]:
    """The landing lines that stopped ingest before issue 25, and their relatives, with their reasons."""
    return [
        (record("nul", image="images/a\x00b.jpg"), "unsafe_path"),
        (record("long", image="images/" + "x" * 300 + ".jpg"), "unsafe_path"),
        (record("ctl", image="images/a\nb.jpg"), "unsafe_path"),
        (record("sur", image="images/\ud800.jpg"), "bad_encoding"),   # valid JSON, no text: Parquet refuses it
        (record("sur2", hub="AMS\udfff"), "bad_encoding"),
        (record("y1", captured_at="0001-01-01T00:00:00+01:00"), "timestamp_out_of_range"),
        (record("y9999", captured_at="9999-12-31T23:59:59-05:00"), "timestamp_out_of_range"),
        (record("old", captured_at="1999-12-31T23:00:00+00:00"), "timestamp_out_of_range"),
        (record("future", captured_at="2099-01-01T00:00:00+00:00"), "timestamp_out_of_range"),
        (DEEP, "too_deep"),
        ('{"record_id": ' + "[" * 40 + "]" * 40 + "}", "too_deep"),
        ("1" * 5000, "bad_json"),                        # int() refuses 5,000 digits: ValueError, not JSON's
        (json.dumps(record("huge", note="x" * 1_100_000)), "line_too_long"),
        (record("sparse", image="images/sparse.jpg"), "image_too_large"),
        (record("bigsensor", image=None, sensor="sensors/big.csv"), "sensor_too_large"),
        (record("dir", image="images"), "missing_file"),
        (record("nl\n"), "bad_record_id"),               # "$" would take the newline
    ]


def files_for(bdir: Path) -> None:
    """The big files, sparse: creating them costs nothing, reading them would cost gigabytes."""
    with open(bdir / "images" / "sparse.jpg", "wb") as f:
        f.truncate(SPARSE)
    with open(bdir / "sensors" / "big.csv", "wb") as f:
        f.truncate(SPARSE)


def test_each_poison_landing_line_is_quarantined_with_its_reason(tmp_path: Path, ingest_cfg) -> None:
    cases = poison_records()
    lines = [c if isinstance(c, str) else json.dumps(c) for c, _ in cases]
    bdir = write_batch(tmp_path / "landing", "b1", [record("ok")], good_files("ok"), extra_lines=lines)
    files_for(bdir)
    cfg = dataclasses.replace(ingest_cfg, max_bad_share=1.0)
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", cfg, workers=1)

    quarantine = [json.loads(x) for x in (tmp_path / "q" / "records.jsonl").read_text().splitlines()]
    assert [q["reason"] for q in quarantine] == [r for _, r in cases]
    assert [q["line"] for q in quarantine] == list(range(2, len(cases) + 2))
    assert summary["landed"] == len(cases) + 1 and summary["accepted"] == 1 and summary["quarantined"] == len(cases)
    by_id = {q["record_id"]: q for q in quarantine}
    assert f"has {SPARSE} bytes" in by_id["sparse"]["detail"] and f"has {SPARSE} bytes" in by_id["bigsensor"]["detail"]
    assert all(len(q["raw"]) <= 2000 for q in quarantine)   # a 1 MB line is kept cut, not whole


def test_a_gigabyte_line_is_never_held_whole(tmp_path: Path, ingest_cfg) -> None:
    """A 64 MB line without a newline between two good ones: read in cuts, quarantined, the others land."""
    bdir = write_batch(tmp_path / "landing", "b1", [record("a")], {**good_files("a"), **good_files("b")})
    with open(bdir / "records.jsonl", "ab") as f:
        f.write(b'{"note": "' + b"x" * (64 * 1024**2) + b'"}\n' + json.dumps(record("b")).encode() + b"\n")
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q",
                     dataclasses.replace(ingest_cfg, max_bad_share=0.5), workers=1)
    assert (summary["accepted"], summary["by_reason"]) == (2, {"line_too_long": 1})


def test_a_rejected_batch_reserves_nothing_so_its_redelivery_lands(tmp_path: Path, ingest_cfg) -> None:
    files = {**good_files("a"), **good_files("b")}
    broken = [record("a", prediction_id="p-a"), record("b"), record("x", label="??"), record("y", label="??")]
    write_batch(tmp_path / "landing", "b1", broken, files)
    write_batch(tmp_path / "landing", "b2", [record("a", prediction_id="p-a"), record("b")], files)   # corrected
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg, workers=1)
    assert summary["batches"]["b1"]["status"] == "rejected" and summary["batches"]["b2"] == {
        "landed": 2, "accepted": 2, "quarantined": 0, "bad_share": 0.0, "status": "ok"}
    df = pd.read_parquet(tmp_path / "raw" / "records.parquet")
    assert sorted(df["record_id"]) == ["a", "b"] and set(df["batch_id"]) == {"b2"}
    assert "duplicate_record_id" not in summary["by_reason"]


# ---- the property: random and adversarial lines and files, landing and labels -------------------------

def _offset_time() -> st.SearchStrategy[str]:
    from datetime import timedelta, timezone

    zones = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))
    return st.builds(lambda d, z: d.replace(tzinfo=z).isoformat(), st.datetimes(), zones)


ODD = ["images/a\x00b.jpg", "images/" + "x" * 300 + ".jpg", "0001-01-01T00:00:00+01:00",
       "9999-12-31T23:59:59-05:00", "../x.jpg", "/etc/passwd", "images", "images/sparse.jpg", "sensors/big.csv",
       "images/rand.jpg", "sensors/rand.csv", "\ud800", "", "C:\\x", "2026-11-20T03:10:00+08:00", "wet"]
# half a surrogate pair: valid JSON ("\\udc80"), no Unicode text (st.text never draws one)
SURROGATE = st.builds(lambda a, c, b: a + chr(c) + b, st.text(max_size=3), st.integers(0xD800, 0xDFFF),
                      st.text(max_size=3))
LEAF = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(ODD)
        | SURROGATE)
VALUE = LEAF | _offset_time() | st.recursive(LEAF, lambda c: st.lists(c, max_size=3)
                                              | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


def not_good(obj: dict[str, Any]) -> dict[str, Any]:
    """Random lines never name a good record (g...): a good line must stay the only claim on its id."""
    return {k: ("x" + v if k in ("record_id", "prediction_id") and isinstance(v, str) and v.startswith("g") else v)
            for k, v in obj.items()}


def non_blank(lines: list[bytes]) -> int:
    """The lines ingest counts as landed: blank ones are skipped, a BOM is dropped from the first."""
    return sum(1 for i, ln in enumerate(lines) if (ln.removeprefix(b"\xef\xbb\xbf") if i == 0 else ln).strip())


def as_line(item: Any) -> bytes:
    return item if isinstance(item, bytes) else json.dumps(item).encode()


RAW = st.binary(max_size=80).filter(lambda b: b"\n" not in b)
RECORD_LINE = st.builds(lambda i, over: not_good({**record(f"x{i}"), **over}), st.integers(0, 3),
                        st.dictionaries(st.sampled_from([*RECORD_FIELDS, "prediction_id"]), VALUE, max_size=3))
LABEL_LINE = st.builds(lambda over: not_good({"record_id": "x0", "label": "wet", "source": "claim",
                                              "labelled_at": "2026-11-22T09:00:00+00:00", **over}),
                       st.dictionaries(st.sampled_from(["record_id", "prediction_id", "label", "labelled_at",
                                                        "source", "labeller"]), VALUE, max_size=3))
FIXED = [DEEP.encode(), b"1" * 5000, b"\xef\xbb\xbf{}", b"\r", b"[" * 17 + b"]" * 17]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad_records=st.lists(RECORD_LINE | RAW | st.sampled_from(FIXED), max_size=6),
       bad_labels=st.lists(LABEL_LINE | RAW | st.sampled_from(FIXED), max_size=6),
       rand_image=st.binary(max_size=300), rand_sensor=st.text(max_size=300), where=st.integers(0, 6))
@example(bad_records=[json.dumps(c).encode() if isinstance(c, dict) else c.encode()
                      for c, _ in poison_records()],
         bad_labels=[json.dumps({"record_id": "x0", "label": "wet", "source": "claim", "labelled_at": at}).encode()
                     for at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00")] + [DEEP.encode()],
         rand_image=b"", rand_sensor="", where=3)
def test_ingest_returns_and_accounts_for_every_line(bad_records: list, bad_labels: list, rand_image: bytes,
                                                     rand_sensor: str, where: int) -> None:
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").ingest, max_bad_share=1.0)   # judge lines, not batches
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good = [json.dumps(record(f"g{i}", label="damaged")).encode() for i in range(2)]
        lines = [as_line(x) for x in bad_records]
        lines[min(where, len(lines)):min(where, len(lines))] = good[:1]
        lines.append(good[1])
        files = {**good_files("g0"), **good_files("g1"), **good_files("x0"),
                 "images/rand.jpg": rand_image, "sensors/rand.csv": rand_sensor or sensor_csv()}
        bdir = write_batch(root / "landing", "b1", [], files)
        (bdir / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        files_for(bdir)
        label_lines = [as_line(x) for x in bad_labels]
        label_lines.insert(min(where, len(label_lines)), as_line(
            {"record_id": "g0", "label": "wet", "labelled_at": "2026-11-22T09:00:00Z", "source": "inspection"}))
        (root / "labels" / "L1").mkdir(parents=True)
        (root / "labels" / "L1" / "labels.jsonl").write_bytes(b"\n".join(label_lines) + b"\n")
        (root / "labels" / "L1" / "_SUCCESS").write_bytes(b"")

        summary = ingest(root / "landing", root / "raw", root / "q", cfg, workers=1, labels=root / "labels")

        quarantine = [json.loads(x) for x in (root / "q" / "records.jsonl").read_text().splitlines()]
        df = pd.read_parquet(root / "raw" / "records.parquet").set_index("record_id")
        assert summary["landed"] == non_blank(lines)
        assert summary["landed"] == len(df) + len(quarantine) == summary["accepted"] + summary["quarantined"]
        assert sorted(q["line"] for q in quarantine) == sorted(set(q["line"] for q in quarantine))  # one each
        assert {"g0", "g1"} <= set(df.index) and df.loc["g0", "label"] == "wet"
        labels = summary["labels"]
        assert labels["landed"] == labels["joined"] + labels["quarantined"]
        assert labels["landed"] == non_blank(label_lines)
        assert all(q["reason"] and len(q["raw"]) <= 2000 for q in quarantine)


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_a_poison_label_line_leaves_the_next_run_working(tmp_path: Path, ingest_cfg, at: str) -> None:
    write_batch(tmp_path / "landing", "b1", [record("a", label=None)], good_files("a"))
    bdir = tmp_path / "labels" / "L1"
    bdir.mkdir(parents=True)
    (bdir / "labels.jsonl").write_text(
        json.dumps({"record_id": "a", "label": "wet", "labelled_at": at, "source": "claim"}) + "\n"
        + json.dumps({"record_id": "a", "label": "damaged", "labelled_at": "2026-11-22T09:00:00Z",
                      "source": "claim"}) + "\n")
    (bdir / "_SUCCESS").write_text("")
    for _ in range(2):
        summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg, workers=1,
                         labels=tmp_path / "labels")
        assert summary["labels"]["by_reason"] == {"timestamp_out_of_range": 1}
    assert pd.read_parquet(tmp_path / "raw" / "records.parquet")["label"].tolist() == ["damaged"]
