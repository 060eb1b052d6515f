"""Validate stage end to end: a real GX file context, suite, checkpoint and Data Docs.

The profile frames are synthetic (built here) so each test states exactly which
rule it breaks; no ingest run is needed.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmcore.config import CLASSES, load_params
from mmcore.schema import PROFILE_COLUMNS
from mmcore.stages.validate import main, run_validation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg():
    return load_params(REPO / "params.yaml").validate


def _optional(mask: np.ndarray, values) -> list:
    """Values where the modality is present, None (-> <NA>) where it is missing."""
    return [v if m else None for m, v in zip(mask, values)]


def make_profile(n: int = 100, seed: int = 0) -> pd.DataFrame:
    """A clean profile table: every PROFILE_COLUMNS column, its dtype, all rules met."""
    rng = np.random.default_rng(seed)
    has_image, has_note, has_sensor = (rng.random((3, n)) > [[0.1], [0.2], [0.1]])
    lang = np.where(~has_note, "empty", np.where(np.arange(n) % 3 == 0, "zh", "en"))
    label = [None if i % 25 == 7 else CLASSES[i % len(CLASSES)] for i in range(n)]
    sensor = lambda lo, hi: np.where(has_sensor, rng.uniform(lo, hi, n), np.nan)  # noqa: E731
    frame = pd.DataFrame({
        "record_id": [f"rec-{i:05d}" for i in range(n)],
        "shipment_id": [f"shp_{i // 3}" for i in range(n)],
        "captured_at": ["2024-05-01T10:00:00+00:00"] * n, "hub": ["SHA01"] * n,
        "prediction_id": [f"pred-{i}" if i % 4 == 0 else None for i in range(n)],
        # a few labels came late from the label feed (mmcore/monitor/labels.py), the rest with their record
        "label": label, "label_source": [None if lb is None else "claim" if i % 10 == 3 else "landing"
                                         for i, lb in enumerate(label)],
        "labelled_at": [None if lb is None else "2024-05-03T08:00:00+00:00" if i % 10 == 3 else
                        "2024-05-01T10:00:00+00:00" for i, lb in enumerate(label)],
        "labeller": [None] * n, "label_batch": [None] * n,
        "batch_id": ["b0001"] * n, "shard": ["shard-0000"] * n,
        "content_sha256": ["0" * 64] * n,
        "has_image": has_image,
        "image_width": _optional(has_image, rng.integers(64, 512, n)),
        "image_height": _optional(has_image, rng.integers(64, 512, n)),
        "image_sha256": _optional(has_image, ["a" * 64] * n),
        "image_brightness": np.where(has_image, rng.uniform(40, 200, n), np.nan),
        "has_note": has_note, "note": _optional(has_note, ["corner crushed"] * n),
        "note_length": np.where(has_note, 14, 0), "note_lang": lang,
        "note_unk_share": np.where(lang == "zh", 0.75, np.where(lang == "en", 0.01, np.nan)),
        "has_sensor": has_sensor,
        "sensor_rows": _optional(has_sensor, rng.integers(30, 5000, n)),
        "sensor_nan_count": _optional(has_sensor, [0] * n),
        "temperature_min": sensor(-5, 5), "temperature_max": sensor(10, 30),
        "humidity_min": sensor(10, 40), "humidity_max": sensor(50, 90),
        "shock_max": sensor(0, 20), "light_max": sensor(0, 500),
        "sensor_stuck_channels": _optional(has_sensor, [""] * n),
    })
    return frame.astype(PROFILE_COLUMNS)


def _first(frame: pd.DataFrame, column: str) -> int:
    """Index of the first row where a modality flag is set."""
    return int(frame.index[frame[column]][0])


def _break_duplicate_id(f: pd.DataFrame) -> None:
    f.loc[5, "record_id"] = f.loc[4, "record_id"]


def _break_temperature(f: pd.DataFrame) -> None:
    f.loc[_first(f, "has_sensor"), "temperature_max"] = 120.0


def _break_label(f: pd.DataFrame) -> None:
    f.loc[3, "label"] = "crushed"


def _break_class_mix(f: pd.DataFrame) -> None:
    f.loc[f["label"] == "tampered", "label"] = "normal"


def _break_missing_images(f: pd.DataFrame) -> None:
    f.loc[: int(len(f) * 0.6), ["has_image", "image_width", "image_height",
                                  "image_brightness"]] = [False, None, None, np.nan]


def _break_schema(f: pd.DataFrame) -> None:
    f.drop(columns=["sensor_rows"], inplace=True)


@pytest.mark.parametrize(("breaker", "named"), [
    (_break_duplicate_id, "expect_column_values_to_be_unique(record_id"),
    (_break_temperature, "expect_column_values_to_be_between(temperature_max"),
    (_break_label, "expect_column_values_to_be_in_set(label"),
    (_break_class_mix, "expect_column_mean_to_be_between(label_share_tampered"),
    (_break_missing_images, "expect_column_mean_to_be_between(missing_image"),
    (_break_schema, "expect_table_columns_to_match_set((table)"),
])
def test_broken_frame_fails_hard_naming_the_expectation(tmp_path, cfg, breaker, named):
    frame = make_profile()
    breaker(frame)
    summary = run_validation(frame, cfg, tmp_path / "gx")
    assert summary["success"] is False
    assert any(line.startswith(named) for line in summary["hard_failures"]), \
        summary["hard_failures"]


def test_good_frame_passes_and_builds_data_docs(tmp_path, cfg, capfd):
    summary = run_validation(make_profile(), cfg, tmp_path / "gx")
    assert "Calculating Metrics" not in capfd.readouterr().err  # tqdm bars are off
    assert summary["success"] is True, summary["hard_failures"]
    assert summary["hard_failures"] == []
    assert summary["rows"] == 100
    assert summary["evaluated"] == summary["successful"] == len(summary["results"]) > 25
    assert Path(summary["data_docs"]).name == "index.html"
    assert Path(summary["data_docs"]).is_file()
    assert (tmp_path / "gx" / "great_expectations.yml").is_file()
    assert (tmp_path / "gx" / "expectations" / "parcel_profile.json").is_file()
    json.dumps(summary, allow_nan=False)  # JSON-able, no NaN
    gitignore = (tmp_path / "gx" / ".gitignore").read_text(encoding="utf-8")
    assert "uncommitted/" in gitignore.split()


def test_unk_share_per_language_warns_for_chinese(tmp_path, cfg):
    summary = run_validation(make_profile(), cfg, tmp_path / "gx")
    assert summary["unk_share_by_lang"]["zh"] == pytest.approx(0.75)
    assert summary["unk_share_by_lang"]["en"] == pytest.approx(0.01)
    assert [w for w in summary["warnings"] if w.startswith("note_lang=zh")]
    assert not [w for w in summary["warnings"] if w.startswith("note_lang=en")]


def test_rerun_is_idempotent(tmp_path, cfg):
    frame = make_profile()
    first = run_validation(frame, cfg, tmp_path / "gx")
    second = run_validation(frame, cfg, tmp_path / "gx")
    assert first == second
    for folder in ("expectations", "checkpoints", "validation_definitions"):
        assert len(list((tmp_path / "gx" / folder).glob("*.json"))) == 1
    yml = (tmp_path / "gx" / "great_expectations.yml").read_text(encoding="utf-8")
    assert yml.count("whole_table:") == 1  # one batch definition, not one per run


def test_warning_level_failure_still_succeeds(tmp_path, cfg):
    frame = make_profile()
    dark = frame.index[frame["has_image"]][:2]
    frame.loc[dark, "image_brightness"] = 1.0  # 2 black photos: odd, not systematic
    summary = run_validation(frame, cfg, tmp_path / "gx")
    assert summary["success"] is True, summary["hard_failures"]
    assert any(w.startswith("expect_column_values_to_be_between(image_brightness)")
               for w in summary["warnings"]), summary["warnings"]
    failed = [r for r in summary["results"] if not r["success"]]
    assert [r["severity"] for r in failed] == ["warning"]


def _cli_workspace(tmp_path: Path, frame: pd.DataFrame) -> list[str]:
    """params.yaml + data/raw/records.parquet in tmp_path; returns the CLI argv."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "raw").mkdir()
    frame.to_parquet(tmp_path / "raw" / "records.parquet", index=False)
    return ["--params", str(tmp_path / "params.yaml"), "--raw", str(tmp_path / "raw"),
            "--gx", str(tmp_path / "gx"), "--report", str(tmp_path / "reports" / "v.json")]


def test_main_fails_with_report_and_clear_message(tmp_path, capsys):
    frame = make_profile()
    _break_duplicate_id(frame)
    assert main(_cli_workspace(tmp_path, frame)) == 1
    report = json.loads((tmp_path / "reports" / "v.json").read_text(encoding="utf-8"))
    assert report["success"] is False
    assert any("record_id" in line for line in report["hard_failures"])
    err = capsys.readouterr().err
    assert "FAILED" in err and "expect_column_values_to_be_unique(record_id" in err
    assert "index.html" in err and "params.yaml" in err


def test_main_passes_on_good_data(tmp_path, capsys):
    assert main(_cli_workspace(tmp_path, make_profile())) == 0
    assert json.loads((tmp_path / "reports" / "v.json").read_text())["success"] is True
    assert "PASSED" in capsys.readouterr().out


def test_main_reads_the_photo_minimum_from_ingest_params(tmp_path):
    """One setting: the smallest side validation expects is the one ingest quarantines below."""
    frame = make_profile()
    frame.loc[frame["has_image"], "image_width"] = 80
    argv = _cli_workspace(tmp_path, frame)
    assert main(argv) == 0  # ingest.image_min_side: 32
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("image_min_side: 32", "image_min_side: 100", 1))
    assert main(argv) == 1
    report = json.loads((tmp_path / "reports" / "v.json").read_text(encoding="utf-8"))
    assert any(line.startswith("expect_column_values_to_be_between(image_width, mostly=0.95)")
               for line in report["hard_failures"]), report["hard_failures"]
    suite = json.loads((tmp_path / "gx" / "expectations" / "parcel_profile.json").read_text(encoding="utf-8"))
    assert suite["meta"]["ingest_params"] == {"image_min_side": 100}


def test_main_without_input_still_writes_report(tmp_path):
    argv = _cli_workspace(tmp_path, make_profile())
    (tmp_path / "raw" / "records.parquet").unlink()
    assert main(argv) == 1
    report = json.loads((tmp_path / "reports" / "v.json").read_text(encoding="utf-8"))
    assert "ingest" in report["hard_failures"][0]


# --------------------------------------------------------------------------- drift


def _drifted(reference: pd.DataFrame, n: int = 200) -> pd.DataFrame:
    """reference + one new batch whose photos are brighter and 20% from an unknown hub."""
    new = make_profile(n, seed=2)
    new["batch_id"] = "b0002"
    new["record_id"] = [f"new-{i:05d}" for i in range(n)]
    new["image_brightness"] += 40.0  # stays inside brightness_range: drift, not bad data
    new.loc[new.index[::5], "hub"] = "ZZZ09"
    return pd.concat([reference, new], ignore_index=True).astype(PROFILE_COLUMNS)


def _failed(summary: dict) -> dict[tuple[str, str], str]:
    """(expectation, column) -> severity of each failed expectation."""
    return {(r["expectation"], r["column"]): r["severity"]
            for r in summary["results"] if not r["success"]}


def test_reference_gives_drift_report_and_gx_drift_checks(tmp_path, cfg):
    reference = make_profile(300, seed=1)
    frame = _drifted(reference)
    summary = run_validation(frame, cfg, tmp_path / "gx", reference=reference)
    report = summary["drift"]
    assert report["status"] == "fail" and report["fail"] == ["image_brightness", "hub"]
    assert report["warn"] == []
    assert report["compared"] == {"scope": "new_batches", "rows": 200, "batches": ["b0002"]}
    assert report["reference"] == {"rows": 300}
    assert report["columns"]["temperature_max"]["status"] == "ok"
    json.dumps(report, allow_nan=False)
    # drift only warns by default; GX shows the same drift in Data Docs
    assert summary["success"] is True, summary["hard_failures"]
    assert any(w.startswith("drift(image_brightness): PSI") for w in summary["warnings"])
    assert _failed(summary) == {
        ("expect_column_kl_divergence_to_be_less_than", "image_brightness"): "warning",
        ("expect_column_values_to_be_in_set", "hub"): "warning"}
    drift_checks = [r for r in summary["results"] if r["expectation"] in (
        "expect_column_kl_divergence_to_be_less_than", "expect_column_mean_to_be_between")
        and not r["column"].startswith(("missing_", "label_share_"))]
    assert len(drift_checks) == 5  # label, brightness, temperature, shock (KL); note_length (mean)

    hard = dataclasses.replace(cfg, drift_fail_is_hard=True)
    summary = run_validation(frame, hard, tmp_path / "gx", reference=reference)
    assert summary["success"] is False
    assert any(h.startswith("drift(hub): PSI") for h in summary["hard_failures"])
    assert any(h.startswith("expect_column_kl_divergence_to_be_less_than(image_brightness")
               for h in summary["hard_failures"])


def test_same_data_as_reference_has_no_drift(tmp_path, cfg):
    reference = make_profile(300, seed=1)
    summary = run_validation(reference, cfg, tmp_path / "gx", reference=reference)
    assert summary["drift"]["status"] == "ok"
    assert summary["drift"]["compared"]["scope"] == "all_rows"
    assert summary["success"] is True and _failed(summary) == {}


def test_main_writes_drift_report_with_and_without_reference(tmp_path, monkeypatch):
    from mmcore.stages import validate

    reference = make_profile(300, seed=1)
    argv = _cli_workspace(tmp_path, _drifted(reference)) + [
        "--drift-report", str(tmp_path / "reports" / "drift.json"),
        "--drift-md", str(tmp_path / "reports" / "drift.md")]
    monkeypatch.setattr(validate, "champion_reference", lambda model, experiment: None)
    assert main(argv) == 0
    report = json.loads((tmp_path / "reports" / "drift.json").read_text(encoding="utf-8"))
    assert report == {"reference": None, "columns": {}, "status": "no_reference"}
    assert "no reference" in (tmp_path / "reports" / "drift.md").read_text(encoding="utf-8")

    monkeypatch.setattr(validate, "champion_reference", lambda model, experiment: reference)
    assert main(argv) == 0  # drift_fail_is_hard is false in params.yaml
    report = json.loads((tmp_path / "reports" / "drift.json").read_text(encoding="utf-8"))
    assert report["status"] == "fail" and "image_brightness" in report["fail"]
    md = (tmp_path / "reports" / "drift.md").read_text(encoding="utf-8")
    assert md.startswith("# Data drift: FAIL") and "| image_brightness | **FAIL** |" in md


def test_unreadable_registry_warns_and_says_drift_not_run(tmp_path, monkeypatch):
    from mmcore.stages import validate

    def broken(model, experiment):
        raise ConnectionError("tracking server down")

    argv = _cli_workspace(tmp_path, make_profile()) + [
        "--drift-report", str(tmp_path / "drift.json")]
    monkeypatch.setattr(validate, "champion_reference", broken)
    assert main(argv) == 0  # drift is optional by default: the rest still validates
    summary = json.loads((tmp_path / "reports" / "v.json").read_text(encoding="utf-8"))
    assert any("tracking server down" in w for w in summary["warnings"])
    report = json.loads((tmp_path / "drift.json").read_text(encoding="utf-8"))
    assert report["status"] == "not_run" and "tracking server down" in report["message"]


def test_champion_reference_round_trip_through_mlflow(tmp_path, monkeypatch):
    """train logs the reference with the run; validate finds it behind alias champion."""
    import mlflow

    from mmcore import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = _cli_workspace(tmp_path, _drifted(make_profile(300, seed=1))) + [
        "--drift-report", str(tmp_path / "drift.json")]
    assert main(argv) == 0  # no champion yet
    assert json.loads((tmp_path / "drift.json").read_text())["status"] == "no_reference"
    registry.setup("parcel-condition")
    with mlflow.start_run() as run:
        registry.log_reference(make_profile(300, seed=1))
    c = registry.client()
    c.create_registered_model("parcel-condition")
    version = c.create_model_version("parcel-condition", f"runs:/{run.info.run_id}/model",
                                     run_id=run.info.run_id).version
    registry.promote("parcel-condition", version)
    assert main(argv) == 0
    report = json.loads((tmp_path / "drift.json").read_text())
    assert report["reference"] == {"model": "parcel-condition", "alias": "champion",
                                   "version": str(version), "run_id": run.info.run_id,
                                   "rows": 300}
    assert report["fail"] == ["image_brightness", "hub"]
