"""Registry operations on a throwaway SQLite store: rollback moves the champion, lineage traces a version."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcore import registry
from mmcore.config import CLASSES
from mmcore.model import FusionModel, ModelBundle
from tests.unit.test_model import MCFG

NAME = "parcel-test"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two registered versions, v1 champion; each run tagged like the train stage tags its runs."""
    import mlflow

    monkeypatch.chdir(tmp_path)                        # default artifact root ./mlruns lands in tmp
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
    return tmp_path


def test_rollback_moves_the_champion_back(store: Path) -> None:
    assert registry.rollback(NAME, 1) == "2"
    assert registry.alias_version(NAME, registry.CHAMPION) == "1"
    assert registry.client().get_model_version(NAME, "1").tags["rollback_from"] == "2"
    assert registry.client().get_model_version(NAME, "2").tags["rolled_back_to"] == "1"


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
