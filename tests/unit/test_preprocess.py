"""One preprocessing path: a record read back from data/raw and the same record sent to the
service as JSON (base64 image, sensor arrays) become identical model inputs; and a photo ingest
would quarantine, the service refuses, by the same rule (mmcore.data.checks.check_image)."""
from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from mmcore.config import ModelConfig, load_params
from mmcore.data.ingest import ingest
from mmcore.data.raw import load_records
from mmcore.features import Featurizer
from mmcore.preprocess import decode_image, note_ngrams, prepare_image, prepare_note
from mmcore.serving.adapter import to_mmcore
from mmcore.serving.limits import ImageLimits, check_image_bytes
from mmcore.serving.schemas import Record
from tests.conftest import BAD_PHOTOS, ROOT, good_files, photo, record, write_batch


def test_raw_and_served_records_give_identical_inputs(tmp_path: Path, ingest_cfg) -> None:
    files = {**good_files("a"), **good_files("b")}
    bdir = write_batch(tmp_path / "landing", "b1", [record("a"), record("b", note="  wet   box ")], files)
    ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", ingest_cfg)
    _, raw_records = load_records(tmp_path / "raw")
    served = []
    for rid, note in (("a", "corner crushed"), ("b", "  wet   box ")):
        arr = np.loadtxt(bdir / "sensors" / f"{rid}.csv", delimiter=",", skiprows=1)
        sensor = {c: arr[:, i].tolist() for i, c in
                  enumerate(["t_s", "temperature_c", "humidity_pct", "shock_g", "light_lux"])}
        image = base64.b64encode((bdir / "images" / f"{rid}.jpg").read_bytes()).decode()
        served.append(to_mmcore(Record(note=note, image=image, sensor=sensor)))
    feat = Featurizer(ModelConfig(sensor_length=32))
    np.testing.assert_allclose(feat.sensors(raw_records)[0], feat.sensors(served)[0], rtol=1e-6, atol=1e-6)
    for r, s in zip(raw_records, served):
        assert r["image"] == s["image"]
        np.testing.assert_array_equal(prepare_image(r["image"], 64), prepare_image(s["image"], 64))
        assert prepare_note(r["note"]) == prepare_note(s["note"])


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_any_image_mode_becomes_rgb(mode: str) -> None:
    img = Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 3000)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if mode in ("RGBA", "P", "I;16") else "JPEG" if mode != "L" else "PNG")
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (40, 30)
    assert prepare_image(buf.getvalue(), 32).shape == (3, 32, 32)


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (20, 60)


def test_blank_note_is_missing() -> None:
    assert prepare_note("   ") is None and prepare_note(None) is None
    assert prepare_note(" corner\ncrushed ") == "corner crushed"


def test_note_ngrams_read_chinese_and_are_stable_across_processes() -> None:
    import subprocess
    import sys

    damaged, wet = note_ngrams("外箱破损", 256), note_ngrams("外箱受潮", 256)
    assert abs(np.linalg.norm(damaged) - 1) < 1e-6 and not np.allclose(damaged, wet)   # [UNK] to MiniLM, not here
    assert np.array_equal(note_ngrams("Box CRUSHED", 64), note_ngrams("box crushed", 64))
    assert not note_ngrams(None, 64).any() and note_ngrams("x", 0).shape == (0,)
    code = "from mmcore.preprocess import note_ngrams; print(note_ngrams('外箱破损', 256).nonzero()[0].tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(damaged.nonzero()[0].tolist())        # crc32 buckets, no hash seed


@pytest.mark.parametrize("case", sorted(BAD_PHOTOS))
def test_service_refuses_the_photos_ingest_quarantines(case: str) -> None:
    """The same rules as ingest (mmcore.data.checks.check_image): /predict refuses the record while
    parsing (pydantic -> 400) and /predict_file through check_image_bytes (InvalidArgument -> 400),
    each naming the rule and the reason ingest would quarantine with."""
    data, reason, detail = BAD_PHOTOS[case]
    with pytest.raises(ValidationError) as err:
        Record(image=base64.b64encode(data).decode())
    errors = err.value.errors()
    assert [e["loc"] for e in errors] == [("image",)]
    assert f"({reason}): {detail}" in errors[0]["msg"]
    with pytest.raises(ValueError, match=re.escape(f"image refused ({reason}): {detail}")):
        check_image_bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_service_takes_a_photo_at_the_minimum_side(fmt: str) -> None:
    side = ImageLimits().image_min_side
    Record(image=base64.b64encode(photo(fmt, side, side)).decode())
    check_image_bytes(photo(fmt, side, side))


def test_service_image_limits_are_the_ingest_settings() -> None:
    """The bento has no params.yaml: its defaults must be what params.yaml `ingest:` says."""
    ingest = load_params(ROOT / "params.yaml").ingest
    limits = ImageLimits()
    assert {f.name: getattr(limits, f.name) for f in dataclasses.fields(limits)} == \
        {f.name: getattr(ingest, f.name) for f in dataclasses.fields(limits)}
