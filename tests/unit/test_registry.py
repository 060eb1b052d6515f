"""Registry operations on a throwaway SQLite store: rollback moves the champion, lineage traces a version."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mmcore import registry
from mmcore.config import CLASSES
from mmcore.model import FusionModel, ModelBundle
from tests.unit.test_model import MCFG

NAME = "parcel-test"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two registered versions, v1 champion; each run tagged like the train stage tags its runs."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.setup("test")
    for v, commit in ((1, "aaa111"), (2, "bbb222")):
        model_dir = tmp_path / f"model{v}"
        ModelBundle(FusionModel(MCFG), list(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                    {"image": "x", "text": "y"}).save(model_dir)
        with mlflow.start_run():
            mlflow.log_params({"model.width": MCFG.width, "train.lr": 0.001 * v})
            mlflow.log_metric("test_macro_f1", 0.7 + 0.1 * v)
            mlflow.set_tags({"data_version": f"data{v}.dir", "git_commit": commit, "params_hash": f"hash{v}"})
            version = registry.log_model(model_dir, NAME)
            registry.client().set_model_version_tag(NAME, version, "data_version", f"data{v}.dir")
        assert version == str(v)
    registry.promote(NAME, "2")
    yield tmp_path
    mlflow.set_tracking_uri(None)      # setup set MLflow's global URI to this throwaway store


def test_rollback_moves_the_champion_back(store: Path) -> None:
    assert registry.rollback(NAME, 1) == "2"
    assert registry.alias_version(NAME, registry.CHAMPION) == "1"
    assert registry.client().get_model_version(NAME, "1").tags["rollback_from"] == "2"
    assert registry.client().get_model_version(NAME, "2").tags["rolled_back_to"] == "1"


def test_retire_removes_the_champion_on_purpose(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert registry.main(["--model", NAME, "retire"]) == 0
    assert "was version 2" in capsys.readouterr().out
    assert registry.alias_version(NAME, registry.CHAMPION) is None
    assert "retired" in registry.client().get_model_version(NAME, "2").tags
    assert registry.retire(NAME) is None                       # nothing left to retire: nothing changes


def test_rollback_refuses_a_version_that_does_not_exist(store: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="no version 7; registered versions: 1, 2"):
        registry.rollback(NAME, 7)
    assert registry.main(["--model", NAME, "rollback", "--version", "7"]) == 2
    assert "no version 7" in capsys.readouterr().err
    assert registry.alias_version(NAME, registry.CHAMPION) == "2"          # nothing moved


def test_lineage_of_a_served_version(store: Path, capsys: pytest.CaptureFixture) -> None:
    info = registry.lineage(NAME, 1)
    assert (info["data_version"], info["git_commit"], info["params_hash"]) == ("data1.dir", "aaa111", "hash1")
    assert info["params"] == {"model.width": str(MCFG.width), "train.lr": "0.001"}
    assert info["metrics"]["test_macro_f1"] == pytest.approx(0.8)
    assert registry.main(["--model", NAME, "lineage", "--alias", "champion"]) == 0
    out = capsys.readouterr().out
    assert "version 2 (aliases: challenger, champion)" in out and "git_commit: bbb222" in out
    assert "train.lr = 0.002" in out and "test_macro_f1 = 0.9" in out


def test_sqlite_store_is_in_wal_mode(store: Path) -> None:
    import sqlite3

    with sqlite3.connect(store / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_model_is_logged_with_signature_json_example_and_lineage_tags(store: Path) -> None:
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert [c.name for c in info.signature.inputs] == ["note", "image", "sensor"]
    assert [c.name for c in info.signature.outputs] == ["label", *CLASSES, "decision", "prediction_set", "review_reason"]
    assert info.saved_input_example_info["type"] == "dataframe"
    files = {p.name for p in Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(store / "dl")))
             .rglob("*")}
    assert {"input_example.json", "serving_input_example.json", "weights.safetensors", "config.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    tags = registry.client().get_model_version(NAME, "1").tags
    assert tags["git_commit"] == "aaa111" and tags["data_version"] == "data1.dir"


def test_input_example_runs_through_the_pyfunc_decoder() -> None:
    from mmcore.pyfunc import frame_to_records

    full, note_only = frame_to_records(registry.input_example())
    assert full["image"][:2] == b"\xff\xd8" and len(full["sensor"]["temperature_c"]) == 40
    assert note_only == {"note": "box arrived wet", "image": None, "sensor": None}


def test_gate_verdict_is_tagged_on_the_version(store: Path) -> None:
    registry.tag_verdict(NAME, "1", False, ["min_macro_f1", "macro_f1_delta_ci_low"])
    tags = registry.client().get_model_version(NAME, "1").tags
    assert (tags["gate"], tags["gate_failed"]) == ("rejected", "min_macro_f1,macro_f1_delta_ci_low")
    assert registry.lineage(NAME, 1)["gate"] == "rejected"


def test_promotion_lock_is_exclusive(store: Path) -> None:
    import threading

    errors: list[BaseException] = []

    def contender() -> None:
        try:
            with registry.promotion_lock(timeout_s=0.3):
                pass
        except TimeoutError as e:
            errors.append(e)

    with registry.promotion_lock() as lock:
        assert lock == store / "mlflow.db.promote.lock"
        t = threading.Thread(target=contender)
        t.start()
        t.join(timeout=10)
    assert len(errors) == 1 and "another gate" in str(errors[0])
    with registry.promotion_lock(timeout_s=0.3):          # free again once released
        pass


def test_unreachable_server_fails_fast_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:                            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(registry.TrackingUnavailable, match=f"tracking server at {url} is unreachable") as e:
        registry.setup("test")
    assert "MLFLOW_TRACKING_URI" in str(e.value) and "alias was not changed" in str(e.value)
    assert registry.main(["--model", NAME, "rollback", "--version", "1"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "Nothing was changed" in err
    import mlflow

    mlflow.set_tracking_uri(None)


def test_a_sqlite_store_keeps_artifacts_next_to_its_file(store: Path) -> None:
    import mlflow

    assert mlflow.get_experiment_by_name("test").artifact_location == (store / "mlartifacts").as_uri()
    assert any((store / "mlartifacts").rglob("config.json")) and not (store / "mlruns").exists()
