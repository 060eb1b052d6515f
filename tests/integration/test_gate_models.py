"""The gate with real models: tiny mmcore models trained on generated records, registered in a
throwaway MLflow SQLite store, scored by the evaluate stage and judged by the gate stage.

Models (trained once per session on ~180 records, 64 px images, 15 epochs):
  good     the real labels                      (test macro-F1 about 0.6)
  weak     one epoch only                       (about 0.15: the champion a better model replaces)
  shuffled the training labels permuted         (chance level: must never be promoted)
  blind    the real labels, no sensor input      (sensor-blind: the behavioural suites must reject it)
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from mmcore import registry
from mmcore.config import load_params

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY = {"synth": {"batches": 1, "records_per_batch": 300, "image_size": 64},
        "model": {"image_size": 64, "sensor_length": 32, "width": 64, "hidden": 64},
        "train": {"epochs": 15, "patience": 15, "lr": 0.005},
        # behavioural suites: 30 perturbed records (of ~60) keep the added embedding time small; the 90
        # templates, which catch the sensor-blind model, do not depend on it
        "evaluate": {"n_boot": 500, "latency_records": 3, "latency_warmup": 0, "latency_repeats": 1,
                     "behaviour_records": 30},
        # ~60 gate-set records: floors that a real model clears and chance does not; latency and
        # calibration are not what this file tests
        "gate": {"min_macro_f1": 0.35, "min_accuracy": 0.35, "min_class_f1": 0.0, "max_ece": 1.0,
                 "max_ece_classwise": 1.0, "max_latency_p95_ms": 60000},
        # these models are trained here without the train stage's calibration: abstention has its own tests
        "selective": {"coverage_slack": 0.9}}
NAME = "parcel-condition"


@dataclasses.dataclass(frozen=True)
class Data:
    ws: Path
    params: Path
    raw: Path
    splits: Path
    cache: Path
    models: Path          # good/, weak/, shuffled/, blind/ and unimodal/{image,text,sensor}
    hists: dict[str, Any]

    def stage_args(self) -> list[str]:
        return ["--params", str(self.params), "--raw", str(self.raw), "--splits", str(self.splits),
                "--cache", str(self.cache)]


def write_params(ws: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """Generated records, ingested and split, and the models above trained on them."""
    from mmcore.data import ingest, split
    from mmcore.synth.generate import generate_default
    from mmcore.features import Featurizer
    from mmcore.model import MODALITIES
    from mmcore.stages.common import split_records
    from mmcore.train import train_bundle

    ws = tmp_path_factory.mktemp("gate-data")
    params = write_params(ws, TINY)
    p = load_params(params)
    generate_default(ws / "landing", p.synth, workers=1)
    raw, splits, cache = ws / "raw", ws / "split" / "splits.parquet", ws / "cache"
    assert ingest.main(["--params", str(params), "--landing", str(ws / "landing"), "--raw", str(raw),
                        "--quarantine", str(ws / "quarantine"), "--report", str(ws / "ingest.json")]) == 0
    assert split.main(["--params", str(params), "--raw", str(raw), "--out", str(splits)]) == 0
    train, train_y = split_records(raw, splits, "train")
    val, val_y = split_records(raw, splits, "val")
    feat = Featurizer(p.model, cache_dir=cache, batch_size=32)
    shuffled_y = list(train_y)
    random.Random(0).shuffle(shuffled_y)
    models, hists = ws / "models", {}
    plans = {"good": (train_y, p.model, p.train),
             "weak": (train_y, p.model, dataclasses.replace(p.train, epochs=1)),
             "shuffled": (shuffled_y, p.model, p.train),
             "blind": (train_y, dataclasses.replace(p.model, modalities=("image", "text")), p.train),
             **{f"unimodal/{m}": (train_y, dataclasses.replace(p.model, modalities=(m,)),
                                  dataclasses.replace(p.train, epochs=2)) for m in MODALITIES}}
    for name, (labels, mcfg, tcfg) in plans.items():
        bundle, hists[name] = train_bundle(feat, train, labels, val, val_y, mcfg, tcfg)
        bundle.save(models / name)
    return Data(ws, params, raw, splits, cache, models, hists)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty registry of our own (the artifact root ./mlruns lands in tmp_path too)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    mlflow.set_tracking_uri(None)      # registry.setup set MLflow's global URI: leave no stale store behind


def register(data: Data, model: str) -> dict[str, Any]:
    """Log and register a trained model as the train stage does; returns its train report."""
    import pandas as pd

    from mmcore.data.raw import load_profile
    from mmcore.leak import fit_rows
    from mmcore.stages.train import log_run

    raw = yaml.safe_load(data.params.read_text())
    fitted = fit_rows(load_profile(data.raw), pd.read_parquet(data.splits))     # what the model was fitted on
    run_id, version = log_run(raw, {"fused": data.hists[model]}, data.models / model, NAME, NAME, "test-data",
                              fitted=fitted)
    report = {"run_id": run_id, "model_version": version, "model": model}
    (Path.cwd() / f"train-v{version}.json").write_text(json.dumps(report))
    return report


def evaluate(data: Data, trained: dict[str, Any], **paths: Path) -> Path:
    """The evaluate stage on the gate set: challenger, baselines and whatever is champion now."""
    from mmcore.stages import evaluate as stage

    v = trained["model_version"]
    out = Path.cwd() / f"metrics-v{v}.json"
    args = dataclasses.replace(data, **paths).stage_args()
    assert stage.main([*args, "--model", str(data.models / trained["model"]),
                       "--unimodal", str(data.models / "unimodal"), "--train-report", f"train-v{v}.json",
                       "--out", str(out), "--plots", f"plots-v{v}"]) == 0
    return out


def gate(data: Data, metrics: Path) -> dict[str, Any]:
    from mmcore.stages import gate as stage

    out = metrics.with_name(metrics.name.replace("metrics", "gate"))
    assert stage.main(["--params", str(data.params), "--metrics", str(metrics), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def tags(version: str | int) -> dict[str, str]:
    return registry.client().get_model_version(NAME, str(version)).tags


def failed(report: dict[str, Any]) -> list[str]:
    assert report["failed"] == [r["rule"] for r in [*report["rules"], report["champion_check"]] if not r["passed"]]
    return report["failed"]


def test_shuffled_labels_are_never_promoted(data: Data, store: Path) -> None:
    shuffled = register(data, "shuffled")
    first = gate(data, evaluate(data, shuffled))                  # no champion yet: the floors alone
    assert not first["promoted"] and {"min_macro_f1", "min_accuracy"} <= set(failed(first)), first["reasons"]
    assert registry.alias_version(NAME, registry.CHAMPION) is None
    assert tags(1)["gate"] == "rejected" and "min_macro_f1" in tags(1)["gate_failed"]
    assert not any(r["rule"].startswith("behaviour_regression") for r in first["rules"])    # reported, not gated

    good = register(data, "good")
    registry.promote(NAME, good["model_version"])
    again = gate(data, evaluate(data, shuffled))                  # now against a real champion
    assert not again["promoted"] and again["compared_with"] == 2
    assert {"min_macro_f1", "macro_f1_noninferiority"} <= set(failed(again)), again["reasons"]
    assert again["verdict"] == "rejected" and tags(1)["gate"] == "rejected"
    assert again["comparison"]["high"] < 0                        # clearly worse, not just unproven
    assert registry.alias_version(NAME, registry.CHAMPION) == "2"


def test_an_identical_challenger_is_not_promoted(data: Data, store: Path) -> None:
    champion = register(data, "good")
    registry.promote(NAME, champion["model_version"])
    twin = register(data, "good")                                 # the same weights, a new version
    report = gate(data, evaluate(data, twin))
    comp = report["comparison"]
    assert (comp["low"], comp["observed"], comp["high"]) == (0.0, 0.0, 0.0)
    assert comp["scores"]["brier"]["low"] == comp["scores"]["brier"]["high"] == 0.0
    assert not report["promoted"] and failed(report) == ["brier_superiority"], report["reasons"]
    assert report["verdict"] == "inconclusive"            # not better, not worse: stays a candidate
    assert registry.alias_version(NAME, registry.CHAMPION) == "1"
    assert tags(2)["gate"] == "inconclusive" and tags(2)["gate_failed"] == "brier_superiority"


def test_a_challenger_that_ignores_the_sensor_is_rejected_by_the_behavioural_suites(data: Data,
                                                                                   store: Path) -> None:
    champion = register(data, "good")
    registry.promote(NAME, champion["model_version"])
    blind = register(data, "blind")
    metrics = evaluate(data, blind)
    report = gate(data, metrics)
    scored = json.loads(metrics.read_text())
    mine, theirs = scored["behaviour"], scored["champion"]["behaviour"]
    assert {k: v["n"] for k, v in mine.items()} == {k: v["n"] for k, v in theirs.items()}     # the same cases
    rule = next(r for r in report["rules"] if r["rule"] == "behaviour_regression:minimum_functionality")
    assert not report["promoted"] and not rule["passed"], report["reasons"]
    # the sensor-only templates are where it fails: without a trace model it falls back on its prior
    assert mine["minimum_functionality"]["by_kind"]["sensor"] >= 0.6, mine["minimum_functionality"]
    assert mine["directional"]["failure_rate"] == 0.0          # blind to the trace: nothing to lower
    assert registry.alias_version(NAME, registry.CHAMPION) == "1"


def lock_holders(lock: Path, pids: list[int]) -> set[int]:
    """Processes among `pids` that have the lock file open (waiting for it or holding it)."""
    out = set()
    for pid in pids:
        try:
            if any(os.readlink(fd) == str(lock) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                out.add(pid)
        except OSError:
            pass
    return out


def test_clearly_better_challengers_racing_two_gates_promote_exactly_one(data: Data, store: Path) -> None:
    weak = register(data, "weak")
    registry.promote(NAME, weak["model_version"])
    better = [register(data, "good"), register(data, "good")]     # versions 2 and 3, both scored against 1
    metrics = [evaluate(data, t) for t in better]
    for m in metrics:
        scored = json.loads(m.read_text())
        assert scored["champion"]["version"] == 1 and scored["comparison"]["low"] > 0.1, scored["comparison"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mmcore.stages.gate", "--params", str(data.params)]
    # Hold the promotion lock until both gates wait on it, then let them go at once.
    with registry.promotion_lock() as lock:
        procs = [subprocess.Popen([*cmd, "--metrics", str(m), "--out", str(m.with_name(f"race-{i}.json"))],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, m in enumerate(metrics)]
        deadline = time.monotonic() + 120
        while lock_holders(lock, [p.pid for p in procs]) != {p.pid for p in procs}:
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            assert time.monotonic() < deadline, "the gates never reached the promotion lock"
            time.sleep(0.1)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(m.with_name(f"race-{i}.json").read_text()) for i, m in enumerate(metrics)]

    winner, loser = sorted(reports, key=lambda r: not r["promoted"])
    assert winner["promoted"] and not loser["promoted"], outs
    assert winner["champion_before"] == 1 and failed(winner) == []
    assert loser["champion_before"] == winner["challenger_version"] and failed(loser) == ["champion_unchanged"]
    assert registry.alias_version(NAME, registry.CHAMPION) == str(winner["challenger_version"])
    assert tags(winner["challenger_version"])["gate"] == "promoted"
    assert tags(loser["challenger_version"])["gate"] == "rejected"

    # From the command line: roll back to the weak model, then trace what is served.
    cli = [sys.executable, "-m", "mmcore.registry", "--params", str(data.params)]
    back = subprocess.run([*cli, "rollback", "--version", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert back.returncode == 0 and f"version {winner['challenger_version']} -> 1" in back.stdout, back.stderr
    shown = subprocess.run([*cli, "lineage", "--alias", "champion", "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["version"] == 1 and "champion" in info["aliases"] and info["data_version"] == "test-data"
    assert len(info["params_hash"]) == 12 and info["gate"] == "promoted"
    assert info["params"]["train.epochs"] == "15" and "fused_val_macro_f1" in info["metrics"]
    assert tags(1)["rollback_from"] == str(winner["challenger_version"])


def test_a_changed_split_salt_puts_fitted_records_in_the_gate_set_and_the_gate_refuses(data: Data,
                                                                                      store: Path) -> None:
    from mmcore.data import split

    champion = register(data, "good")
    registry.promote(NAME, champion["model_version"])
    salted = write_params(store, {**TINY, "split": {"salt": "changed-by-a-user"}})
    resplit = store / "resplit.parquet"
    assert split.main(["--params", str(salted), "--raw", str(data.raw), "--out", str(resplit)]) == 0
    challenger = register(data, "good")
    report = gate(data, evaluate(data, challenger, params=salted, splits=resplit))
    leak = next(r for r in report["rules"] if r["rule"] == "gate_set_held_out:champion")
    assert not report["promoted"] and "gate_set_held_out:champion" in failed(report)
    assert leak["value"] > 10 and leak["by"]["record_id"] > 10, leak
    assert any("split.salt" in line and "gate-set records were in the champion's" in line for line in report["reasons"])
    assert registry.alias_version(NAME, registry.CHAMPION) == "1"
    # the same gate on the split the champion was trained on finds nothing
    held = json.loads(evaluate(data, challenger).read_text())["leak"]
    assert held["champion"]["records"] == 0 and held["challenger"]["records"] == 0
