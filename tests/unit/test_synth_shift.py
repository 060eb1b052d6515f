"""Shifted traffic (synth.shift): a new hub's camera, note style and tracker, knob by knob.

Each knob is checked against the same batch generated without a shift: the shifted
records are the same parcels, notes and legs seen through the new hub's equipment,
so a knob's effect is measured record by record, and every other file must be
byte-identical. Batches are 40 records with 48 px photos (well under a second each).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mmcore.config import ShiftConfig, SynthConfig, load_params
from mmcore.synth import generate as synth, sensor as synth_sensor, shift as synth_shift
from mmcore.data.ingest import ingest

REPO = Path(__file__).resolve().parents[2]
CFG = SynthConfig(
    seed=7, batches=1, records_per_batch=40, image_size=48, label_noise=0.03, unlabelled_share=0.05,
    class_mix={"normal": 0.36, "damaged": 0.16, "wet": 0.16, "temperature_excursion": 0.16, "tampered": 0.16},
    p_image_missing=0.1, p_note_missing=0.12, p_note_empty=0.12, p_sensor_missing=0.1, p_chinese=0.3,
    p_image_evidence=0.6, p_note_evidence=0.55, p_sensor_evidence=0.6,
    hubs=["SHA01", "SZX02", "HKG03", "AMS04", "FRA05", "MEM06"],
)
# records.jsonl and sensors/*.csv of generate_batch(..., "base", 30, CFG, 7), hashed before synth.shift
# existed (JPEG bytes are left out: they depend on the libjpeg build, not on the generator).
DEFAULT_HASH = "27eb84ab27c5822d980a456b4d005011bdb12d7317fb7de216ee0bea80b3bd0e"
N, SEED, NEW = 40, 7, "NEW01"


def read_records(batch: Path) -> dict[str, dict]:
    recs = (json.loads(line) for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines())
    return {r["record_id"]: r for r in recs}


def files_of(batch: Path) -> dict[str, bytes]:
    return {p.relative_to(batch).as_posix(): p.read_bytes() for p in sorted(batch.rglob("*")) if p.is_file()}


def generate(root: Path, name: str, shift: ShiftConfig | None = None, n: int = N, workers: int = 1) -> Path:
    cfg = CFG if shift is None else dataclasses.replace(CFG, shift=shift)
    return synth.generate_batch(root / name, "b", n, cfg, SEED, workers=workers)


def shifted(**knobs: object) -> ShiftConfig:
    return ShiftConfig(hub=NEW, share=0.5, **knobs)


def pixels(batch: Path, rel: str) -> np.ndarray:
    with Image.open(batch / rel) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def trace(batch: Path, rel: str) -> np.ndarray:
    return np.loadtxt(batch / rel, delimiter=",", skiprows=1, ndmin=2)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("default"), "landing")


def pairs(default: Path, batch: Path, key: str) -> list[tuple[str, str]]:
    """(default file, shifted file) of every shifted record that has `key`; asserts there are some."""
    base, new = read_records(default), read_records(batch)
    out = [(base[i][key], r[key]) for i, r in new.items() if r["hub"] == NEW and r[key]]
    assert out, f"no shifted record with {key}"
    return out


def assert_only(default: Path, batch: Path, changed: str) -> None:
    """Outside the shifted records, and outside `changed` within them, every file is byte-identical."""
    base, new = read_records(default), read_records(batch)
    a, b = files_of(default), files_of(batch)
    for rid, rec in new.items():
        for key in ("image", "sensor"):
            if rec[key] and not (rec["hub"] == NEW and key == changed):
                assert a[rec[key]] == b[rec[key]], (rid, key)
        if not (rec["hub"] == NEW and changed == "note"):
            assert rec["note"] == base[rid]["note"], rid
        if rec["hub"] != NEW:
            assert rec == base[rid], rid


# ---------------------------------------------------------------- no shift: output as before
def test_default_output_is_unchanged(tmp_path: Path) -> None:
    batch = synth.generate_batch(tmp_path, "base", 30, CFG, 7, workers=1)
    digest = hashlib.sha256()
    for p in sorted(batch.rglob("*")):
        if p.is_file() and p.suffix != ".jpg":
            digest.update(p.relative_to(batch).as_posix().encode() + b"\0" + p.read_bytes())
    assert digest.hexdigest() == DEFAULT_HASH
    assert load_params(REPO / "params.yaml").synth.shift == ShiftConfig() and not ShiftConfig().active


def test_a_hub_with_share_zero_or_neutral_knobs_changes_nothing(tmp_path: Path, default: Path) -> None:
    assert files_of(generate(tmp_path, "zero", ShiftConfig(hub=NEW, share=0.0, exposure=0.5))) == files_of(default)
    neutral = generate(tmp_path, "neutral", shifted())   # records move to the hub, their files stay
    assert_only(default, neutral, changed="")
    assert sum(r["hub"] == NEW for r in read_records(neutral).values()) == N // 2


# ---------------------------------------------------------------- which records, reproducibly
def test_share_hub_and_capture_time(tmp_path: Path, default: Path) -> None:
    base = read_records(default)
    for share in (0.25, 1.0):
        recs = read_records(generate(tmp_path, f"s{share}", ShiftConfig(hub=NEW, share=share)))
        moved = [r for r in recs.values() if r["hub"] == NEW]
        assert len(moved) == round(N * share)
        for r in moved:
            when = datetime.fromisoformat(r["captured_at"])
            assert when == datetime.fromisoformat(base[r["record_id"]]["captured_at"]), "the same instant"
            assert when.utcoffset().total_seconds() / 3600 == synth.hub_offset(NEW), "in the new hub's zone"
        if share == 0.25:   # fewer than the shipments: a shipment visits the new hub at most once
            ships = [r["shipment_id"] for r in moved]
            assert len(ships) == len(set(ships))


def test_shifted_batch_is_reproducible_and_process_independent(tmp_path: Path) -> None:
    shift = synth_shift.load_shift("new_hub")
    one = generate(tmp_path, "a", shift)
    assert files_of(generate(tmp_path, "b", shift)) == files_of(one)
    assert files_of(generate(tmp_path, "c", shift, workers=2)) == files_of(one)


# ---------------------------------------------------------------- camera
def test_exposure_and_colour_cast(tmp_path: Path, default: Path) -> None:
    batch = generate(tmp_path, "cam", shifted(exposure=0.7, colour_gains=[0.8, 1.0, 1.2]))
    assert_only(default, batch, changed="image")
    gains = np.array([0.7 * 0.8, 0.7, 0.7 * 1.2])
    for a, b in pairs(default, batch, "image"):
        ratio = pixels(batch, b).mean(axis=(0, 1)) / pixels(default, a).mean(axis=(0, 1))
        assert ratio == pytest.approx(gains, rel=0.12), (a, ratio)   # red and blue can clip at 255


def test_blur_noise_size_and_jpeg_quality(tmp_path: Path, default: Path) -> None:
    def sharpness(img: np.ndarray) -> float:
        return float(np.abs(np.diff(img, axis=1)).mean() + np.abs(np.diff(img, axis=0)).mean())

    blur = generate(tmp_path, "blur", shifted(blur_px=2.0))
    assert_only(default, blur, changed="image")
    for a, b in pairs(default, blur, "image"):
        assert sharpness(pixels(blur, b)) < 0.7 * sharpness(pixels(default, a)), b
    noisy = generate(tmp_path, "noise", shifted(camera_noise=15.0))
    assert all(np.std(pixels(noisy, b) - pixels(default, a)) > 8 for a, b in pairs(default, noisy, "image"))
    framed = generate(tmp_path, "size", shifted(image_width=80, image_height=60, jpeg_quality=30))
    coarse = generate(tmp_path, "coarse", shifted(image_width=80, image_height=60))
    for (_, b), (_, c) in zip(pairs(default, framed, "image"), pairs(default, coarse, "image")):
        with Image.open(framed / b) as img:
            assert img.size == (80, 60) and img.format == "JPEG"
        assert (framed / b).stat().st_size < (coarse / c).stat().st_size   # q30 vs the default q90


# ---------------------------------------------------------------- notes
def words(note: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", note)


def test_shorthand_typos_capitals_and_language(tmp_path: Path, default: Path) -> None:
    short = generate(tmp_path, "short", shifted(note_shorthand=1.0))
    assert_only(default, short, changed="note")
    notes = pairs(default, short, "note")
    assert not {w.lower() for _, b in notes for w in words(b)} & set(synth_shift.SHORTHAND)
    assert sum(a != b for a, b in notes) >= len(notes) // 3
    typo = pairs(default, generate(tmp_path, "typo", shifted(note_typo_rate=0.5)), "note")
    long_words = [(x, y) for a, b in typo for x, y in zip(words(a), words(b), strict=True) if len(x) >= 3]
    assert 0.25 < np.mean([x != y for x, y in long_words]) < 0.65
    upper = pairs(default, generate(tmp_path, "upper", shifted(note_upper=1.0)), "note")
    assert all(b == a.upper() for a, b in upper) and any(a != b for a, b in upper)
    for p in (0.0, 1.0):
        zh = [bool(re.search("[\u4e00-\u9fff]", b)) for _, b in
              pairs(default, generate(tmp_path, f"zh{p}", shifted(note_p_chinese=p)), "note")]
        assert all(zh) if p else not any(zh)


# ---------------------------------------------------------------- tracker
def test_calibration_gain_and_noise(tmp_path: Path, default: Path) -> None:
    knobs = {"sensor_offset": {"humidity_pct": 10.0, "temperature_c": -2.0}, "sensor_gain": {"shock_g": 1.5},
             "sensor_noise": {"light_lux": 2.0}}
    batch = generate(tmp_path, "calib", shifted(**knobs))
    assert_only(default, batch, changed="sensor")
    for a, b in pairs(default, batch, "sensor"):
        x, y = trace(default, a), trace(batch, b)
        assert np.array_equal(x[:, 0], y[:, 0])
        assert np.allclose(y[:, 1] - x[:, 1], -2.0, atol=0.011)
        assert np.allclose(y[:, 2], np.minimum(x[:, 2] + 10, 100), atol=0.11)
        assert np.allclose(y[:, 3], x[:, 3] * 1.5, atol=0.002)
        assert y[:, 4].min() >= 0 and 1.0 < np.std(y[:, 4] - x[:, 4]) < 3.0


@pytest.mark.parametrize("period", [30, 120])
def test_sampling_period(tmp_path: Path, default: Path, period: int) -> None:
    batch = generate(tmp_path, f"p{period}", shifted(sensor_period_s=period))
    assert_only(default, batch, changed="sensor")
    for a, b in pairs(default, batch, "sensor"):
        x, y = trace(default, a), trace(batch, b)
        assert len(y) == len(x) * 60 // period and 30 <= len(y) <= 5000
        assert set(np.diff(y[:, 0])) == {period}
        assert y[:, 3].max() == x[:, 3].max()            # the peak shock is still recorded
        same = np.isin(y[:, 0], x[:, 0])                  # rows at common times read the same
        assert np.allclose(y[same, 1:3], x[np.isin(x[:, 0], y[:, 0]), 1:3], atol=0.011)


def test_evidence_survives_the_tracker() -> None:
    """A wet parcel still reads higher than a dry one under any calibration; a drop still
    survives the model's resampling to 128 steps at the slowest and fastest rates."""
    for k in range(20):
        def make(cls: str | None) -> np.ndarray:
            rng = np.random.default_rng(k)
            return synth_sensor.make_trace(rng, int(rng.integers(60, 601)), cls, False, 10.0, 180)

        wet, dry, drop = make("wet"), make(None), make("damaged")
        for offset in (-25.0, 25.0):
            shift = ShiftConfig(sensor_offset={"humidity_pct": offset})
            ss = np.random.SeedSequence(k)
            assert synth_shift.retrace(ss, wet, shift)[:, 2].max() > synth_shift.retrace(ss, dry, shift)[:, 2].max()
        for period in (8, 120):
            y = synth_shift.resample(drop, period)
            assert 30 <= len(y) <= 5000
            assert np.interp(np.linspace(0, len(y) - 1, 128), np.arange(len(y)), y[:, 3]).max() >= 8


# ---------------------------------------------------------------- contract and settings
@pytest.mark.parametrize("preset", ["new_hub", "new_hub_alt"])
def test_shifted_batches_pass_ingest(tmp_path: Path, preset: str) -> None:
    shift = dataclasses.replace(synth_shift.load_shift(preset), image_width=64, image_height=48)
    batch = generate(tmp_path, "landing", shift, n=30)
    assert {r["hub"] for r in read_records(batch).values()} == {shift.hub}
    summary = ingest(batch.parent, tmp_path / "raw", tmp_path / "q", load_params(REPO / "params.yaml").ingest,
                     workers=1)
    assert summary["landed"] == summary["accepted"] == 30 and summary["quarantined"] == 0
    assert summary["warnings"]["sensor_stuck_channel"] == 0


def test_presets_differ_and_load() -> None:
    loaded = {name: synth_shift.load_shift(name) for name in synth_shift.PRESETS}
    assert {"new_hub", "new_hub_alt", "new_hub_camera", "new_hub_notes", "new_hub_sensor"} <= set(loaded)
    assert all(s.active for s in loaded.values()) and loaded["new_hub"] != loaded["new_hub_alt"]


@pytest.mark.parametrize("knobs, message", [
    ({"share": 1.5, "hub": NEW}, "share = 1.5 is outside"),
    ({"share": 0.2}, "needs a hub"),
    ({"hub": "NEW 01", "share": 0.2}, "hub 'NEW 01'"),
    ({"exposure": 0.0}, "exposure"),
    ({"colour_gains": [1.0, 1.0]}, "3 values"),
    ({"colour_gains": [1.0, 2.0, 1.0]}, r"colour_gains\[1\]"),
    ({"blur_px": -1}, "blur_px"),
    ({"image_width": 64}, "set together"),
    ({"image_width": 16, "image_height": 16}, "image_width = 16"),
    ({"jpeg_quality": 101}, "jpeg_quality"),
    ({"note_typo_rate": 0.9}, "note_typo_rate"),
    ({"note_p_chinese": 2}, "note_p_chinese"),
    ({"sensor_period_s": 300}, "sensor_period_s = 300 is outside"),
    ({"sensor_offset": {"humidity": 5}}, "unknown channel 'humidity'"),
    ({"sensor_offset": {"humidity_pct": 40}}, "sensor_offset.humidity_pct"),
    ({"sensor_gain": {"shock_g": 0}}, "sensor_gain.shock_g"),
    ({"sensor_noise": "loud"}, r"sensor_noise\n  Input should be a valid dictionary"),
    ({"exposure": "bright"}, r"exposure\n  Input should be a valid number"),
])
def test_invalid_settings_fail_clearly(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShiftConfig(**knobs)


def test_unknown_keys_and_old_hubs_fail_at_load(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["synth"]["shift"] = {"hub": NEW, "share": 0.5, "exposre": 0.8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="exposre"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ValueError, match="one of synth.hubs"):
        dataclasses.replace(CFG, shift=ShiftConfig(hub="SHA01", share=0.5))
    (tmp_path / "preset.yaml").write_text("hub: NEW09\nshare: 0.5\nblurr: 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="preset.yaml.*blurr"):
        synth_shift.load_shift(str(tmp_path / "preset.yaml"))
    with pytest.raises(ValueError, match="neither a preset"):
        synth_shift.load_shift("no_such_preset")


def test_cli_generates_a_shifted_batch_on_demand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "hub.yaml"
    preset.write_text("hub: NEW09\nshare: 1.0\nexposure: 0.6\nsensor_period_s: 30\n", encoding="utf-8")
    common = ["--params", str(REPO / "params.yaml"), "--batches", "1", "--records", "6", "--seed", "3",
              "--workers", "1"]
    assert synth.main([*common, "--landing", str(tmp_path / "a"), "--shift", str(preset)]) == 0
    assert {r["hub"] for r in read_records(tmp_path / "a" / "batch-0000").values()} == {"NEW09"}
    assert synth.main([*common, "--landing", str(tmp_path / "b"), "--shift", "new_hub_sensor", "--shift-hub", "NEW07",
                       "--shift-share", "0.5"]) == 0
    hubs = [r["hub"] for r in read_records(tmp_path / "b" / "batch-0000").values()]
    assert hubs.count("NEW07") == 3
    out = capsys.readouterr().out
    assert "50% of records at new hub NEW07" in out and "sensor_period_s" in out
    with pytest.raises(SystemExit):
        synth.main([*common, "--landing", str(tmp_path / "c"), "--shift-hub", "NEW07", "--shift-share", "2"])
    assert "share = 2.0 is outside" in capsys.readouterr().err
