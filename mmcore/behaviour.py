"""Behavioural tests of a model, CheckList-style: invariance, directional expectations, minimum functionality.

Why: macro-F1 on the gate set says how often a model is right on the records we happen to hold, not
whether it is right for reasons that survive tomorrow's data. These suites probe what we know about
the domain and hold for real data nobody here generated:

  invariance             a photo re-encoded at JPEG quality 70 or 10 % brighter/darker, a note in
                         another case or with a small typo, a trace resampled to 95 % / 105 % of its
                         rows: the label must not flip.
  directional            a sustained run at 40 C added to a trace must not lower p(temperature_excursion);
                         a 20 g shock spike must not lower p(damaged) (by more than `tolerance`).
  minimum_functionality  templated records per class (English notes, synthetic-by-construction traces:
                         a plain baseline plus the class's event) in each missing-modality pattern
                         must get their class.

Pure: no I/O, no MLflow. Cases are built once (`build_cases`) and scored per model (`score_cases`),
so the champion and the challenger meet the very same perturbed records.
"""
from __future__ import annotations

import io
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from mmcore.config import CLASSES, SENSOR_CHANNELS
from mmcore.preprocess import decode_image

SUITES = ("invariance", "directional", "minimum_functionality")
Probabilities = Callable[[list[dict[str, Any]]], np.ndarray]     # records -> (N, len(CLASSES))

JPEG_QUALITY = 70
BRIGHTNESS = (0.9, 1.1)
RESAMPLE = (0.95, 1.05)
MIN_ROWS, MAX_ROWS = 30, 5000      # the data contract's trace lengths: a perturbed trace stays inside them
HOT_C = 40.0                       # above any limit: cold chain is 2-8 C, ambient near room temperature
HOT_SHARE = 0.15                   # share of the trace the added temperature run covers
SPIKE_G = 20.0                     # a drop registers from roughly 8 g
TOLERANCE = 0.02                   # directional: a probability may fall this much (float noise, not a failure)
EXAMPLES = 5                       # failure descriptions kept per suite


@dataclass(frozen=True)
class Case:
    """One test: a record, what the model must do with it, and a description for the report."""

    suite: str
    record: dict[str, Any]
    target: int                     # minimum_functionality: the class; directional: the class whose p must not fall
    name: str
    kind: str                       # the perturbation (`jpeg_q70`, `+shock_spike`) or the template's modality pattern
    base: int | None = None         # invariance, directional: index of the unperturbed record in `Cases.bases`


@dataclass
class Cases:
    bases: list[dict[str, Any]] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)


# --- perturbations -------------------------------------------------------------------------

def reencode_jpeg(data: bytes, quality: int = JPEG_QUALITY) -> bytes:
    """The photo as a camera or a proxy set to a lower quality would send it."""
    out = io.BytesIO()
    decode_image(data).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def brighten(data: bytes, factor: float) -> bytes:
    """Brightness scaled by `factor` (PIL ImageEnhance), saved lossless so only the brightness changes."""
    out = io.BytesIO()
    ImageEnhance.Brightness(decode_image(data)).enhance(factor).save(out, format="PNG")
    return out.getvalue()


def typo(note: str, seed: int, kind: str) -> str | None:
    """One small typo in one word of 4+ letters: `swap` two adjacent letters or `drop` one (never the first).

    Deterministic from `seed`; None when the note has no such word (Chinese notes, for instance)."""
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", note)]
    if not words:
        return None
    rng = random.Random(seed)
    m = rng.choice(words)
    w = m.group()
    if kind == "swap":
        spots = [i for i in range(1, len(w) - 1) if w[i] != w[i + 1]]
        if not spots:
            return None
        i = rng.choice(spots)
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    elif kind == "drop":
        i = rng.randrange(1, len(w))
        w = w[:i] + w[i + 1:]
    else:
        raise ValueError(f"typo kind must be swap or drop, got {kind!r}")
    return note[:m.start()] + w + note[m.end():]


def _trace(sensor: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(t_s, channel arrays); a trace without t_s is taken at a fixed rate of one row per second."""
    x = {c: np.asarray(sensor[c], dtype=np.float64) for c in SENSOR_CHANNELS}
    t = sensor.get("t_s")
    rows = len(x[SENSOR_CHANNELS[0]])
    return (np.asarray(t, dtype=np.float64) if t is not None else np.arange(rows, dtype=np.float64)), x


def _as_sensor(t: np.ndarray, x: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"t_s": t.tolist(), **{c: x[c].tolist() for c in SENSOR_CHANNELS}}


def resample(sensor: dict[str, Any], factor: float) -> dict[str, Any]:
    """The trace at `factor` times its rows over the same time span, as a tracker at another rate would log it.

    Every channel is interpolated; each shock reading is also kept (max) at its nearest new row, since
    interpolation would shave a one-row spike. Row counts stay within the contract's 30..5000."""
    t, x = _trace(sensor)
    rows = int(np.clip(round(len(t) * factor), MIN_ROWS, MAX_ROWS))
    grid = np.linspace(t[0], t[-1], rows)
    out = {c: np.interp(grid, t, v) for c, v in x.items()}
    span = t[-1] - t[0]
    nearest = np.rint((t - t[0]) / span * (rows - 1)).astype(int) if span > 0 else np.zeros(len(t), int)
    np.maximum.at(out["shock_g"], np.clip(nearest, 0, rows - 1), x["shock_g"])
    return _as_sensor(grid, out)


def add_temperature_run(sensor: dict[str, Any], seed: int, celsius: float = HOT_C,
                        share: float = HOT_SHARE) -> dict[str, Any]:
    """A sustained window (`share` of the rows, seeded position) held at `celsius`, clearly above any limit."""
    t, x = _trace(sensor)
    width = max(1, round(share * len(t)))
    start = random.Random(seed).randrange(0, len(t) - width + 1)
    x["temperature_c"][start:start + width] = np.maximum(x["temperature_c"][start:start + width], celsius)
    return _as_sensor(t, x)


def add_shock_spike(sensor: dict[str, Any], seed: int, g: float = SPIKE_G) -> dict[str, Any]:
    """One reading of `g` at a seeded row: a drop."""
    t, x = _trace(sensor)
    i = random.Random(seed).randrange(len(t))
    x["shock_g"][i] = max(x["shock_g"][i], g)
    return _as_sensor(t, x)


def _seed(seed: int, record_id: Any) -> int:
    """A per-record seed that does not depend on the order records come in."""
    return zlib.crc32(f"{seed}:{record_id}".encode())


def invariance_variants(rec: dict[str, Any], seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(name, perturbed record) for each perturbation the record's modalities allow; no-ops are left out."""
    out: list[tuple[str, dict[str, Any]]] = []
    s = _seed(seed, rec.get("record_id"))
    if rec.get("image") is not None:
        out.append((f"jpeg_q{JPEG_QUALITY}", {**rec, "image": reencode_jpeg(rec["image"])}))
        out += [(f"brightness_x{f}", {**rec, "image": brighten(rec["image"], f)}) for f in BRIGHTNESS]
    if note := (rec.get("note") or "").strip():
        for name, new in (("upper_case", note.upper()), ("lower_case", note.lower()),
                          ("typo_swap", typo(note, s, "swap")), ("typo_drop", typo(note, s, "drop"))):
            if new is not None and new != note:
                out.append((name, {**rec, "note": new}))
    if rec.get("sensor") is not None:
        rows = len(rec["sensor"][SENSOR_CHANNELS[0]])
        for f in RESAMPLE:
            new = resample(rec["sensor"], f)
            if len(new["t_s"]) != rows:
                out.append((f"resample_x{f}", {**rec, "sensor": new}))
    return out


def directional_variants(rec: dict[str, Any], seed: int) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, class whose probability must not fall, edited record) for a record with a trace."""
    if rec.get("sensor") is None:
        return []
    s = _seed(seed, rec.get("record_id"))
    return [("+temperature_run", CLASSES.index("temperature_excursion"),
             {**rec, "sensor": add_temperature_run(rec["sensor"], s)}),
            ("+shock_spike", CLASSES.index("damaged"), {**rec, "sensor": add_shock_spike(rec["sensor"], s)})]


# --- minimum functionality: templated records ---------------------------------------------

NOTES: dict[str, tuple[str, ...]] = {
    "normal": ("Delivered in good condition.", "No issues, box intact.", "Parcel fine on arrival."),
    "damaged": ("Corner crushed, box dented.", "Carton torn on one side.", "Box dropped, contents may be broken."),
    "wet": ("Box soaked, water stains on the side.", "Parcel wet on arrival.", "Carton damp and soggy."),
    "temperature_excursion": ("Reefer alarm, temperature above range.", "Cold chain breach, goods warm on arrival.",
                              "Temperature logger shows an excursion."),
    "tampered": ("Seal tape cut and resealed.", "Box opened, tape broken.", "Signs of tampering, seal broken."),
}
TRACES = ((120, False), (480, True), (1500, False))      # (rows, cold chain) of each templated trace
PATTERNS = ("note", "sensor", "note+sensor")            # each also with a plain photo attached (`with_image`)
PARCEL_RGB = (176, 132, 86)                             # corrugated cardboard


def plain_photo(size: int = 224) -> bytes:
    """A uniform cardboard-coloured JPEG: a photo present but showing nothing, as hub photos often do."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), PARCEL_RGB).save(out, format="JPEG", quality=90)
    return out.getvalue()


def baseline_trace(rows: int, cold_chain: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A quiet trip at one row a minute: held at 5 C (cold chain) or ~21 C, steady humidity, handling bumps
    under 3 g (within tolerance), a closed box's ~0 lux."""
    phase = np.linspace(0, 2 * np.pi, rows)
    shock = np.abs(rng.normal(0.0, 0.3, rows)) + 0.2
    shock[rng.choice(rows, size=max(1, rows // 100), replace=False)] = rng.uniform(1.5, 3.0, max(1, rows // 100))
    return {"t_s": np.arange(rows) * 60.0,
            "temperature_c": (5.0 if cold_chain else 21.0) + 0.5 * np.sin(phase) + rng.normal(0, 0.2, rows),
            "humidity_pct": np.clip((65.0 if cold_chain else 45.0) + rng.normal(0, 1.5, rows), 0, 100),
            "shock_g": shock, "light_lux": np.abs(rng.normal(0.0, 0.3, rows))}


def _window(rows: int, share: float, rng: np.random.Generator) -> slice:
    width = max(1, round(share * rows))
    start = int(rng.integers(0, rows - width + 1))
    return slice(start, start + width)


def add_event(trace: dict[str, np.ndarray], cls: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The class's evidence on a baseline trace; `normal` adds none."""
    x = {k: v.copy() for k, v in trace.items()}
    rows = len(x["t_s"])
    if cls == "damaged":                        # drops: well over the ~8 g a drop registers at
        x["shock_g"][rng.choice(rows, size=2, replace=False)] = rng.uniform(12.0, 25.0, 2)
    elif cls == "wet":                          # near saturation for a sustained window
        w = _window(rows, 0.3, rng)
        x["humidity_pct"][w] = rng.uniform(94.0, 99.0, w.stop - w.start)
    elif cls == "temperature_excursion":        # a sustained run clearly above any limit
        w = _window(rows, 0.25, rng)
        x["temperature_c"][w] = 38.0 + rng.normal(0, 0.5, w.stop - w.start)
    elif cls == "tampered":                     # the box opened in light
        w = _window(rows, 0.08, rng)
        x["light_lux"][w] = rng.uniform(50.0, 300.0, w.stop - w.start)
    return x


def template_cases(seed: int, with_image: bool = True) -> list[Case]:
    """Per class, per missing-modality pattern, one case per template (note k goes with trace k)."""
    photo = plain_photo()
    patterns = [*PATTERNS, *(f"image+{p}" for p in PATTERNS)] if with_image else list(PATTERNS)
    out = []
    for c, cls in enumerate(CLASSES):
        rng = np.random.default_rng([seed, c])
        traces = [add_event(baseline_trace(rows, cold, rng), cls, rng) for rows, cold in TRACES]
        for k, (note, trace) in enumerate(zip(NOTES[cls], traces)):
            sensor = _as_sensor(trace["t_s"], trace)
            for pattern in patterns:
                parts = pattern.split("+")
                rec = {"record_id": f"template-{cls}-{pattern}-{k}", "image": photo if "image" in parts else None,
                       "note": note if "note" in parts else None, "sensor": sensor if "sensor" in parts else None}
                rows, cold = TRACES[k]
                name = f"{cls} {pattern} #{k}" + (f" ({'cold chain' if cold else 'ambient'}, {rows} rows)"
                                                  if "sensor" in parts else "")
                out.append(Case("minimum_functionality", rec, c, name, pattern))
    return out


# --- building and scoring -------------------------------------------------------------------

def sample(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """At most n indices, drawn in turn from each class (seeded), so rare classes are probed too."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < min(n, len(labels)):
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop(0)))
    return sorted(out)


def build_cases(records: list[dict[str, Any]], labels: Sequence[int], n: int, seed: int,
                with_image: bool = True) -> Cases:
    """Every suite's cases: perturbations of at most n sampled records, and the templates."""
    built = Cases()
    for i in sample(labels, n, seed):
        rec, base = records[i], len(built.bases)
        built.bases.append(rec)
        rid = rec.get("record_id")
        built.cases += [Case("invariance", r, -1, f"{rid} {name}", name, base)
                        for name, r in invariance_variants(rec, seed)]
        built.cases += [Case("directional", r, c, f"{rid} {name}", name, base)
                        for name, c, r in directional_variants(rec, seed)]
    built.cases += template_cases(seed, with_image)
    return built


def _failure(case: Case, p: np.ndarray, before: np.ndarray | None, tolerance: float) -> str | None:
    """Why the case fails, or None when it passes."""
    got = CLASSES[int(p.argmax())]
    if case.suite == "minimum_functionality":
        return None if int(p.argmax()) == case.target else f"{case.name}: predicted {got}"
    assert before is not None
    if case.suite == "invariance":
        was = CLASSES[int(before.argmax())]
        return None if got == was else f"{case.name}: {was} -> {got}"
    cls = CLASSES[case.target]
    if p[case.target] >= before[case.target] - tolerance:
        return None
    return f"{case.name}: p({cls}) {before[case.target]:.3f} -> {p[case.target]:.3f}"


def score_cases(probabilities: Probabilities, built: Cases, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per suite: failure_rate (0 when the suite has no case), n, failed, a few failure descriptions, and
    `by_kind`: the failure rate per perturbation or template pattern (which one a model trips on).

    One call scores the unperturbed records and every case, so a batch-dependent model cannot tell them apart."""
    out: dict[str, Any] = {s: {"failure_rate": 0.0, "n": 0, "failed": 0, "examples": [], "by_kind": {}}
                           for s in SUITES}
    if not built.cases:
        return out
    probs = probabilities(built.bases + [c.record for c in built.cases])
    base_p, case_p = probs[:len(built.bases)], probs[len(built.bases):]
    counts: dict[tuple[str, str], list[int]] = {}
    for case, p in zip(built.cases, case_p):
        why = _failure(case, p, None if case.base is None else base_p[case.base], tolerance)
        suite, tally = out[case.suite], counts.setdefault((case.suite, case.kind), [0, 0])
        suite["n"], tally[1] = suite["n"] + 1, tally[1] + 1
        if why is not None:
            suite["failed"], tally[0] = suite["failed"] + 1, tally[0] + 1
            if len(suite["examples"]) < EXAMPLES:
                suite["examples"].append(why)
    for (name, kind), (failed, n) in counts.items():
        out[name]["by_kind"][kind] = failed / n
    for suite in out.values():
        suite["failure_rate"] = suite["failed"] / suite["n"] if suite["n"] else 0.0
    return out


def run_suites(probabilities: Probabilities, records: list[dict[str, Any]], labels: Sequence[int], n: int,
               seed: int, tolerance: float = TOLERANCE, with_image: bool = True) -> dict[str, Any]:
    """Build every suite's cases and score one model on them (to score two models alike, build once)."""
    return score_cases(probabilities, build_cases(records, labels, n, seed, with_image), tolerance)
