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


def test_overrides_are_checked_against_the_typed_config() -> None:
    """What `--set` and the flow's `overrides` go through before anything runs: the key, its type, then
    the section's own checks; every problem named, with the allowed keys and a close match."""
    from mmcore.config import ParamsError, check_overrides

    path = ROOT / "params.yaml"
    assert check_overrides(path, {"train": {"epochs": 3, "lr": "1e-4"}, "ingest": {"landing": "/srv/in"}}) == {
        "train": {"epochs": 3, "lr": 1e-4}, "ingest": {"landing": "/srv/in"}}   # YAML 1.1 reads 1e-4 as text
    assert check_overrides(path, {"synth": {"shift": {"hub": "NEW01", "share": 0.2}}})
    with pytest.raises(ParamsError) as err:
        check_overrides(path, {"train": {"epochz": 5, "batch_size": 6.5}, "trian": {"seed": 1}})
    assert str(err.value).splitlines() == [
        "unknown key train.epochz (did you mean train.epochs?)",
        "  train keys: accumulate, batch_size, contrastive_temperature, contrastive_weight, embed_backend, "
        "embed_batch_size, encoder_lr, epochs, lora_rank, lr, nproc, patience, seed, strategy, unfreeze_top_k, "
        "weight_decay",
        "train.batch_size = 6.5: expected a whole number",
        "unknown section 'trian' (did you mean train?); sections: synth, ingest, validate, split, model, train, "
        "evaluate, gate, registry, monitor, selective, serve"]
    for bad, match in [({"train": {"epochs": "abc"}}, r"train\.epochs = 'abc': expected a whole number"),
                       ({"validate": {"drift_fail_is_hard": "no way"}}, "expected true or false"),
                       ({"split": {"salt": 123}}, r"split\.salt = 123: expected text"),
                       ({"synth": {"class_mix": {"normal": "lots"}}}, "expected a mapping of text to a number"),
                       ({"ingest": {"executor": "spark"}}, "ingest.executor must be process or dask"),
                       ({"synth": {"shift": {"hubb": "X"}}}, r"ShiftConfig: unknown key\(s\) \['hubb'\]"),
                       ({"train": 5}, "train: expected a mapping")]:
        with pytest.raises(ParamsError, match=match):
            check_overrides(path, bad)
