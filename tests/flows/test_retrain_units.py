"""The retrain flow's own logic, without a server: overrides, new-batch detection, which
failures are retried, the verdict drawn from the stage reports, and what a run prints (each
stage's output as it comes without DVC's advice; a bad --set refused before anything starts)."""
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
    assert retrain.parse_set(["train.epochs=5", "ingest.landing=/a/b", "gate.max_ece=0.2", "train.lr=1e-4"]) == {
        "train": {"epochs": 5, "lr": 0.0001}, "ingest": {"landing": "/a/b"}, "gate": {"max_ece": 0.2}}  # as params.yaml
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


def test_a_commands_lines_reach_the_log_while_it_runs() -> None:
    """Each line is handed over as printed (the child is not told to flush: PYTHONUNBUFFERED does it),
    stdout and stderr alike, and the last lines of each are kept for the error message."""
    import sys
    import time

    child = ("import sys, time\n"
             "print('epoch 1/2'); time.sleep(1.5)\n"
             "sys.stdout.write('bar 10%\\rbar 50%\\rbar 100%\\r\\n')\n"
             "print('epoch 2/2'); print('boom', file=sys.stderr); sys.exit(3)")
    seen: list[tuple[float, str, str]] = []
    began = time.monotonic()
    out = retrain.stream([sys.executable, "-c", child], lambda name, line: seen.append(
        (time.monotonic(), name, line)), tail=1)
    ended = time.monotonic()
    assert [(name, line) for _, name, line in seen if name == "stdout"] == [
        ("stdout", "epoch 1/2"), ("stdout", "bar 100%"), ("stdout", "epoch 2/2")]   # a redrawn bar: its last state
    assert [line for _, name, line in seen if name == "stderr"] == ["boom"]
    assert seen[0][0] < ended - 1.0 and seen[0][0] - began < 5     # the first line came before the end
    assert out.returncode == 3 and list(out.stdout) == ["epoch 2/2"] and out.tail("stderr") == "boom"


# what `dvc repro` 3.x prints on stdout for a stage that ran (dvc/stage/run.py, dvcfile.py, repo/scm_context.py,
# commands/repro.py); the stage command's own stdout comes between "Running stage" and "Updating lock file"
DVC_RAN = ["Stage 'split' didn't change, skipping", "Running stage 'train':",
           "> python -m mmcore.stages.train --params params.yaml",
           "train image+text+sensor: 1/2 epochs loss=1.2 val_f1=0.4 (3.0 s/epoch, 3 s elapsed, ~3 s left)",
           "", "Updating lock file 'dvc.lock'", "", "To track the changes with git, run:", "",
           "\tgit add dvc.lock artifacts/.gitignore", "", "To enable auto staging, run:", "",
           "\tdvc config core.autostage true", "Use `dvc push` to send your updates to remote storage."]


def fake_stream(stdout: list[str], stderr: list[str], returncode: int = 0):
    def run(cmd: list[str], on_line, tail: int = retrain.TAIL_LINES) -> retrain.Streamed:
        for line in stdout:
            on_line("stdout", line)
        for line in stderr:
            on_line("stderr", line)
        from collections import deque
        return retrain.Streamed(returncode, deque(stdout, maxlen=tail), deque(stderr, maxlen=tail))
    return run


def test_repro_logs_the_stage_without_dvcs_advice_and_keeps_what_to_commit(monkeypatch) -> None:
    logged: list[str] = []
    monkeypatch.setattr(retrain, "get_run_logger", lambda: SimpleNamespace(info=logged.append, debug=lambda _: None))
    monkeypatch.setattr(retrain, "stream", fake_stream(DVC_RAN, []))
    done = retrain.repro.fn("train")
    assert done["ran"] is True and done["ok"] is True and done["git_add"] == ["artifacts/.gitignore", "dvc.lock"]
    assert logged == DVC_RAN[1:4] + ["Updating lock file 'dvc.lock'"]  # no advice, no blank line, no upstream
    logged.clear()
    monkeypatch.setattr(retrain, "stream", fake_stream(["Stage 'train' didn't change, skipping",
                                                        "Data and pipelines are up to date."], []))
    assert retrain.repro.fn("train")["ran"] is False and logged[0] == "Stage 'train' didn't change, skipping"
    # the stage's own mention of another stage, or on stderr, is not this stage running
    monkeypatch.setattr(retrain, "stream", fake_stream([], ["Running stage 'train':"]))
    assert retrain.repro.fn("train")["ran"] is False
    monkeypatch.setattr(retrain, "stream", fake_stream(DVC_RAN[:3], ["ERROR: failed to reproduce 'train'",
                                                                     "requests.exceptions.ConnectionError"], 1))
    with pytest.raises(retrain.StageFailed, match=r"(?s)dvc repro train failed \(exit 1\):\nERROR: failed.*"
                                                  "ConnectionError"):
        retrain.repro.fn("train")


def test_what_to_commit_is_said_once_for_the_whole_run() -> None:
    runs = [{"stage": "ingest", "git_add": ["dvc.lock", "data/.gitignore"]}, {"stage": "validate", "git_add": []},
            {"stage": "train", "git_add": ["dvc.lock", "artifacts/.gitignore"]}, {"stage": "gate", "ran": False}]
    assert retrain.commit_advice(runs, True) == ("to keep this data version: git add dvc.lock artifacts/.gitignore "
                                                 "data/.gitignore && git commit; its data is already in the DVC remote")
    assert retrain.commit_advice(runs, False).endswith("then `dvc push` the data to a DVC remote (none is configured)")
    assert retrain.commit_advice(runs, None).endswith("then `dvc push` the data")    # a run that stopped early
    assert retrain.commit_advice([{"stage": "ingest", "ran": False, "git_add": []}], True) is None
    assert retrain.dvc_hint("Use `dvc push` to send your updates to remote storage.") == []
    assert retrain.dvc_hint("\tgit add 'a b' c") == ["a b", "c"] and retrain.dvc_hint("git add x") is None


@pytest.mark.parametrize("setting, last", [
    ("train.epochz=5", r"unknown key train\.epochz \(did you mean train\.epochs\?\)\n  train keys: accumulate, "
                       r"batch_size, .*epochs.*weight_decay$"),
    ("train.epochs=abc", r"train\.epochs = 'abc': expected a whole number$"),
])
def test_a_bad_set_ends_the_output_with_its_message_and_starts_nothing(setting: str, last: str) -> None:
    """Checked before the flow: no Prefect server starts (this takes seconds), exit 2, no traceback."""
    import subprocess
    import sys

    before = (ROOT / "params.yaml").read_text()
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", "--set", setting], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("retrain: --set refused, nothing ran and params.yaml is unchanged:\n")
    assert __import__("re").search(last, proc.stderr.rstrip("\n"))
    assert (ROOT / "params.yaml").read_text() == before


def test_the_flow_refuses_bad_overrides_before_taking_the_slot(tmp_path: Path, monkeypatch) -> None:
    """A deployment's `overrides` parameter fails as clearly, before the concurrency slot or any stage."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    errors: list[str] = []
    monkeypatch.setattr(retrain, "get_run_logger", lambda: SimpleNamespace(error=errors.append))
    monkeypatch.setattr(retrain, "ensure_slot", lambda: pytest.fail("took the slot"))
    with pytest.raises(retrain.ParamsError, match=r"unknown key train\.epochz \(did you mean train\.epochs\?\)"):
        retrain.retrain.fn(overrides={"train": {"epochz": 5}}, params=str(params))
    assert "train keys: accumulate" in errors[0]
