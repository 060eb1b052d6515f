"""The label feed (DESIGN §2b, mmcore/monitor/labels.py): late labels join the records they name,
bad lines are quarantined with their reason, the latest labelled_at wins and the audit keeps the rest."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mmcore.config import SplitConfig
from mmcore.data.ingest import ingest
from mmcore.data.split import assign, split
from tests.conftest import good_files, jpeg_bytes, record, write_batch

T0 = "2026-11-20T03:10:00+08:00"          # conftest's captured_at, 2026-11-19T19:10:00+00:00 in UTC


def lab(label: str = "damaged", at: str = "2026-11-22T09:00:00+00:00", source: str = "inspection",
        **ids: Any) -> dict[str, Any]:
    return {**ids, "label": label, "labelled_at": at, "source": source}


def write_labels(root: Path, batch_id: str, lines: list[dict | str | bytes], success: bool = True) -> None:
    bdir = root / batch_id
    bdir.mkdir(parents=True, exist_ok=True)
    raw = [ln if isinstance(ln, bytes) else (ln if isinstance(ln, str) else json.dumps(ln)).encode() for ln in lines]
    (bdir / "labels.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    if success:
        (bdir / "_SUCCESS").write_text("")


def land(tmp_path: Path, batch_id: str, recs: list[dict[str, Any]]) -> None:
    files: dict = {}
    for r in recs:
        files.update(good_files(r["record_id"]))
    write_batch(tmp_path / "landing", batch_id, recs, files)


def run(tmp_path: Path, cfg, out: str = "") -> tuple[dict, pd.DataFrame, pd.DataFrame, list[dict]]:
    raw, q = tmp_path / f"raw{out}", tmp_path / f"q{out}"
    summary = ingest(tmp_path / "landing", raw, q, cfg, labels=tmp_path / "labels")
    quarantined = [json.loads(x) for x in (q / "labels.jsonl").read_text().splitlines()]
    return (summary, pd.read_parquet(raw / "records.parquet").set_index("record_id"),
            pd.read_parquet(raw / "label_audit.parquet"), quarantined)


def balanced(summary: dict) -> bool:
    lab_ = summary["labels"]
    return lab_["landed"] == lab_["joined"] + lab_["quarantined"]


def test_late_labels_join_by_record_id_and_by_prediction_id(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None), record("b", label=None, prediction_id="pred-b"),
                          record("c", label="normal")])
    write_labels(tmp_path / "labels", "L1", [lab("damaged", record_id="a"),
                                             lab(" Wet ", "2026-11-23T10:00:00+02:00", "claim", prediction_id="pred-b")])
    summary, df, audit, quarantined = run(tmp_path, ingest_cfg)

    assert summary["labels"] == {"landed": 2, "joined": 2, "quarantined": 0, "by_reason": {}, "superseded": 0,
                                 "applied": 2, "duplicate_lines": 0,
                                 "batches": {"L1": {"landed": 2, "joined": 2, "quarantined": 0}}}
    assert df.loc["a", ["label", "label_source", "labelled_at"]].tolist() == [
        "damaged", "inspection", "2026-11-22T09:00:00+00:00"]
    assert df.loc["b", ["label", "label_source", "labelled_at"]].tolist() == [
        "wet", "claim", "2026-11-23T08:00:00+00:00"]            # normalised label, UTC time
    assert df.loc["c", ["label", "label_source", "labelled_at"]].tolist() == [
        "normal", "landing", df.loc["c", "captured_at"]]        # a landing label is labelled at capture
    assert df.loc["b", "prediction_id"] == "pred-b" and pd.isna(df.loc["a", "prediction_id"])
    assert audit.empty and list(audit.columns)[:3] == ["record_id", "prediction_id", "label"]
    assert quarantined == []


def test_bad_label_lines_are_quarantined_with_their_reason(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None), record("b", label=None), record("c", label=None)])
    lines: list[tuple[dict | str | bytes, str | None]] = [
        (lab(record_id="a"), None),
        ('{"record_id": "b", "label": ', "bad_json"),
        ('["b", "wet"]', "bad_type"),
        (json.dumps(lab(record_id="b")).replace("inspection", "inspecci\\u00f3n").encode()
         .replace(b"\\u00f3", b"\xf3"), "bad_encoding"),
        (lab(record_id="b", prediction_id="pred-b"), "ambiguous_id"),
        (lab(), "missing_field"),
        ({"record_id": "b", "label": "wet", "source": "claim"}, "missing_field"),
        (lab(record_id="bad id!"), "bad_record_id"),
        (lab(prediction_id="p/../x"), "bad_prediction_id"),
        (lab(label=None, record_id="b"), "bad_type"),
        (lab("crushed", record_id="b"), "unknown_label"),
        (lab(at="2026-11-22T09:00:00", record_id="b"), "bad_timestamp"),
        (lab(at="yesterday", record_id="b"), "bad_timestamp"),
        (lab(at="0001-01-01T00:00:00+01:00", record_id="b"), "timestamp_out_of_range"),   # no UTC time
        (lab(at="9999-12-31T23:59:59-05:00", record_id="b"), "timestamp_out_of_range"),
        (lab(at="1999-12-31T23:59:59+00:00", record_id="b"), "timestamp_out_of_range"),   # before 2000
        (lab(at="2099-01-01T00:00:00+00:00", record_id="b"), "timestamp_out_of_range"),   # the future
        ({**lab(record_id="b"), "labeller": "<script>"}, "bad_labeller"),
        ({**lab(record_id="b"), "labeller": 7}, "bad_type"),
        ({**lab(record_id="b"), "labeller": "ana\ud800"}, "bad_encoding"),
        ("[" * 100_000 + "]" * 100_000, "too_deep"),
        (json.dumps({**lab(record_id="b"), "pad": "x" * 1_100_000}), "line_too_long"),
        ({**lab(record_id="b"), "source": 7}, "bad_type"),
        (lab(source="rumour", record_id="b"), "bad_source"),
        (lab(source="landing", record_id="b"), "bad_source"),   # only a landing record's own label is `landing`
        (lab(record_id="nobody"), "unknown_id"),
        (lab(prediction_id="pred-nobody"), "unknown_id"),
        (lab("wet", record_id="c"), "conflicting_label"),
        (lab("damaged", record_id="c"), "conflicting_label"),
    ]
    write_labels(tmp_path / "labels", "L1", [ln for ln, _ in lines])
    summary, df, audit, quarantined = run(tmp_path, ingest_cfg)

    assert [q["reason"] for q in quarantined] == [r for _, r in lines if r]      # in line order, none lost
    assert [q["line"] for q in quarantined] == [i for i, (_, r) in enumerate(lines, 1) if r]
    assert all(q["batch_id"] == "L1" and q["detail"] and q["raw"] for q in quarantined)
    assert balanced(summary) and summary["labels"]["landed"] == len(lines) and summary["labels"]["joined"] == 1
    assert summary["labels"]["by_reason"]["missing_field"] == 2 and summary["labels"]["by_reason"]["unknown_id"] == 2
    assert df.loc["a", "label"] == "damaged" and df["label"].notna().sum() == 1   # b and c stay unlabelled
    unknown = [q for q in quarantined if q["reason"] == "unknown_id"]
    assert (unknown[0]["record_id"], unknown[1]["prediction_id"]) == ("nobody", "pred-nobody")


def test_two_labels_for_one_record_in_one_batch_apply_neither(tmp_path: Path, ingest_cfg) -> None:
    """Named once by record_id and once by prediction_id is still two labels for one record."""
    land(tmp_path, "b1", [record("a", label="normal", prediction_id="pred-a")])
    write_labels(tmp_path / "labels", "L1", [lab("wet", record_id="a"), lab("damaged", prediction_id="pred-a")])
    summary, df, audit, quarantined = run(tmp_path, ingest_cfg)
    assert [q["reason"] for q in quarantined] == ["conflicting_label", "conflicting_label"]
    assert (quarantined[0]["record_id"], quarantined[1]["prediction_id"]) == ("a", "pred-a")
    assert "damaged, wet" in quarantined[0]["detail"] and quarantined[0]["raw"] != quarantined[1]["raw"]
    assert df.loc["a", ["label", "label_source"]].tolist() == ["normal", "landing"] and audit.empty
    assert balanced(summary) and summary["labels"]["joined"] == 0


def test_a_redelivered_label_line_is_applied_once(tmp_path: Path, ingest_cfg) -> None:
    """At-least-once delivery: the same line twice in a batch, again in a later batch, or naming the record by
    its prediction_id, is one label: applied, not quarantined, not audited against itself, counted."""
    land(tmp_path, "b1", [record("a", label=None, prediction_id="pred-a"), record("b", label=None)])
    line = {**lab("wet", record_id="a"), "labeller": "ana@hub"}
    write_labels(tmp_path / "labels", "L1", [line, line, lab("damaged", record_id="b"), line])
    write_labels(tmp_path / "labels", "L2", [line, {**line, "record_id": None, "prediction_id": "pred-a"}])
    summary, df, audit, quarantined = run(tmp_path, ingest_cfg)
    assert quarantined == [] and audit.empty and balanced(summary)
    assert (summary["labels"]["joined"], summary["labels"]["duplicate_lines"]) == (6, 4)
    assert df.loc["a", ["label", "label_source", "labeller"]].tolist() == ["wet", "inspection", "ana@hub"]
    assert pd.isna(df.loc["b", "labeller"]) and df.loc["b", "label"] == "damaged"


def test_agreeing_labels_at_different_times_are_not_a_conflict(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("wet", "2026-11-22T09:00:00+00:00", "claim", record_id="a"),
                                             {**lab("wet", "2026-11-23T09:00:00+00:00", record_id="a"),
                                              "labeller": "bo"}])
    summary, df, audit, quarantined = run(tmp_path, ingest_cfg)
    assert quarantined == [] and df.loc["a", ["label", "labeller"]].tolist() == ["wet", "bo"]
    assert audit[["label", "source", "superseded_by_labelled_at"]].values.tolist() == [
        ["wet", "claim", "2026-11-23T09:00:00+00:00"]] and audit["labeller"].isna().all()
    assert summary["labels"]["duplicate_lines"] == 0 and balanced(summary)


def test_a_later_labelled_at_supersedes_and_the_audit_keeps_the_earlier(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label="normal")])
    write_labels(tmp_path / "labels", "L1", [lab("damaged", "2026-11-22T09:00:00+00:00", record_id="a")])
    write_labels(tmp_path / "labels", "L2", [lab("wet", "2026-11-25T09:00:00+00:00", "claim", record_id="a")])
    summary, df, audit, _ = run(tmp_path, ingest_cfg)

    assert df.loc["a", ["label", "label_source", "labelled_at"]].tolist() == ["wet", "claim", "2026-11-25T09:00:00+00:00"]
    assert audit[["label", "source", "batch_id"]].values.tolist() == [["normal", "landing", "b1"],
                                                                     ["damaged", "inspection", "L1"]]
    assert pd.isna(audit.loc[0, "line"]) and audit.loc[1, "line"] == 1
    assert set(audit["superseded_by_label"]) == {"wet"} and set(audit["superseded_by_batch"]) == {"L2"}
    assert summary["labels"]["superseded"] == 2 and summary["labels"]["joined"] == 2 and balanced(summary)


def test_an_earlier_labelled_at_in_a_later_batch_does_not_supersede(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("damaged", "2026-11-25T09:00:00+00:00", record_id="a")])
    write_labels(tmp_path / "labels", "L2", [lab("wet", "2026-11-22T09:00:00+00:00", "review", record_id="a")])
    summary, df, audit, _ = run(tmp_path, ingest_cfg)

    assert df.loc["a", ["label", "label_source"]].tolist() == ["damaged", "inspection"]
    assert audit[["label", "batch_id", "superseded_by_label", "superseded_by_batch"]].values.tolist() == [
        ["wet", "L2", "damaged", "L1"]]
    assert summary["labels"]["superseded"] == 1 and summary["labels"]["applied"] == 1


def test_ties_go_to_the_label_feed_then_to_the_later_batch(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label="normal"), record("b", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("wet", T0, record_id="a"), lab("wet", record_id="b")])
    write_labels(tmp_path / "labels", "L2", [lab("damaged", record_id="b")])    # same labelled_at as L1's
    _, df, audit, _ = run(tmp_path, ingest_cfg)
    assert df.loc["a", ["label", "label_source"]].tolist() == ["wet", "inspection"]   # tie with the landing label
    assert df.loc["b", "label"] == "damaged"
    assert audit[["record_id", "label", "batch_id"]].values.tolist() == [["a", "normal", "b1"], ["b", "wet", "L1"]]


def test_a_label_for_an_unknown_id_joins_once_its_record_lands(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("wet", record_id="late"), lab("damaged", prediction_id="pred-x")])
    first, df, _, quarantined = run(tmp_path, ingest_cfg)
    assert [q["reason"] for q in quarantined] == ["unknown_id", "unknown_id"] and balanced(first)
    assert df["label"].isna().all()

    land(tmp_path, "b2", [record("late", label=None), record("x", label=None, prediction_id="pred-x")])
    second, df, _, quarantined = run(tmp_path, ingest_cfg)
    assert quarantined == [] and second["labels"]["joined"] == 2 and balanced(second)
    assert df.loc["late", "label"] == "wet" and df.loc["x", "label"] == "damaged"


def test_label_batches_need_success(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab(record_id="a")], success=False)
    summary, df, _, _ = run(tmp_path, ingest_cfg)
    assert summary["labels"]["landed"] == 0 and pd.isna(df.loc["a", "label"])


def test_prediction_id_on_landing_records(tmp_path: Path, ingest_cfg) -> None:
    """Optional, same rule as record_id, unique across batches; a batch without it stays valid."""
    land(tmp_path, "b1", [record("a"), record("b", prediction_id="pred-1"), record("c", prediction_id=None),
                          record("d", prediction_id="bad id"), record("e", prediction_id=7)])
    land(tmp_path, "b2", [record("f", prediction_id="pred-1")])
    cfg = dataclasses.replace(ingest_cfg, max_bad_share=1.0)
    summary, df, _, _ = run(tmp_path, cfg)
    records_q = [json.loads(x) for x in (tmp_path / "q" / "records.jsonl").read_text().splitlines()]
    assert {q["record_id"]: q["reason"] for q in records_q} == {
        "d": "bad_prediction_id", "e": "bad_type", "f": "duplicate_prediction_id"}
    assert summary["landed"] == summary["accepted"] + summary["quarantined"] == 6
    assert df["prediction_id"].dropna().to_dict() == {"b": "pred-1"} and sorted(df.index) == ["a", "b", "c"]


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_with_labels_twice_is_byte_identical(tmp_path: Path, ingest_cfg) -> None:
    land(tmp_path, "b1", [record("a", label="normal", prediction_id="pred-a"), record("b", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("wet", prediction_id="pred-a"), lab(record_id="nobody"), "{"])
    write_labels(tmp_path / "labels", "L2", [lab("damaged", "2026-11-21T00:00:00Z", record_id="a"),
                                             lab("wet", record_id="b")])
    first = run(tmp_path, ingest_cfg)[0]
    before = {**digests(tmp_path / "raw"), **digests(tmp_path / "q")}
    second = run(tmp_path, ingest_cfg)[0]
    assert first == second and before == {**digests(tmp_path / "raw"), **digests(tmp_path / "q")}
    assert {"records.parquet", "label_audit.parquet", "labels.jsonl", "records.jsonl"} <= {
        Path(k).name for k in before}
    assert first["labels"]["superseded"] == 2 and first["labels"]["quarantined"] == 2


def test_ingest_cli_writes_the_labels_block(tmp_path: Path) -> None:
    import yaml

    from mmcore.data.ingest import main
    from tests.conftest import ROOT

    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "feed", "L1", [lab(record_id="a"), lab(record_id="nobody")])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["labels"] = str(tmp_path / "feed")       # through params: no --labels
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp_path / "params.yaml"), "--landing", str(tmp_path / "landing"),
              "--raw", str(tmp_path / "raw"), "--quarantine", str(tmp_path / "q")]
    assert main([*common, "--report", str(tmp_path / "by_params.json")]) == 0
    assert main([*common, "--labels", str(tmp_path / "nowhere"), "--report", str(tmp_path / "by_flag.json")]) == 0

    by_params = json.loads((tmp_path / "by_params.json").read_text())["labels"]
    assert (by_params["landed"], by_params["joined"], by_params["quarantined"]) == (2, 1, 1)
    assert by_params["by_reason"] == {"unknown_id": 1} and by_params["batches"]["L1"]["joined"] == 1
    assert json.loads((tmp_path / "by_flag.json").read_text())["labels"]["landed"] == 0   # the flag wins


def test_a_late_label_gets_a_split_and_the_gate_set_only_grows(tmp_path: Path, ingest_cfg) -> None:
    """The split of a record depends on its shipment (and first-seen content), never on its label,
    so labelling a record later adds it to the split it always had: earlier records keep theirs."""
    recs = [record(f"r{i}", shipment_id=f"S{i}", label=None if i % 2 else "normal") for i in range(60)]
    files: dict = {}
    for i, r in enumerate(recs):   # a different photo each: every record is its own parcel
        files.update({**good_files(r["record_id"]), f"images/r{i}.jpg": jpeg_bytes(color=(4 * i, 90, 200 - 3 * i))})
    write_batch(tmp_path / "landing", "b1", recs, files)
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.3, salt="labels-test")
    before = split(run(tmp_path, ingest_cfg)[1].reset_index(), cfg).set_index("record_id")["split"]

    write_labels(tmp_path / "labels", "L1", [lab("wet", record_id=f"r{i}") for i in range(1, 60, 2)])
    after = split(run(tmp_path, ingest_cfg)[1].reset_index(), cfg).set_index("record_id")["split"]

    assert len(before) == 30 and len(after) == 60
    assert after[before.index].equals(before)                               # nobody moved
    late = [f"r{i}" for i in range(1, 60, 2)]
    assert [after[r] for r in late] == [assign(f"S{r[1:]}", cfg) for r in late]
    assert set(before[before == "test"].index) < set(after[after == "test"].index)   # the gate set grew


@pytest.mark.parametrize("at", ["2026-11-22T09:00:00Z", "2026-11-22T10:00:00+01:00"])
def test_labelled_at_is_compared_in_utc(tmp_path: Path, ingest_cfg, at: str) -> None:
    """09:00Z and 10:00+01:00 are one instant: a tie, so the later batch wins either way."""
    land(tmp_path, "b1", [record("a", label=None)])
    write_labels(tmp_path / "labels", "L1", [lab("wet", "2026-11-22T09:00:00+00:00", record_id="a")])
    write_labels(tmp_path / "labels", "L2", [lab("damaged", at, record_id="a")])
    assert run(tmp_path, ingest_cfg)[1].loc["a", "label"] == "damaged"
