"""The catalogue of bad inputs (issue 3): each one quarantined with its reason, or normalised."""
from __future__ import annotations

import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmcore.data.ingest import ingest
from tests.conftest import BAD_PHOTOS, good_files, jpeg_bytes, photo, record, sensor_csv, write_batch


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge canvas."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def image_in_mode(mode: str, fmt: str) -> bytes:
    img = Image.new("RGB", (48, 40), (200, 120, 60))
    img = Image.new("I;16", (48, 40), 40000) if mode == "I;16" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def one(tmp_path: Path, cfg, rec: dict, files: dict) -> tuple[dict, pd.DataFrame, list[dict]]:
    write_batch(tmp_path / "landing", "b1", [record("ok"), rec], {**good_files("ok"), **files})
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", dataclasses.replace(cfg, max_bad_share=0.9))
    df = pd.read_parquet(tmp_path / "raw" / "records.parquet")
    q = [json.loads(x) for x in (tmp_path / "q" / "records.jsonl").read_text().splitlines()]
    assert summary["landed"] == summary["accepted"] + summary["quarantined"] == 2
    return summary, df, q


CASES = {
    "truncated_jpeg": ({"images/x.jpg": jpeg_bytes(size=128)[:300]}, {}, "bad_image"),
    "zero_byte": ({"images/x.jpg": b""}, {}, "bad_image"),
    "bomb": ({"images/x.jpg": png_bomb()}, {}, "image_too_large"),
    "inf_sensor": ({"sensors/x.csv": sensor_csv().replace(",0.0\n", ",inf\n", 1)}, {}, "bad_sensor"),
    "float32_overflow": ({"sensors/x.csv": sensor_csv().replace(",0.0\n", ",1e300\n", 1)}, {}, "bad_sensor"),
    "empty_sensor_value": ({"sensors/x.csv": sensor_csv().replace(",0.0\n", ",\n", 1)}, {}, "bad_sensor"),
    "missing_header": ({"sensors/x.csv": "\n".join(sensor_csv().splitlines()[1:])}, {}, "bad_sensor"),
    "too_few_rows": ({"sensors/x.csv": sensor_csv(rows=10)}, {}, "bad_sensor"),
    "too_many_rows": ({"sensors/x.csv": sensor_csv(rows=5001)}, {}, "bad_sensor"),
    "gap": ({"sensors/x.csv": sensor_csv().replace("\n600.0,", "\n900.0,", 1)}, {}, "bad_sensor"),
    "long_note": ({}, {"note": "x" * 1_000_000}, "bad_note"),
    "abs_sensor_path": ({}, {"sensor": "/tmp/x.csv"}, "unsafe_path"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_quarantined_with_reason(tmp_path: Path, ingest_cfg, case: str) -> None:
    files, over, reason = CASES[case]
    _, df, q = one(tmp_path, ingest_cfg, record("x", **over), {**good_files("x"), **files})
    assert list(df["record_id"]) == ["ok"]
    assert [(e["record_id"], e["reason"]) for e in q] == [("x", reason)]
    assert q[0]["detail"]


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("I;16", "PNG"),
                                       ("RGB", "PNG")])
def test_unusual_images_are_normalised_not_rejected(tmp_path: Path, ingest_cfg, mode: str, fmt: str) -> None:
    """Grey, CMYK, alpha, 16-bit and a PNG named .jpg are valid photos: decoded by content, kept."""
    _, df, q = one(tmp_path, ingest_cfg, record("x"), {**good_files("x"), "images/x.jpg": image_in_mode(mode, fmt)})
    assert q == [] and sorted(df["record_id"]) == ["ok", "x"]
    row = df.set_index("record_id").loc["x"]
    assert (row["image_width"], row["image_height"]) == (48, 40)


@pytest.mark.parametrize("case", sorted(BAD_PHOTOS))
def test_photo_outside_the_contract_is_quarantined_with_reason(tmp_path: Path, ingest_cfg, case: str) -> None:
    """Not JPEG or PNG (by content: every file here is named .jpg), or a side under ingest.image_min_side."""
    data, reason, detail = BAD_PHOTOS[case]
    summary, df, q = one(tmp_path, ingest_cfg, record("x"), {**good_files("x"), "images/x.jpg": data})
    assert list(df["record_id"]) == ["ok"] and summary["by_reason"] == {reason: 1}
    assert [(e["record_id"], e["reason"], e["detail"]) for e in q] == [("x", reason, detail)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "MPO"])
def test_photo_at_the_minimum_side_is_kept(tmp_path: Path, ingest_cfg, fmt: str) -> None:
    """32 x 32 is the smallest photo the contract takes; MPO (a multi-frame JPEG) is a JPEG."""
    side = ingest_cfg.image_min_side
    _, df, q = one(tmp_path, ingest_cfg, record("x"), {**good_files("x"), "images/x.jpg": photo(fmt, side, side)})
    assert q == [] and sorted(df["record_id"]) == ["ok", "x"]
    row = df.set_index("record_id").loc["x"]
    assert (row["image_width"], row["image_height"]) == (side, side)


def test_minimum_side_is_the_ingest_setting(tmp_path: Path, ingest_cfg) -> None:
    """One setting: raising ingest.image_min_side quarantines a photo the default keeps."""
    cfg = dataclasses.replace(ingest_cfg, image_min_side=48)
    _, _, q = one(tmp_path, cfg, record("x"), {**good_files("x"), "images/x.jpg": photo("JPEG", 64, 40)})
    assert [(e["reason"], e["detail"]) for e in q] == [("image_too_small", "image 64x40 px: at least 48 px a side")]


def test_duplicate_across_batches_keeps_the_first(tmp_path: Path, ingest_cfg) -> None:
    write_batch(tmp_path / "landing", "b1", [record("a")], good_files("a"))
    write_batch(tmp_path / "landing", "b2", [record("a", note="later copy"), record("b")],
                {**good_files("a"), **good_files("b")})
    summary = ingest(tmp_path / "landing", tmp_path / "raw", tmp_path / "q", dataclasses.replace(ingest_cfg, max_bad_share=0.9))
    df = pd.read_parquet(tmp_path / "raw" / "records.parquet")
    assert sorted(df["record_id"]) == ["a", "b"] and df.set_index("record_id").loc["a", "note"] == "corner crushed"
    assert summary["by_reason"] == {"duplicate_record_id": 1}


def test_dead_sensor_channel_is_flagged_and_kept(tmp_path: Path, ingest_cfg) -> None:
    frozen = sensor_csv(frozen_temperature=True)
    summary, df, q = one(tmp_path, ingest_cfg, record("x"), {**good_files("x"), "sensors/x.csv": frozen})
    assert q == [] and summary["warnings"]["sensor_stuck_channel"] == 1
    stuck = df.set_index("record_id")["sensor_stuck_channels"]
    assert stuck["x"] == "temperature_c" and stuck["ok"] == ""


def test_sensor_csv_with_bom_and_crlf_is_read(tmp_path: Path, ingest_cfg) -> None:
    crlf = "\ufeff" + sensor_csv().replace("\n", "\r\n")
    _, df, q = one(tmp_path, ingest_cfg, record("x"), {**good_files("x"), "sensors/x.csv": crlf})
    assert q == [] and df.set_index("record_id").loc["x", "sensor_rows"] == 60
