"""The synthetic generator honours the landing contract (DESIGN §2) and is reproducible.

Tiny batches (40 records, 64 px images) keep this to a few seconds; one 400-record
batch at 32 px checks the configured shares, and plans alone (no files) check the
shipment histories and the class mix at a size where sampling noise is small.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcore.config import CLASSES, SynthConfig
from mmcore.synth import generate as synth, image as synth_image, sensor as synth_sensor, text as synth_text
from mmcore.synth.image import make_parcel, render_parcel
from mmcore.schema import RECORD_FIELDS, RECORD_ID_RE, SENSOR_HEADER

REPO = Path(__file__).resolve().parents[2]
CFG = SynthConfig(
    seed=7, batches=2, records_per_batch=40, image_size=64, label_noise=0.03, unlabelled_share=0.05,
    class_mix={"normal": 0.36, "damaged": 0.16, "wet": 0.16, "temperature_excursion": 0.16, "tampered": 0.16},
    p_image_missing=0.1, p_note_missing=0.12, p_note_empty=0.12, p_sensor_missing=0.1, p_chinese=0.3,
    p_image_evidence=0.6, p_note_evidence=0.55, p_sensor_evidence=0.6,
    hubs=["SHA01", "SZX02", "HKG03", "AMS04", "FRA05", "MEM06"],
)


def read_records(batch: Path) -> list[dict]:
    return [json.loads(line) for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines()]


def files_of(batch: Path) -> dict[str, bytes]:
    return {p.relative_to(batch).as_posix(): p.read_bytes() for p in sorted(batch.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.generate_default(tmp_path_factory.mktemp("landing"), CFG)


@pytest.fixture(scope="module")
def records(batches: list[Path]) -> list[tuple[Path, dict]]:
    return [(b, r) for b in batches for r in read_records(b)]


# ---------------------------------------------------------------- reproducibility
def test_same_seed_gives_byte_identical_batches(tmp_path: Path, batches: list[Path]) -> None:
    again = synth.generate_batch(tmp_path, batches[0].name, CFG.records_per_batch, CFG, CFG.seed)
    first, second = files_of(batches[0]), files_of(again)
    assert first.keys() == second.keys()
    assert any(k.startswith("images/") for k in first) and any(k.startswith("sensors/") for k in first)
    assert [k for k in first if first[k] != second[k]] == []


def test_worker_processes_do_not_change_the_output(tmp_path: Path, batches: list[Path]) -> None:
    par = synth.generate_batch(tmp_path, batches[0].name, CFG.records_per_batch, CFG, CFG.seed, workers=2)
    assert files_of(par) == files_of(batches[0])


def test_different_seed_gives_different_batch(tmp_path: Path, batches: list[Path]) -> None:
    other = synth.generate_batch(tmp_path, batches[0].name, CFG.records_per_batch, CFG, CFG.seed + 100)
    assert (other / "records.jsonl").read_bytes() != (batches[0] / "records.jsonl").read_bytes()
    a, b = files_of(batches[0]), files_of(other)
    shared_images = [k for k in a.keys() & b.keys() if k.startswith("images/")]
    assert shared_images and any(a[k] != b[k] for k in shared_images)


# ---------------------------------------------------------------- landing contract
def test_success_marker_is_written_last(batches: list[Path]) -> None:
    for batch in batches:
        marker = batch / synth.SUCCESS
        assert marker.is_file()
        others = [p.stat().st_mtime_ns for p in batch.rglob("*") if p.is_file() and p != marker]
        assert marker.stat().st_mtime_ns >= max(others)
    assert not list(batches[0].parent.glob(".*partial")), "the build folder must be renamed away"


def test_record_fields_and_types(records: list[tuple[Path, dict]]) -> None:
    for _, r in records:
        assert tuple(r) == RECORD_FIELDS
        assert r["hub"] in CFG.hubs
        assert r["label"] is None or r["label"] in CLASSES
        assert r["note"] is None or isinstance(r["note"], str)
        assert r["image"] is not None or r["sensor"] is not None or r["note"], "a record with no modality"


def test_every_class_present(records: list[tuple[Path, dict]]) -> None:
    assert {r["label"] for _, r in records} >= set(CLASSES)


def test_record_ids_valid_and_unique_across_batches(records: list[tuple[Path, dict]]) -> None:
    ids = [r["record_id"] for _, r in records]
    assert all(RECORD_ID_RE.match(i) for i in ids)
    assert len(set(ids)) == len(ids) == CFG.batches * CFG.records_per_batch
    ships: dict[str, set[str]] = {}
    for batch, r in records:
        ships.setdefault(batch.name, set()).add(r["shipment_id"])
    first, second = ships.values()
    assert not first & second, "a shipment id reused across batches"


def test_shipments_visit_one_to_four_distinct_hubs(records: list[tuple[Path, dict]]) -> None:
    hubs_by_ship: dict[str, list[str]] = {}
    for _, r in records:
        hubs_by_ship.setdefault(r["shipment_id"], []).append(r["hub"])
    assert all(1 <= len(h) <= 4 and len(set(h)) == len(h) for h in hubs_by_ship.values())
    assert max(len(h) for h in hubs_by_ship.values()) > 1


def test_captured_at_is_iso_with_timezone(records: list[tuple[Path, dict]]) -> None:
    offsets = set()
    for _, r in records:
        when = datetime.fromisoformat(r["captured_at"])
        assert when.utcoffset() is not None
        offsets.add(when.utcoffset())
    assert len(offsets) > 1, "offsets should vary by hub"


def test_paths_are_relative_and_exist(records: list[tuple[Path, dict]]) -> None:
    for batch, r in records:
        for key, folder in (("image", "images"), ("sensor", "sensors")):
            rel = r[key]
            if rel is None:
                continue
            assert not Path(rel).is_absolute() and ".." not in Path(rel).parts and rel.startswith(folder + "/")
            path = (batch / rel).resolve()
            assert path.is_relative_to(batch.resolve()) and path.is_file()


def test_images_are_square_jpegs_of_configured_size(records: list[tuple[Path, dict]]) -> None:
    for batch, r in records[:20]:
        if r["image"]:
            with Image.open(batch / r["image"]) as img:
                assert img.format == "JPEG" and img.size == (CFG.image_size, CFG.image_size) and img.mode == "RGB"


def test_sensor_csv_contract(records: list[tuple[Path, dict]]) -> None:
    for batch, r in records:
        if r["sensor"] is None:
            continue
        with open(batch / r["sensor"], newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == list(SENSOR_HEADER) == "t_s,temperature_c,humidity_pct,shock_g,light_lux".split(",")
        data = np.array(rows[1:], dtype=float)
        assert 30 <= len(data) <= 5000
        t = data[:, 0]
        assert t[0] == 0 and np.all(np.diff(t) > 0) and len(set(np.diff(t))) == 1, "fixed rate, increasing"
        assert np.isfinite(data).all()
        assert 0 <= data[:, 2].min() and data[:, 2].max() <= 100
        assert data[:, 3].min() >= 0 and data[:, 4].min() >= 0


def test_missing_modality_and_label_shares_match_config(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, image_size=32)
    n = 400
    recs = read_records(synth.generate_batch(tmp_path, "shares", n, cfg, seed=11))
    share = lambda pred: sum(pred(r) for r in recs) / n  # noqa: E731

    tol = 2.5 / n  # quotas are exact up to rounding (and one record kept from losing all modalities)
    assert share(lambda r: r["image"] is None) == pytest.approx(cfg.p_image_missing, abs=tol)
    assert share(lambda r: r["sensor"] is None) == pytest.approx(cfg.p_sensor_missing, abs=tol)
    assert share(lambda r: r["note"] is None) == pytest.approx(cfg.p_note_missing, abs=tol)
    assert share(lambda r: r["note"] == "") == pytest.approx(cfg.p_note_empty, abs=tol)
    assert share(lambda r: r["label"] is None) == pytest.approx(cfg.unlabelled_share, abs=tol)
    # classes are drawn per shipment (about 160 here), so the label mix is close, not exact
    labels = Counter(r["label"] for r in recs if r["label"])
    for cls, want in cfg.class_mix.items():
        assert labels[cls] / sum(labels.values()) == pytest.approx(want, abs=0.06), cls
    chinese = [r["note"] for r in recs if r["note"] and any("\u4e00" <= ch <= "\u9fff" for ch in r["note"])]
    assert len(chinese) / sum(1 for r in recs if r["note"]) == pytest.approx(cfg.p_chinese, abs=0.08)


# ---------------------------------------------------------------- shipment histories
def plans_by_shipment(n: int, seed: int, cfg: SynthConfig = CFG) -> list[list[synth.RecordPlan]]:
    ships: dict[int, list[synth.RecordPlan]] = {}
    for plan in synth.plan_batch(np.random.default_rng(seed), "h", n, cfg):
        ships.setdefault(plan.shipment_no, []).append(plan)
    return list(ships.values())


def test_a_shipment_is_normal_until_its_onset_then_keeps_its_class() -> None:
    ships = plans_by_shipment(3000, 5)
    onsets = Counter()
    for legs in ships:
        classes = [p.true_class for p in legs]
        onset = next((i for i, c in enumerate(classes) if c != "normal"), None)
        if onset is None:
            continue
        assert classes[:onset] == ["normal"] * onset and len(set(classes[onset:])) == 1, classes
        onsets["first" if onset == 0 else "later"] += 1
        shows = {p.image_evidence for p in legs[onset:] if p.has_image}
        assert len(shows) <= 1, "a mark that shows in one photo shows in every later one"
        assert not any(p.image_evidence for p in legs[:onset])
    assert onsets["later"] > 0.1 * onsets["first"] and onsets["first"] > onsets["later"]
    assert [p.index for legs in ships for p in legs] == list(range(3000)), "a shipment's records are consecutive"


def test_record_class_mix_close_to_config_despite_drawing_per_shipment() -> None:
    for cfg in (CFG, dataclasses.replace(CFG, p_onset_first_hub=0.3)):
        classes = Counter(p.true_class for legs in plans_by_shipment(4000, 3, cfg) for p in legs)
        for cls, want in cfg.class_mix.items():
            assert classes[cls] / 4000 == pytest.approx(want, abs=0.025), (cfg.p_onset_first_hub, cls)


def test_class_mix_is_checked() -> None:
    with pytest.raises(ValueError, match="class_mix"):
        synth.plan_batch(np.random.default_rng(0), "b", 10, dataclasses.replace(CFG, class_mix={"broken": 1.0}))


def test_same_parcel_looks_alike_across_its_photos() -> None:
    """Shape, style and every face texture come from the shipment's seed; the capture from the record's."""
    seed = np.random.SeedSequence([7, synth.PARCEL_STREAM, 3])
    before, after = make_parcel(seed, None), make_parcel(seed, "damaged")
    assert (before.dims, before.style, before.seed) == (after.dims, after.style, after.seed)
    assert not before.marks and after.marks
    textures = []
    for k in range(2):
        faces, _ = synth_image._box_geometry(np.random.default_rng(k), 96, after.dims, None)
        textures.append({f.index: np.asarray(synth_image._face_texture(after, f, after.marks.get(f.index, [])))
                         for f in faces})
    shared = textures[0].keys() & textures[1].keys()
    assert 0 in shared and all(np.array_equal(textures[0][i], textures[1][i]) for i in shared)
    other = make_parcel(np.random.SeedSequence([7, synth.PARCEL_STREAM, 4]), None)
    assert other.style != before.style or other.dims != before.dims
    photos = [np.asarray(render_parcel(np.random.default_rng(k), 64, "damaged", after), dtype=float) for k in (1, 2)]
    assert np.abs(photos[0] - photos[1]).mean() > 5, "the capture differs from photo to photo"
    with pytest.raises(ValueError):
        render_parcel(np.random.default_rng(0), 64, "wet", after)


def test_bad_batch_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synth.generate_batch(tmp_path, "../escape", 2, CFG, 1)


def test_cli_generates_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = synth.main(["--params", str(REPO / "params.yaml"), "--landing", str(tmp_path), "--batches", "1",
                       "--records", "6", "--seed", "3", "--batch-prefix", "cli", "--workers", "1"])
    assert code == 0
    assert (tmp_path / "cli-0000" / synth.SUCCESS).is_file()
    assert len(read_records(tmp_path / "cli-0000")) == 6
    assert "cli-0000" in capsys.readouterr().out


# ---------------------------------------------------------------- evidence semantics
@pytest.mark.parametrize("reefer", [True, False])
def test_sensor_evidence_is_physically_distinct(reefer: bool) -> None:
    def trace(cls: str | None, k: int) -> np.ndarray:
        rng = np.random.default_rng([k, reefer])
        return synth_sensor.make_trace(rng, int(rng.integers(60, 601)), cls, reefer, 10.0, 180)

    for k in range(30):
        normal = trace(None, k)
        mid = slice(2, len(normal) - 2)
        assert normal[:, 3].max() <= 4.0 and normal[:, 2].max() <= 70 and normal[mid, 4].max() < 5
        assert trace("damaged", k)[:, 3].max() >= 8
        assert trace("wet", k)[:, 2].max() >= 90
        hot = trace("temperature_excursion", k)[:, 1].max()
        assert hot > 15 if reefer else hot > 33
        if reefer:
            assert normal[:, 1].max() < 10
        lit = trace("tampered", k)
        assert lit[2:-2, 4].max() >= 35


def test_sensor_events_survive_resampling_to_128_steps() -> None:
    """The model resamples traces to 128 steps; a drop must not fall between samples."""
    for k in range(30):
        rng = np.random.default_rng(k)
        tr = synth_sensor.make_trace(rng, 600, "damaged", False, 0.0, 1)
        resampled = np.interp(np.linspace(0, 599, 128), np.arange(600), tr[:, 3])
        assert resampled.max() >= 8


def test_notes_name_the_class_only_with_evidence() -> None:
    rng = np.random.default_rng(0)
    zh = synth_text.make_note(rng, "wet", True, True, CFG.hubs)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh)
    for cls in CLASSES[1:]:
        assert len(synth_text.EVIDENCE_EN[cls]) >= 8 and len(synth_text.EVIDENCE_ZH[cls]) >= 5
    routine = {synth_text.make_note(np.random.default_rng(k), "damaged", False, False, ["X"]) for k in range(50)}
    assert not any("crush" in n.lower() or "torn" in n.lower() for n in routine)


@pytest.mark.parametrize("evidence", [None, "damaged", "wet", "temperature_excursion", "tampered"])
def test_render_parcel_any_class_any_size(evidence: str | None) -> None:
    for size in (32, 96):
        img = render_parcel(np.random.default_rng(size), size, evidence)
        assert img.size == (size, size) and img.mode == "RGB"
        assert 5 < float(np.asarray(img).mean()) < 250
