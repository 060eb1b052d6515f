"""Synthetic landing batches (DESIGN §2): parcel records with photo, note and sensor trace.

Entry point of the generator. A batch is planned first (shipments, hubs, times,
classes, labels, which modality is missing, which one shows the class) from
`default_rng(seed)`; each record's content is then drawn from seeds alone: the
parcel its photo shows from `(seed, shipment)`, the capture, note and trace from
`SeedSequence([seed, index])`. So a record does not depend on the others and a
batch is byte-identical for the same seed.

A shipment is one parcel travelling through 1-4 hubs, and its condition is a
history: normal until an onset hub, then its class at every later hub (damage
persists), and every photo of it shows the same box (and, once there, the same
dent or stain) under a different camera. Records of one shipment are therefore
alike, which is why the split goes by shipment: a record-level split would put most
gate-set records' parcels, in the same condition, into training.

The evidence model is the point of the data set: for a non-normal record each
modality shows the class independently with probability `p_<modality>_evidence`
and otherwise looks like a normal parcel's, so no single modality suffices and
fusion pays. The photo's draw is the parcel's (its marks show in all its photos
from the onset on, or in none); the note's and the trace's are the record's.

Shifted traffic (`synth.shift`, shift.py): a share of records captured at a new hub with
another camera, note style and tracker, evidence intact; off by default, on demand as below.

    python -m mmcore.synth --params params.yaml --landing data/landing
    python -m mmcore.synth --landing /tmp/landing --batch-prefix shifted --shift new_hub --shift-share 0.3
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from mmcore.config import CLASSES, SynthConfig, load_params
from mmcore.schema import RECORD_FIELDS, RECORD_ID_RE
from mmcore.synth import sensor as synth_sensor, shift as synth_shift, text as synth_text
from mmcore.synth.image import make_parcel, render_parcel

SUCCESS = "_SUCCESS"
JPEG_QUALITY = 90
P_REEFER = 0.45            # share of shipments travelling in a cold chain
PARCEL_STREAM = 0x5EED_BA6  # parcels are seeded by (seed, PARCEL_STREAM, shipment): apart from records' (seed, index)
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
# UTC offsets (hours) by IATA-like hub prefix; unknown hubs get a stable pseudo-random one.
HUB_OFFSETS = {"SHA": 8, "SZX": 8, "HKG": 8, "PVG": 8, "SIN": 8, "NRT": 9, "ICN": 9, "DXB": 4,
               "AMS": 1, "FRA": 1, "CDG": 1, "LHR": 0, "JFK": -5, "MEM": -6, "ORD": -6, "LAX": -8}


@dataclass(frozen=True)
class RecordPlan:
    """Everything decided about one record before its content is drawn."""

    index: int
    record_id: str
    shipment_no: int        # within the batch: seeds the parcel, which all its records photograph
    shipment_id: str
    hub: str
    captured_at: str
    true_class: str
    label: str | None
    has_image: bool
    note_mode: str          # "missing" (null), "empty" ("") or "text"
    has_sensor: bool
    chinese: bool
    image_evidence: bool
    note_evidence: bool
    sensor_evidence: bool
    rows: int
    reefer: bool
    start_hour: float       # local hour at the start of the sensor trace
    day_of_year: int
    shifted: bool = False   # captured at synth.shift.hub, with its camera, note style and tracker


# --------------------------------------------------------------------------- public API
def generate_batch(landing_dir: Path, batch_id: str, n: int, cfg: SynthConfig, seed: int,
                   *, workers: int | None = None) -> Path:
    """Write data/landing/<batch_id>/ in the DESIGN §2 landing format; returns the batch folder. _SUCCESS last.

    The batch is built in a hidden sibling folder and renamed into place, so a reader
    never sees a half-written batch; an existing batch of the same id is replaced.
    `workers` > 1 renders records in that many processes (output is identical);
    None picks one per core (at most 4) for batches of 200 records or more.
    """
    if not RECORD_ID_RE.match(batch_id) or len(batch_id) > 50:
        raise ValueError(f"batch_id {batch_id!r} must match [A-Za-z0-9_-] and be at most 50 characters")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")
    landing_dir = Path(landing_dir)
    final, tmp = landing_dir / batch_id, landing_dir / f".{batch_id}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    (tmp / "sensors").mkdir()
    try:
        plans = plan_batch(np.random.default_rng(seed), batch_id, n, cfg)
        records = _write_records(tmp, plans, cfg, seed, _resolve_workers(workers, n))
        with open(tmp / "records.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (tmp / SUCCESS).write_text("", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def generate_default(landing_dir: Path, cfg: SynthConfig, *, prefix: str = "batch", start: int = 0,
                     workers: int | None = None) -> list[Path]:
    """cfg.batches batches of cfg.records_per_batch, batch ids like 'batch-0000', each seeded from
    cfg.seed + batch index.

    `start` continues a series: start=3 writes batch-0003 onwards with new content,
    which is how a later day's data is simulated.
    """
    return [generate_batch(Path(landing_dir), f"{prefix}-{i:04d}", cfg.records_per_batch, cfg, cfg.seed + i,
                           workers=workers) for i in range(start, start + cfg.batches)]


# --------------------------------------------------------------------------- planning
def plan_batch(rng: np.random.Generator, batch_id: str, n: int, cfg: SynthConfig) -> list[RecordPlan]:
    """Decide ids, shipments, times, classes, labels, missing modalities and evidence for n records.

    A class belongs to a shipment's history (`_history_classes`), so the batch's class mix
    is close to `class_mix` but not exact; missing-modality, label-noise and unlabelled
    counts are exact per-record quotas (largest remainder), randomly placed. Evidence is
    Bernoulli: per shipment for the photo (a dent that shows stays there), per record for
    the note (each handler notices or not) and the trace (each leg is its own recording).
    """
    rows = rng.integers(synth_sensor.MIN_ROWS, synth_sensor.MAX_ROWS + 1, n)
    legs = list(_route(rng, n, rows, cfg.hubs))
    ships = [leg[0] for leg in legs]
    classes = _history_classes(rng, ships, cfg)
    labels = _labels(rng, classes, cfg)
    no_image, no_sensor = _quota_mask(rng, n, cfg.p_image_missing), _quota_mask(rng, n, cfg.p_sensor_missing)
    note_modes = _note_modes(rng, n, cfg)
    chinese = rng.random(n) < cfg.p_chinese
    shows_marks = rng.random(ships[-1] + 1 if ships else 0) < cfg.p_image_evidence     # per parcel
    ev = {"image": shows_marks[np.array(ships, dtype=int)], "note": rng.random(n) < cfg.p_note_evidence,
          "sensor": rng.random(n) < cfg.p_sensor_evidence}
    plans: list[RecordPlan] = []
    for i, (ship_no, hub, when, reefer) in enumerate(legs):
        abnormal = classes[i] != "normal"
        has_sensor = bool(not no_sensor[i] or (no_image[i] and note_modes[i] != "text"))  # never all missing
        start_local = when - timedelta(seconds=int(rows[i]) * synth_sensor.PERIOD_S)
        plans.append(RecordPlan(
            index=i, record_id=f"{batch_id}-{i:06d}", shipment_no=ship_no, shipment_id=f"{batch_id}-s{ship_no:05d}",
            hub=hub, captured_at=when.isoformat(timespec="seconds"), true_class=classes[i], label=labels[i],
            has_image=not no_image[i], note_mode=note_modes[i], has_sensor=has_sensor, chinese=bool(chinese[i]),
            image_evidence=abnormal and bool(ev["image"][i]), note_evidence=abnormal and bool(ev["note"][i]),
            sensor_evidence=abnormal and bool(ev["sensor"][i]), rows=int(rows[i]), reefer=reefer,
            start_hour=start_local.hour + start_local.minute / 60, day_of_year=start_local.timetuple().tm_yday))
    if cfg.shift.active:   # drawn last: an inactive shift leaves every draw above unchanged
        return synth_shift.shift_plans(rng, plans, cfg.shift, hub_offset(cfg.shift.hub))
    return plans


def _history_classes(rng: np.random.Generator, ships: list[int], cfg: SynthConfig) -> list[str]:
    """Each record's class from its shipment's history: a class and an onset leg per shipment,
    normal before the onset and that class from it on (damage persists).

    Onsets come first, so the shipment quotas of each class can be scaled by the share of
    records at or after an onset: the record mix then matches `class_mix` in expectation.
    """
    sizes = Counter(ships)
    onsets = {s: _onset(rng, k, cfg.p_onset_first_hub) for s, k in sorted(sizes.items())}
    after = sum(k - onsets[s] for s, k in sizes.items())
    ship_class = _quota_classes(rng, len(sizes), _shipment_mix(cfg.class_mix, len(ships) / max(after, 1)))
    classes, leg, prev = [], 0, None
    for s in ships:
        leg = leg + 1 if s == prev else 0
        classes.append(ship_class[s] if leg >= onsets[s] else "normal")
        prev = s
    return classes


def _onset(rng: np.random.Generator, size: int, p_first: float) -> int:
    """The leg (0-based) whose record first shows the class: the first often, a later one sometimes."""
    if size == 1 or rng.random() < p_first:
        return 0
    return int(rng.integers(1, size))


def _shipment_mix(mix: dict[str, float], inflate: float) -> dict[str, float]:
    """Shipment shares that give record shares `mix` when only 1/`inflate` of records follow their
    shipment's class (the rest, before an onset, are normal). If even all shipments cannot
    (late onsets and a small normal share), normal records end up above their share."""
    _check_mix(mix)
    total = sum(mix.values())
    out = {c: v / total * inflate for c, v in mix.items() if c != "normal"}
    scale = min(1.0, 1.0 / max(sum(out.values()), 1e-12))
    out = {c: v * scale for c, v in out.items()}
    return {"normal": max(0.0, 1.0 - sum(out.values())), **out}


def _quota_counts(n: int, shares: list[float]) -> list[int]:
    """Largest-remainder rounding of n * shares (shares sum to 1)."""
    raw = [n * s for s in shares]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _check_mix(mix: dict[str, float]) -> None:
    unknown = set(mix) - set(CLASSES)
    if unknown or not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"class_mix must give non-negative shares of {CLASSES}, got {mix}")


def _quota_classes(rng: np.random.Generator, n: int, mix: dict[str, float]) -> list[str]:
    _check_mix(mix)
    total = sum(mix.values())
    names = [c for c in CLASSES if c in mix]
    counts = _quota_counts(n, [mix[c] / total for c in names])
    out = [c for c, k in zip(names, counts) for _ in range(k)]
    return [out[i] for i in rng.permutation(n)]


def _quota_mask(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Exactly round(n * p) True values at random positions."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(n * p))]] = True
    return mask


def _labels(rng: np.random.Generator, classes: list[str], cfg: SynthConfig) -> list[str | None]:
    """True class, except label noise (a random other class) and unlabelled records (None)."""
    n = len(classes)
    noisy, unlabelled = _quota_mask(rng, n, cfg.label_noise), _quota_mask(rng, n, cfg.unlabelled_share)
    labels: list[str | None] = []
    for i, cls in enumerate(classes):
        if noisy[i]:
            cls = str(rng.choice([c for c in CLASSES if c != cls]))
        labels.append(None if unlabelled[i] else cls)
    return labels


def _note_modes(rng: np.random.Generator, n: int, cfg: SynthConfig) -> list[str]:
    k_missing, k_empty = int(round(n * cfg.p_note_missing)), int(round(n * cfg.p_note_empty))
    modes = ["missing"] * k_missing + ["empty"] * k_empty + ["text"] * max(0, n - k_missing - k_empty)
    return [modes[i] for i in rng.permutation(n)][:n]


def _route(rng: np.random.Generator, n: int, rows: np.ndarray,
           hubs: list[str]) -> Iterator[tuple[int, str, datetime, bool]]:
    """Yield (shipment number, hub, local capture time, reefer) per record.

    A shipment visits 1-4 distinct hubs; each record's trace covers the leg since
    the previous checkpoint, so consecutive captures are exactly one trace apart.
    """
    if not hubs:
        raise ValueError("synth.hubs must name at least one hub")
    i, ship = 0, 0
    while i < n:
        size = min(int(rng.integers(1, 5)), len(hubs), n - i)
        path = rng.choice(len(hubs), size=size, replace=False)
        reefer = bool(rng.random() < P_REEFER)
        when = EPOCH + timedelta(minutes=int(rng.integers(0, 330 * 24 * 60)))
        for h in path:
            when = when + timedelta(seconds=int(rows[i]) * synth_sensor.PERIOD_S)
            hub = hubs[int(h)]
            yield ship, hub, when.astimezone(timezone(timedelta(hours=hub_offset(hub)))), reefer
            i += 1
        ship += 1


def hub_offset(hub: str) -> int:
    """The hub's UTC offset in hours: known prefixes, else stable from the code's CRC."""
    known = HUB_OFFSETS.get(hub[:3].upper())
    return known if known is not None else zlib.crc32(hub.encode()) % 18 - 8


# --------------------------------------------------------------------------- content
def _resolve_workers(workers: int | None, n: int) -> int:
    """Serial inside daemonic processes (they may not fork) and for small batches."""
    if multiprocessing.current_process().daemon:
        return 1
    if workers is None:
        return min(os.cpu_count() or 1, 4) if n >= 200 else 1
    return max(1, workers)


def _write_records(folder: Path, plans: list[RecordPlan], cfg: SynthConfig, seed: int, workers: int) -> list[dict]:
    """Write every record's files, in order; records are independent, so processes may share the work.

    "spawn" rather than fork: the caller may be a threaded orchestrator, where fork can deadlock.
    """
    job = partial(_write_record, folder, cfg=cfg, seed=seed)
    if workers == 1:
        return [job(plan) for plan in plans]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=tune_malloc) as pool:
        return list(pool.map(job, plans, chunksize=max(1, len(plans) // (workers * 8))))


def _write_record(folder: Path, plan: RecordPlan, cfg: SynthConfig, seed: int) -> dict:
    """Draw and write one record's files; return its JSON object (fields in contract order).

    The photo is of the shipment's parcel, drawn from (seed, shipment) alone, taken with the
    record's own capture; notes and traces are the record's own. A shifted record is that
    record seen through the new hub's camera, handlers and tracker (synth_shift)."""
    img_ss, note_ss, sensor_ss = np.random.SeedSequence([seed, plan.index]).spawn(3)
    shift = cfg.shift if plan.shifted else None
    cam_ss, text_ss, tracker_ss = synth_shift.seeds(seed, plan.index)
    image = sensor = note = None
    if plan.has_image:
        evidence = plan.true_class if plan.image_evidence else None
        parcel = make_parcel(np.random.SeedSequence([seed, PARCEL_STREAM, plan.shipment_no]), evidence)
        side = synth_shift.render_side(shift, cfg.image_size) if shift else cfg.image_size
        img = render_parcel(np.random.default_rng(img_ss), side, evidence, parcel)
        img, quality = synth_shift.capture(cam_ss, img, shift) if shift else (img, JPEG_QUALITY)
        image = f"images/{plan.record_id}.jpg"
        img.save(folder / image, "JPEG", quality=quality)
    if plan.note_mode == "empty":
        note = ""
    elif plan.note_mode == "text":
        note = synth_text.make_note(np.random.default_rng(note_ss), plan.true_class, plan.note_evidence,
                                    plan.chinese, list(cfg.hubs))
        note = synth_shift.restyle_note(text_ss, note, shift) if shift else note
    if plan.has_sensor:
        evidence = plan.true_class if plan.sensor_evidence else None
        trace = synth_sensor.make_trace(np.random.default_rng(sensor_ss), plan.rows, evidence, plan.reefer,
                                        plan.start_hour, plan.day_of_year)
        trace = synth_shift.retrace(tracker_ss, trace, shift) if shift else trace
        sensor = f"sensors/{plan.record_id}.csv"
        with open(folder / sensor, "w", encoding="utf-8", newline="") as f:
            f.write(synth_sensor.to_csv(trace))
    values = {"record_id": plan.record_id, "shipment_id": plan.shipment_id, "captured_at": plan.captured_at,
              "hub": plan.hub, "image": image, "note": note, "sensor": sensor, "label": plan.label}
    return {k: values[k] for k in RECORD_FIELDS}


def tune_malloc() -> None:
    """Keep freed image buffers in the heap (glibc only; a no-op elsewhere).

    glibc hands each ~0.6 MB numpy buffer back to the kernel on free and faults it
    in again on the next image; that was a fifth of the run time, all in the kernel.
    Process-wide, so only the CLI and the worker processes call it, never the library.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 16 * 1024 * 1024)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024 * 1024)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- CLI
def _summary(batch: Path) -> str:
    recs = [json.loads(line) for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = Counter(r["label"] or "(unlabelled)" for r in recs)
    return (f"{batch}: {len(recs)} records, {sum(r['image'] is not None for r in recs)} images, "
            f"{sum(r['sensor'] is not None for r in recs)} sensor traces, "
            f"{sum(bool(r['note']) for r in recs)} notes; labels {dict(sorted(labels.items()))}")


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m mmcore.synth --params params.yaml --landing data/landing
    [--batches N --records N --seed S --batch-prefix P] [--shift PRESET|FILE --shift-hub H --shift-share S];
    generates the default set (or a shifted one); prints what it wrote. Reads only the `synth` section via
    mmcore.config.load_params(path).synth."""
    ap = argparse.ArgumentParser(prog="python -m mmcore.synth", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml (reads `synth:`)")
    ap.add_argument("--landing", type=Path, required=True, help="landing folder to write batches into")
    ap.add_argument("--batches", type=int, help="override synth.batches")
    ap.add_argument("--records", type=int, help="override synth.records_per_batch")
    ap.add_argument("--seed", type=int, help="override synth.seed")
    ap.add_argument("--batch-prefix", default="batch", help="batch ids are <prefix>-<index:04d>")
    ap.add_argument("--start", type=int, default=0, help="first batch index (continue a series)")
    ap.add_argument("--workers", type=int, help="processes per batch (default: one per core, at most 4)")
    ap.add_argument("--shift", help=f"preset ({', '.join(synth_shift.PRESETS)}) or YAML file replacing synth.shift")
    ap.add_argument("--shift-hub", help="override synth.shift.hub (the new hub's code)")
    ap.add_argument("--shift-share", type=float, help="override synth.shift.share (share of records at the new hub)")
    args = ap.parse_args(argv)
    tune_malloc()
    cfg = load_params(args.params).synth
    overrides = {k: v for k, v in (("batches", args.batches), ("records_per_batch", args.records),
                                   ("seed", args.seed)) if v is not None}
    try:
        shift = synth_shift.override(cfg.shift, args.shift, args.shift_hub, args.shift_share)
        cfg = dataclasses.replace(cfg, **overrides, shift=shift)
    except ValueError as exc:
        ap.error(str(exc))
    t0 = time.perf_counter()
    batches = generate_default(args.landing, cfg, prefix=args.batch_prefix, start=args.start, workers=args.workers)
    for batch in batches:
        print(_summary(batch))
    if cfg.shift.hub is not None:
        print(synth_shift.describe(cfg.shift))
    print(f"wrote {len(batches)} batch(es) of {cfg.records_per_batch} records in {time.perf_counter() - t0:.1f} s")
    return 0

