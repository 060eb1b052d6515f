"""Shifted traffic for the synthetic generator: a new hub with its own camera, note style and tracker.

A monitoring scenario needs traffic that a champion has not seen: records captured at
a new hub (`ShiftConfig.hub`) whose camera exposes, tints, blurs and frames photos
differently, whose handlers write in shorthand with typos, and whose trackers sample
at another rate with another calibration. Each knob of `mmcore.config.ShiftConfig`
acts alone and is a no-op at its neutral value.

The shift is applied on top of the record the generator would have written: the same
parcel, the same capture, the same note and the same physical trace, then seen through
the new hub's equipment. So the class evidence stays (a dent is still a dent under
another camera; a wet parcel still reads high humidity, plus the calibration offset)
and a model trained on labelled shifted records can learn it, while records of the
other hubs stay byte-identical to an unshifted batch of the same seed.

Which records are shifted is planned after everything else (`shift_plans`), from the
batch's own generator, so an inactive shift draws nothing. Up to the share of
shipments, at most one record per shipment goes to the new hub, keeping a shipment's
hubs distinct; a larger share (1.0: every record) sends several legs of one shipment
through the new hub's checkpoints.

Presets (`PRESETS`, or a YAML mapping of `ShiftConfig` keys given to `--shift`) cover
one modality each and two full hubs, so a drift detector can be built on one shift
and checked on another.
"""
from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageFilter

from mmcore.config import SENSOR_CHANNELS, ShiftConfig, from_dict, load_yaml
from mmcore.synth.sensor import PERIOD_S
from mmcore.synth.text import typo

if TYPE_CHECKING:   # generate imports this module
    from mmcore.synth.generate import RecordPlan

SHIFT_STREAM = 0x5A1F7   # shift draws are seeded by (seed, index, SHIFT_STREAM): apart from the record's own
_CAMERA = {"exposure": 0.65, "colour_gains": [0.88, 1.0, 1.2], "blur_px": 1.2, "camera_noise": 6.0,
           "image_width": 320, "image_height": 240, "jpeg_quality": 60}
_NOTES = {"note_shorthand": 0.8, "note_typo_rate": 0.12, "note_upper": 0.4}
_SENSOR = {"sensor_period_s": 30, "sensor_offset": {"humidity_pct": 12.0, "temperature_c": 1.5},
           "sensor_noise": {"humidity_pct": 1.5}}
PRESETS: dict[str, dict[str, Any]] = {
    "new_hub_camera": {"hub": "NEW01", "share": 1.0, **_CAMERA},
    "new_hub_notes": {"hub": "NEW01", "share": 1.0, **_NOTES},
    "new_hub_sensor": {"hub": "NEW01", "share": 1.0, **_SENSOR},
    "new_hub": {"hub": "NEW01", "share": 1.0, **_CAMERA, **_NOTES, **_SENSOR},   # the new hub
    "new_hub_alt": {   # another new hub, shifted the other way: for checks not tuned to `new_hub`
        "hub": "NEW02", "share": 1.0, "exposure": 1.3, "colour_gains": [1.15, 1.05, 0.85], "blur_px": 0.6,
        "image_width": 160, "image_height": 160, "jpeg_quality": 45, "note_shorthand": 0.4,
        "note_typo_rate": 0.25, "note_p_chinese": 0.6, "sensor_period_s": 120,
        "sensor_offset": {"humidity_pct": -10.0, "temperature_c": -1.0}, "sensor_gain": {"shock_g": 1.3}},
}
# The new hub's handheld jargon: shortened forms that still name the problem (crshd, wt, opnd).
SHORTHAND: dict[str, str] = {
    "package": "pk", "pkg": "pk", "box": "bx", "carton": "ctn", "outer": "otr", "corner": "cnr", "crnr": "cnr",
    "crushed": "crshd", "dented": "dntd", "damaged": "dmgd", "damage": "dmg", "torn": "trn", "hole": "hl",
    "water": "wtr", "wet": "wt", "damp": "dmp", "soaked": "skd", "stains": "stns", "moisture": "mstr",
    "temperature": "tmp", "temp": "tmp", "reefer": "rfr", "alarm": "alm", "logger": "lgr", "warm": "wrm",
    "melted": "mltd", "seal": "sl", "tape": "tp", "opened": "opnd", "broken": "brkn", "tamper": "tmpr",
    "security": "sec", "received": "rcv", "rcvd": "rcv", "arrival": "arr", "arrived": "arr", "checked": "chkd",
    "check": "chk", "please": "pls", "inspect": "insp", "scanned": "scnd", "scan": "scn", "truck": "trk",
    "pallet": "plt", "delivered": "dlvd", "transfer": "xfer", "driver": "drvr", "condition": "cnd",
    "issues": "iss", "visible": "vis", "fragile": "frgl", "heavy": "hvy", "left": "L", "right": "R",
    "bottom": "btm", "front": "frnt", "back": "bk", "side": "sd", "and": "&", "with": "w/", "at": "@",
    "the": "", "by": "", "in": "", "on": "",
}


# --------------------------------------------------------------------------- settings
def load_shift(spec: str) -> ShiftConfig:
    """A preset name (PRESETS) or a YAML file holding a mapping of ShiftConfig keys."""
    if spec in PRESETS:
        return from_dict(ShiftConfig, PRESETS[spec], "synth.shift")
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--shift {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    data = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a shift preset is a mapping of synth.shift keys, got {type(data).__name__}")
    try:
        return from_dict(ShiftConfig, data, "synth.shift")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def override(shift: ShiftConfig, spec: str | None, hub: str | None, share: float | None) -> ShiftConfig:
    """The CLI's shift: synth.shift, replaced by a preset or file (`spec`), then hub and share on top."""
    if spec:
        shift = load_shift(spec)
    extra = {k: v for k, v in (("hub", hub), ("share", share)) if v is not None}
    return dataclasses.replace(shift, **extra) if extra else shift


def describe(shift: ShiftConfig) -> str:
    """One line for the CLI: what is shifted, or why nothing is."""
    if not shift.active:
        return f"shift: hub {shift.hub} with share 0, nothing shifted (set --shift-share)"
    neutral = ShiftConfig()
    knobs = [f.name for f in dataclasses.fields(ShiftConfig)
             if f.name not in ("hub", "share") and getattr(shift, f.name) != getattr(neutral, f.name)]
    return f"shift: {shift.share:.0%} of records at new hub {shift.hub}; knobs {', '.join(knobs) or 'none'}"


# --------------------------------------------------------------------------- planning
def shift_plans(rng: np.random.Generator, plans: Sequence["RecordPlan"], shift: ShiftConfig,
                offset_hours: int) -> list["RecordPlan"]:
    """Move round(share * n) records to the new hub: hub, local capture time and note language.

    Records are taken shipment by shipment, one random leg of each first, so a shipment
    visits the new hub twice only when the share exceeds the share of shipments.
    """
    n = len(plans)
    ships = np.array([p.shipment_no for p in plans], dtype=np.int64)
    order = np.lexsort((rng.random(n), ships))       # grouped by shipment, random leg order within
    rank = np.zeros(n, dtype=np.int64)
    for prev, cur in zip(order[:-1], order[1:]):
        rank[cur] = rank[prev] + 1 if ships[cur] == ships[prev] else 0
    chosen = np.lexsort((rng.random(n), rank))[: int(round(n * shift.share))]
    chinese = rng.random(n) < (shift.note_p_chinese if shift.note_p_chinese is not None else 0.0)
    zone = timezone(timedelta(hours=offset_hours))
    out = list(plans)
    for i in chosen.tolist():
        plan = plans[i]
        when = datetime.fromisoformat(plan.captured_at).astimezone(zone).isoformat(timespec="seconds")
        lang = bool(chinese[i]) if shift.note_p_chinese is not None else plan.chinese
        out[i] = dataclasses.replace(plan, hub=shift.hub, captured_at=when, chinese=lang, shifted=True)
    return out


def seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, ...]:
    """Camera, note and tracker seeds of one shifted record: each knob family draws on its own."""
    return tuple(np.random.SeedSequence([seed, index, SHIFT_STREAM]).spawn(3))


# --------------------------------------------------------------------------- camera
def render_side(shift: ShiftConfig, image_size: int) -> int:
    """The square the photo is rendered at: the camera's longer side (cropped to its aspect later)."""
    return max(shift.image_width, shift.image_height) or image_size


def capture(ss: np.random.SeedSequence, img: Image.Image, shift: ShiftConfig) -> tuple[Image.Image, int]:
    """The new camera's photo of a rendered scene, and its JPEG quality: framing, gains, blur, noise."""
    w, h = shift.image_width or img.width, shift.image_height or img.height
    if (w, h) != img.size:
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    gains = shift.exposure * np.asarray(shift.colour_gains, dtype=np.float64)
    if not np.all(gains == 1.0):
        lut = np.minimum(255, np.round(np.arange(256)[None, :] * gains[:, None])).astype(np.uint8)
        img = img.point(lut.ravel().tolist())
    if shift.blur_px > 0:
        img = img.filter(ImageFilter.GaussianBlur(shift.blur_px))
    if shift.camera_noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + np.random.default_rng(ss).normal(0, shift.camera_noise, arr.shape).astype(np.float32)
        img = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
    return img, shift.jpeg_quality


# --------------------------------------------------------------------------- notes
def restyle_note(ss: np.random.SeedSequence, note: str, shift: ShiftConfig) -> str:
    """The new hub's handlers' way of writing the same note: shorthand, typos, capitals.

    Only English words change (Chinese text has no shorthand here, and no keyboard slips)."""
    short_ss, typo_ss, case_ss = ss.spawn(3)
    if shift.note_shorthand > 0:
        rng = np.random.default_rng(short_ss)
        note = re.sub(r"[A-Za-z]+", lambda m: _shorten(rng, m.group(0), shift.note_shorthand), note)
        note = re.sub(r" {2,}", " ", note).strip() or note
    if shift.note_typo_rate > 0:
        rng = np.random.default_rng(typo_ss)
        note = re.sub(r"[A-Za-z]{3,}", lambda m: typo(rng, m.group(0)) if rng.random() < shift.note_typo_rate
                      else m.group(0), note)
    if shift.note_upper > 0 and np.random.default_rng(case_ss).random() < shift.note_upper:
        note = note.upper()
    return note


def _shorten(rng: np.random.Generator, word: str, p: float) -> str:
    short = SHORTHAND.get(word.lower())
    if short is None or rng.random() >= p:
        return word
    return short.upper() if word.isupper() and len(word) > 1 else short


# --------------------------------------------------------------------------- tracker
def retrace(ss: np.random.SeedSequence, trace: np.ndarray, shift: ShiftConfig) -> np.ndarray:
    """The same leg recorded by the new hub's tracker: its sampling period, calibration and noise."""
    if shift.sensor_period_s != PERIOD_S:
        trace = resample(trace, shift.sensor_period_s)
    out = trace.copy()
    for c, (name, c_ss) in enumerate(zip(SENSOR_CHANNELS, ss.spawn(len(SENSOR_CHANNELS))), start=1):
        touched = name in shift.sensor_gain or name in shift.sensor_offset or shift.sensor_noise.get(name, 0) > 0
        if not touched:
            continue
        out[:, c] = out[:, c] * shift.sensor_gain.get(name, 1.0) + shift.sensor_offset.get(name, 0.0)
        if shift.sensor_noise.get(name, 0) > 0:
            out[:, c] += np.random.default_rng(c_ss).normal(0, shift.sensor_noise[name], len(out))
        if name != "temperature_c":   # the contract's ranges: humidity 0-100 %, shock and light not negative
            out[:, c] = np.clip(out[:, c], 0.0, 100.0 if name == "humidity_pct" else None)
    return out


def resample(trace: np.ndarray, period_s: int) -> np.ndarray:
    """A 60 s trace re-recorded every `period_s` seconds over the same leg.

    Temperature, humidity and light are sampled (linear interpolation); shock is the
    tracker's peak over each interval, so each new row takes the largest old row its
    interval overlaps, and a drop lasts at least as long as before (it still survives
    the model's resampling to 128 steps)."""
    rows = len(trace)
    new_rows = rows * PERIOD_S // period_s           # 60-600 rows at 60 s: 30-4,500 at 8-120 s
    t = np.arange(new_rows, dtype=np.int64) * period_s
    out = np.empty((new_rows, trace.shape[1]))
    out[:, 0] = t
    for c in (1, 2, 4):
        out[:, c] = np.interp(t, trace[:, 0], trace[:, c])
    first = t // PERIOD_S
    last = np.minimum(rows - 1, (t + period_s - 1) // PERIOD_S)
    idx = first[:, None] + np.arange(int((last - first).max()) + 1)[None, :]
    peaks = np.where(idx <= last[:, None], trace[np.minimum(idx, rows - 1), 3], -np.inf)
    out[:, 3] = peaks.max(axis=1)
    return out
