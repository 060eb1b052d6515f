"""params.yaml is the one config: it loads whole, and a typo or a wrong type fails at once, naming the key."""
from __future__ import annotations

import copy
import json
import string
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcore.config import SECTIONS, ParamsError, ShiftConfig, check_overrides, load_params, load_yaml, params_from_raw
from tests.conftest import ROOT

RAW = load_yaml((ROOT / "params.yaml").read_text())


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """params.yaml with one line's text changed, as a user would edit it."""
    text = (ROOT / "params.yaml").read_text()
    assert text.count(old) == 1, old
    (tmp_path / "params.yaml").write_text(text.replace(old, new))
    return tmp_path / "params.yaml"


def test_project_params_load() -> None:
    p = load_params(ROOT / "params.yaml")
    assert abs(sum(p.synth.class_mix.values()) - 1.0) < 1e-6
    assert 0 < p.split.test_fraction < 1 and p.gate.min_macro_f1 > 0
    assert isinstance(p.model.modalities, tuple) and hash(p.model)   # tuples: the model config stays hashable


@pytest.mark.parametrize("old, new, message", [
    ("  epochs: 60\n", '  epochs: "60"\n', "train.epochs = '60': expected a whole number"),
    ("max_class_f1_drop: 0.05", "max_class_f1_drop: high", "gate.max_class_f1_drop = 'high': expected a number"),
    ("drift_fail_is_hard: false", "drift_fail_is_hard: 0", "validate.drift_fail_is_hard = 0: expected true or false"),
    ("salt: parcel-v1", "salt: 123", "split.salt = 123: expected text"),
    ("brightness_range: [5.0, 250.0]", "brightness_range: [5.0, bright]",
     "validate.brightness_range[1] = 'bright': expected a number"),
    ("normal: 0.36,", "normal: lots,", "synth.class_mix.normal = 'lots': expected a number"),
    ("shift: {hub: null, share: 0.0}", "shift: {hub: null, share: none}", "synth.shift.share = 'none': expected a number"),
])
def test_a_wrong_type_fails_at_load_naming_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(edited(tmp_path, old, new))
    assert str(err.value) == message


def test_a_number_in_exponent_form_loads_as_a_number(tmp_path: Path) -> None:
    """YAML 1.1 (plain PyYAML) reads `1e-4` as the text '1e-4'; params.yaml means the number, as DVC reads it."""
    p = load_params(edited(tmp_path, "  lr: 0.001\n", "  lr: 1e-4\n"))
    assert p.train.lr == 0.0001 and isinstance(p.train.lr, float)


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["{:e}", "{:E}", "{!r}", "{:.3e}"]))
def test_yaml_reads_every_float_spelling_as_that_number(x: float, spelling: str) -> None:
    written = spelling.format(x)
    assert load_yaml(f"v: {written}") == {"v": float(written)}
    assert load_yaml(f"v: '{written}'") == {"v": written}            # quoted: text, refused by a number field


@pytest.mark.parametrize("old, new, lines", [
    ("  epochs: 60\n", "  epochz: 60\n", ["missing key train.epochs (it has no default)",
                                          "unknown key train.epochz (did you mean train.epochs?)"]),
    ("shift: {hub: null, share: 0.0}", "shift: {hub: null, shaer: 0.0}",
     ["unknown key synth.shift.shaer (did you mean synth.shift.share?)"]),
    ("\ntrain:\n", "\ntrian:\n", ["missing section train (it has no default)",
                                  "unknown section 'trian' (did you mean train?); sections: synth, ingest, validate, "
                                  "split, model, train, evaluate, gate, registry, monitor, selective, serve"]),
])
def test_an_unknown_key_fails_at_load_with_a_close_match(tmp_path: Path, old: str, new: str, lines: list) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(edited(tmp_path, old, new))
    assert [ln for ln in str(err.value).splitlines() if not ln.startswith("  ")] == lines


def test_generator_photos_below_the_ingest_minimum_fail(tmp_path: Path) -> None:
    """synth photos smaller than ingest.image_min_side would all be quarantined: refused at load."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    side = raw["ingest"]["image_min_side"]
    raw["synth"]["image_size"] = side - 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=f"synth.image_size = {side - 1} below ingest.image_min_side = {side}"):
        load_params(tmp_path / "params.yaml")


# --------------------------------------------------------------------------- every field, any wrong type
KINDS = {"text": st.text(string.ascii_letters + string.digits + " .-", max_size=8),
         "whole": st.integers(-10**6, 10**6),
         "fraction": st.floats(-1e6, 1e6).filter(lambda x: not x.is_integer()),
         "flag": st.booleans(), "list": st.lists(st.integers(0, 9), max_size=3),
         "mapping": st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2)}


def accepted(hint: object) -> set[str]:
    """The kinds of YAML value a field's type takes (a whole number stands for a number)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(accepted(a) for a in typing.get_args(hint) if a is not type(None)))
    origin = typing.get_origin(hint) or hint
    return {int: {"whole"}, float: {"whole", "fraction"}, str: {"text"}, bool: {"flag"},
            list: {"list"}, tuple: {"list"}}.get(origin, {"mapping"})   # dict or a nested section


FIELDS = [(f"{section}.{name}", info.annotation) for section, cls in SECTIONS.items()
          for name, info in cls.__pydantic_fields__.items()]
FIELDS += [(f"synth.shift.{name}", info.annotation) for name, info in ShiftConfig.__pydantic_fields__.items()]


@st.composite
def wrong_value(draw: st.DrawFn) -> tuple[str, object]:
    path, hint = draw(st.sampled_from(FIELDS))
    kind = draw(st.sampled_from(sorted(set(KINDS) - accepted(hint))))
    return path, draw(KINDS[kind])


@settings(max_examples=80, deadline=None)
@given(wrong_value())
def test_any_wrong_typed_value_of_any_field_fails_at_load_naming_its_path(case: tuple[str, object]) -> None:
    path, value = case
    raw = copy.deepcopy(RAW)
    *parents, key = path.split(".")
    target = raw
    for name in parents:
        target = target.setdefault(name, {})
    target[key] = value
    with pytest.raises(ParamsError) as err:
        params_from_raw(load_yaml(json.dumps(raw)))   # JSON is YAML whose strings are always quoted
    assert str(err.value).startswith(f"{path} = "), str(err.value)


# --------------------------------------------------------------------------- --set and the flow's overrides
def test_overrides_are_checked_against_the_typed_config() -> None:
    """What `--set` and the flow's `overrides` go through before anything runs: params.yaml as it would
    become, loaded by the same check; every problem named, with the allowed keys and a close match."""
    path = ROOT / "params.yaml"
    wanted = {"train": {"epochs": 3, "lr": 1e-4}, "ingest": {"landing": "/srv/in"}}
    assert check_overrides(path, wanted) == wanted
    assert check_overrides(path, {"synth": {"shift": {"hub": "NEW01", "share": 0.2}}})
    with pytest.raises(ParamsError) as err:
        check_overrides(path, {"train": {"epochz": 5, "batch_size": 6.5}, "trian": {"seed": 1}})
    assert str(err.value).splitlines() == [
        "train.batch_size = 6.5: expected a whole number",
        "unknown key train.epochz (did you mean train.epochs?)",
        "  train keys: accumulate, batch_size, contrastive_temperature, contrastive_weight, embed_backend, "
        "embed_batch_size, encoder_lr, epochs, lora_rank, lr, nproc, patience, seed, strategy, unfreeze_top_k, "
        "weight_decay",
        "unknown section 'trian' (did you mean train?); sections: synth, ingest, validate, split, model, train, "
        "evaluate, gate, registry, monitor, selective, serve"]
    for bad, match in [({"train": {"epochs": "abc"}}, r"^train\.epochs = 'abc': expected a whole number$"),
                       ({"train": {"lr": "1e-4"}}, r"^train\.lr = '1e-4': expected a number$"),   # text, not YAML
                       ({"validate": {"drift_fail_is_hard": "no way"}}, "expected true or false"),
                       ({"split": {"salt": 123}}, r"split\.salt = 123: expected text"),
                       ({"ingest": {"executor": "spark"}}, "ingest.executor must be process or dask"),
                       ({"synth": {"shift": {"hubb": "X"}}}, r"unknown key synth\.shift\.hubb \(did you mean "),
                       ({"train": 5}, r"^train = 5: expected a mapping$")]:
        with pytest.raises(ParamsError, match=match):
            check_overrides(path, bad)
