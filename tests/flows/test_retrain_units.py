"""The retrain flow's own logic, without a server: overrides, new-batch detection, which
failures are retried, and the verdict drawn from the stage reports."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import publish, retrain
from mmcore.config import load_params
from tests.conftest import ROOT


def test_overrides_are_written_with_comments_kept_and_checked_first(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    changed = retrain.apply_overrides(params, {"train": {"epochs": 3}, "ingest": {"landing": "/srv/landing"}})
    assert changed == ["train.epochs=3", "ingest.landing='/srv/landing'"]
    p = load_params(params)
    assert p.train.epochs == 3 and p.ingest.landing == "/srv/landing"
    assert "# The one config." in params.read_text()             # comments survive
    untouched = [ln for ln in (ROOT / "params.yaml").read_text().splitlines() if "epochs" not in ln
                 and "landing" not in ln]
    assert set(untouched) <= set(params.read_text().splitlines())   # long lines are not rewrapped
    assert retrain.apply_overrides(params, {"train": {"epochs": 3}}) == []
    before = params.read_text()
    with pytest.raises(ValueError, match="learning_rate"):
        retrain.apply_overrides(params, {"train": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="executor"):
        retrain.apply_overrides(params, {"ingest": {"executor": "spark"}})
    assert params.read_text() == before and not list(tmp_path.glob(".params.yaml*"))


def test_new_batches_are_finished_ones_not_seen_or_replaced_since(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retrain, "STATE", tmp_path / "state.json")
    for name in ("a", "b", "c"):
        (tmp_path / "landing" / name).mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / "landing" / name / "_SUCCESS").write_text("")
    now = retrain.landed(tmp_path / "landing")
    assert sorted(now) == ["a", "b"] and retrain.new_batches(now) == ["a", "b"]
    retrain.STATE.write_text(__import__("json").dumps(now))
    assert retrain.new_batches(retrain.landed(tmp_path / "landing")) == []
    import os
    os.utime(tmp_path / "landing" / "b" / "_SUCCESS", ns=(1, now["b"] + 10**9))   # b was replaced
    assert retrain.new_batches(retrain.landed(tmp_path / "landing")) == ["b"]


def test_a_label_batch_alone_is_new_data_and_the_label_folder_is_made(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retrain, "STATE", tmp_path / "state.json")
    (tmp_path / "landing" / "a").mkdir(parents=True)
    (tmp_path / "landing" / "a" / "_SUCCESS").write_text("")
    now = retrain.feeds(tmp_path / "landing", tmp_path / "labels")
    assert (tmp_path / "labels").is_dir() and list(now) == ["a"]    # dvc.yaml's ingest stage needs the folder
    retrain.STATE.write_text(__import__("json").dumps(now))
    (tmp_path / "labels" / "L1").mkdir()
    (tmp_path / "labels" / "L1" / "_SUCCESS").write_text("")
    assert retrain.new_batches(retrain.feeds(tmp_path / "landing", tmp_path / "labels")) == ["labels/L1"]


def test_a_params_or_code_change_runs_the_stages_without_new_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retrain, "INPUTS", tmp_path / "inputs.txt")
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    first = retrain.inputs_fingerprint(params)
    assert retrain.inputs_changed(first)                      # no run yet
    retrain.INPUTS.write_text(first)
    assert not retrain.inputs_changed(retrain.inputs_fingerprint(params))
    params.write_text(params.read_text().replace("image_size: 224", "image_size: 192", 1))
    assert retrain.inputs_changed(retrain.inputs_fingerprint(params))


@pytest.mark.parametrize("message, retried", [
    ("dvc repro train failed (exit 1):\nrequests.exceptions.ConnectionError: Max retries exceeded", True),
    ("mlflow.exceptions.MlflowException: API request failed with HTTP 503 Service Unavailable", True),
    ("sqlite3.OperationalError: database is locked", True),
    ("ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
    ("validate: FAILED: 40/41 expectations met on 504 rows", False),
    ("KeyError: 'macro_f1'", False),
])
def test_only_transient_failures_are_retried(message: str, retried: bool) -> None:
    state = SimpleNamespace(result=lambda raise_on_failure=False: RuntimeError(message))
    assert retrain.transient(None, None, state) is retried


def test_verdict_reads_only_this_runs_reports() -> None:
    run = {"landing": "x", "stages": []}
    assert publish.verdict(run, {})["status"] == "no_new_data"
    run["stages"] = [{"stage": "validate", "ran": False, "ok": False}]
    v = publish.verdict(run, {"validation": {"success": False, "hard_failures": ["batch b: rejected"]}})
    assert v == {"status": "validation_failed", "summary": "validation failed, nothing was trained",
                 "reasons": ["batch b: rejected"]}
    gate = {"promoted": False, "challenger_version": 3, "champion_version": 2,
            "reasons": ["min_macro_f1: 0.8 passes limit 0.6", "min_delta: -0.01 fails limit 0.0"],
            "rules": [{"passed": True}, {"passed": False}]}
    v = publish.verdict({"landing": "x", "stages": [{"stage": "gate", "ran": True}]}, {"gate": gate})
    assert v["status"] == "rejected" and v["reasons"] == ["min_delta: -0.01 fails limit 0.0"]
    assert publish.verdict({"landing": "x", "stages": [{"stage": "ingest", "ran": False}]}, {})["status"] == "unchanged"


def test_parse_set() -> None:
    assert retrain.parse_set(["train.epochs=5", "ingest.landing=/a/b", "gate.max_ece=0.2"]) == {
        "train": {"epochs": 5}, "ingest": {"landing": "/a/b"}, "gate": {"max_ece": 0.2}}
    with pytest.raises(SystemExit):
        retrain.parse_set(["epochs=5"])


def test_a_validate_stage_that_could_not_run_is_a_failure_not_a_data_verdict(tmp_path: Path, monkeypatch) -> None:
    import json
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    began = time.time()
    assert not retrain.validation_failed_since(began)                 # no report at all
    (tmp_path / "reports" / "validation.json").write_text(json.dumps({"success": False}))
    assert retrain.validation_failed_since(began)                     # a fresh failing report
    assert not retrain.validation_failed_since(began + 60)            # a stale one from an earlier run
