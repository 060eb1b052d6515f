"""params.yaml is the one config: it loads whole, and a typo fails at once."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmcore.config import load_params
from tests.conftest import ROOT


def test_project_params_load() -> None:
    p = load_params(ROOT / "params.yaml")
    assert abs(sum(p.synth.class_mix.values()) - 1.0) < 1e-6
    assert 0 < p.split.test_fraction < 1 and p.gate.min_macro_f1 > 0


def test_unknown_key_fails(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["learning_rate"] = 0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="learning_rate"):
        load_params(tmp_path / "params.yaml")


def test_generator_photos_below_the_ingest_minimum_fail(tmp_path: Path) -> None:
    """synth photos smaller than ingest.image_min_side would all be quarantined: refused at load."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    side = raw["ingest"]["image_min_side"]
    raw["synth"]["image_size"] = side - 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=f"synth.image_size = {side - 1} below ingest.image_min_side = {side}"):
        load_params(tmp_path / "params.yaml")
