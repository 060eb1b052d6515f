"""Rendered parcel photos for the synthetic generator (PIL + numpy only).

A box is built in 3D, projected orthographically with random yaw, elevation and
roll, and each visible face is painted as a flat texture (tape, label, scuffs,
class evidence) that is then mapped onto its projected parallelogram. Painting in
face coordinates keeps the evidence painters simple and makes it follow the box's
perspective for free.

Evidence is large (about 10-35 % of a face) and high-contrast on purpose: a frozen
ImageNet backbone at 160 px must see it. Normal parcels carry small look-alikes
(scuffs, dings, smudges, stickers, extra tape) so that "any mark" is not a class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmcore.data import synth_paint as paint

SUPERSAMPLE = 1  # >1 renders larger and downsamples (anti-aliasing) at a quadratic cost in time


@dataclass(frozen=True)
class Face:
    """One visible box face: where its texture lands on the canvas and how it is lit."""

    kind: str                 # "top", "side_x" (receives the tape tabs) or "side_y"
    origin: np.ndarray        # canvas point of texture (0, 0)
    e1: np.ndarray            # canvas vector of the texture's full width
    e2: np.ndarray            # canvas vector of the texture's full height
    tex_size: tuple[int, int]
    shade: float
    area: float               # projected area in canvas px^2

    def polygon(self) -> list[tuple[float, float]]:
        o, a, b = self.origin, self.e1, self.e2
        return [tuple(p) for p in (o, o + a, o + a + b, o + b)]


def render_parcel(rng: np.random.Generator, size: int, evidence: str | None) -> Image.Image:
    """A parcel photo; `evidence` is a non-normal class name whose marks it must show, or None."""
    big = size * SUPERSAMPLE
    canvas = _background(rng, big)
    faces, footprint = _box_geometry(rng, big)
    if evidence == "wet" and rng.random() < 0.4 or evidence != "wet" and rng.random() < 0.03:
        _puddle(rng, canvas, footprint)
    _shadow(rng, canvas, footprint, big)
    style = _box_style(rng)
    plan = _evidence_plan(rng, faces, evidence)
    for i, face in enumerate(faces):
        tex = _face_texture(rng, face, style, plan.get(i, []))
        _paste_face(canvas, tex, face)
    if SUPERSAMPLE > 1:
        canvas = canvas.resize((size, size), Image.Resampling.BOX)
    return _finish(rng, canvas)


# --------------------------------------------------------------------------- scene
def _background(rng: np.random.Generator, big: int) -> Image.Image:
    """Floor, conveyor belt, scanner table or epoxy floor: varied so the box is the constant."""
    kind = rng.choice(["concrete", "conveyor", "table", "epoxy"])
    if kind == "concrete":
        base = np.array([1, 1, 1]) * rng.uniform(110, 175) + rng.uniform(-8, 8, 3)
    elif kind == "conveyor":
        base = np.array([1, 1, 1]) * rng.uniform(35, 70) + rng.uniform(-4, 4, 3)
    elif kind == "table":
        base = np.array([1, 1, 1]) * rng.uniform(170, 205) + rng.uniform(-6, 6, 3)
    else:
        base = np.array(rng.choice([[85, 115, 100], [80, 100, 125], [120, 120, 95]])) + rng.uniform(-10, 10, 3)
    small = max(8, big // 4)   # mottling is low-frequency: compute it at quarter size
    low = Image.fromarray(((rng.normal(0, 1, (8, 8)) * 20) + 128).clip(0, 255).astype(np.uint8))
    mottled = np.asarray(low.resize((small, small), Image.Resampling.BICUBIC), dtype=np.float32) - 128
    arr = base.astype(np.float32)[None, None, :] + mottled[..., None] * np.float32(rng.uniform(0.1, 0.5))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((big, big), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    if kind == "conveyor":
        _rollers(rng, draw, big, base)
    elif kind == "epoxy" and rng.random() < 0.7:
        y = rng.uniform(0.05, 0.95) * big
        draw.line([(0, y), (big, y + rng.uniform(-0.2, 0.2) * big)], fill=(215, 185, 40),
                  width=int(big * rng.uniform(0.03, 0.06)))
    elif kind == "table":
        for _ in range(rng.integers(0, 3)):
            x = rng.uniform(0, big)
            draw.line([(x, 0), (x, big)], fill=tuple(int(c * 0.8) for c in base), width=2)
    return img


def _rollers(rng: np.random.Generator, draw: ImageDraw.ImageDraw, big: int, base: np.ndarray) -> None:
    """Parallel roller lines of a conveyor, horizontal or vertical."""
    period = rng.uniform(0.05, 0.09) * big
    light = tuple(int(min(255, c * 1.8 + 20)) for c in base)
    dark = tuple(int(c * 0.5) for c in base)
    vertical = rng.random() < 0.5
    pos = rng.uniform(0, period)
    while pos < big:
        a, b = ((pos, 0), (pos, big)) if vertical else ((0, pos), (big, pos))
        draw.line([a, b], fill=light, width=max(2, int(period * 0.25)))
        a2 = (a[0] + 3, a[1]) if vertical else (a[0], a[1] + 3)
        b2 = (b[0] + 3, b[1]) if vertical else (b[0], b[1] + 3)
        draw.line([a2, b2], fill=dark, width=2)
        pos += period


def _box_geometry(rng: np.random.Generator, big: int) -> tuple[list[Face], np.ndarray]:
    """Project a random box; returns its visible faces and its floor footprint (canvas px)."""
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.65, 1.1), rng.uniform(0.45, 1.0)
    yaw, elev, roll = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(32, 68)), math.radians(rng.uniform(-25, 25))
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    cr, sr, se, ce = math.cos(roll), math.sin(roll), math.sin(elev), math.cos(elev)

    def project(p: np.ndarray) -> np.ndarray:
        q = p @ rot.T
        u, v = q[..., 0], q[..., 1] * se + q[..., 2] * ce
        return np.stack([cr * u - sr * v, -(sr * u + cr * v)], axis=-1)

    corners = np.array([[x, y, z] for x in (-w / 2, w / 2) for y in (-d / 2, d / 2) for z in (0, h)])
    pts = project(corners)
    lo, hi = pts.min(0), pts.max(0)
    scale = rng.uniform(0.5, 0.78) * big / max(hi - lo)
    centre = big / 2 + rng.uniform(-0.08, 0.08, 2) * big
    offset = centre - (lo + hi) / 2 * scale

    def to_canvas(p: np.ndarray) -> np.ndarray:
        return project(p) * scale + offset

    toward_cam = np.array([0.0, -ce, se])
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), 1.3])
    light /= np.linalg.norm(light)
    faces = []
    for kind, n, origin, e1, e2 in _face_frames(w, d, h):
        n_rot = rot @ n
        if n_rot @ toward_cam <= 0.06:
            continue
        o = to_canvas(origin)
        a, b = to_canvas(origin + e1) - o, to_canvas(origin + e2) - o
        tex = (max(24, int(np.linalg.norm(e1) * scale)), max(24, int(np.linalg.norm(e2) * scale)))
        shade = float(np.clip(0.5 + 0.55 * max(0.0, n_rot @ light), 0.45, 1.08))
        faces.append(Face(kind, o, a, b, tex, shade, abs(a[0] * b[1] - a[1] * b[0])))
    footprint = to_canvas(np.array([[-w / 2, -d / 2, 0], [w / 2, -d / 2, 0], [w / 2, d / 2, 0], [-w / 2, d / 2, 0]]))
    return faces, footprint


def _face_frames(w: float, d: float, h: float) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Texture frames of the five faces that can face a camera above the floor.

    Texture x runs to the viewer's right and texture y runs down (towards the floor on
    sides), so labels are never mirrored and drips on side faces run downwards.
    """
    z = np.array([0.0, 0.0, 1.0])
    yield "top", z, np.array([-w / 2, d / 2, h]), np.array([w, 0.0, 0.0]), np.array([0.0, -d, 0.0])
    sides = (((1, 0, 0), w / 2, d), ((-1, 0, 0), w / 2, d), ((0, 1, 0), d / 2, w), ((0, -1, 0), d / 2, w))
    for n, half, width in sides:
        nv = np.array(n, dtype=float)
        right = np.cross(z, nv)
        origin = nv * half + z * h - right * width / 2
        yield ("side_x" if n[0] else "side_y"), nv, origin, right * width, -z * h


def _puddle(rng: np.random.Generator, canvas: Image.Image, footprint: np.ndarray) -> None:
    """A dark, glossy puddle spreading from under the box (wet cue, rare confounder)."""
    c = footprint.mean(0)
    pts = [tuple(c + (p - c) * rng.uniform(1.15, 1.5)) for p in footprint]
    mask = _soft_mask(canvas.size[0], pts, int(rng.uniform(140, 200)), 0.02)
    dark = Image.eval(canvas, lambda v: int(v * 0.45))
    canvas.paste(Image.composite(dark, canvas, mask))


def _shadow(rng: np.random.Generator, canvas: Image.Image, footprint: np.ndarray, big: int) -> None:
    """A soft contact shadow so the box sits on the floor."""
    shift = rng.uniform(-0.04, 0.04, 2) * big
    mask = _soft_mask(big, [tuple(p + shift) for p in footprint], int(rng.uniform(90, 160)), 0.025)
    dark = Image.eval(canvas, lambda v: int(v * 0.5))
    canvas.paste(Image.composite(dark, canvas, mask))


def _soft_mask(size: int, pts: list, value: int, blur: float) -> Image.Image:
    """A blurred polygon mask, drawn and blurred at quarter size (blur dominates the cost)."""
    small = Image.new("L", (size // 4, size // 4), 0)
    ImageDraw.Draw(small).polygon([(x / 4, y / 4) for x, y in pts], fill=value)
    small = small.filter(ImageFilter.GaussianBlur(size * blur / 4))
    return small.resize((size, size), Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------- box faces
def _box_style(rng: np.random.Generator) -> dict:
    """Per-parcel look shared by all faces: cardboard tint, tape, label placement, extras."""
    if rng.random() < 0.1:
        base = np.array([218, 214, 204]) + rng.uniform(-10, 10, 3)          # white box
    else:
        base = np.array([192, 148, 102]) * rng.uniform(0.82, 1.12) + rng.uniform(-12, 12, 3)
    tape = paint.TAPES[int(rng.integers(len(paint.TAPES)))]
    return {"base": tuple(int(c) for c in base.clip(40, 250)), "tape": tape,
            "tape_w": rng.uniform(0.12, 0.2), "label_on_top": rng.random() < 0.7,
            "h_tape": rng.random() < 0.2, "fragile": rng.random() < 0.2}


def _evidence_plan(rng: np.random.Generator, faces: list[Face], evidence: str | None) -> dict[int, list[str]]:
    """Which face gets which evidence painter. The largest face always gets the main mark."""
    if evidence is None:
        return {}
    order = sorted(range(len(faces)), key=lambda i: -faces[i].area)
    top = next(i for i, f in enumerate(faces) if f.kind == "top")
    plan: dict[int, list[str]] = {}
    if evidence == "damaged":
        plan[order[0]] = [str(rng.choice(["dent", "crush", "tear"], p=[0.35, 0.3, 0.35]))]
        if rng.random() < 0.65:
            plan.setdefault(int(rng.choice(order)), []).append(str(rng.choice(["dent", "tear"])))
    elif evidence == "wet":
        plan[order[0]] = ["stain"]
        for i in order[1:]:
            if rng.random() < 0.6:
                plan[i] = ["stain"]
    elif evidence == "temperature_excursion":
        plan[order[0]] = ["frost"]
        for i in order[1:]:
            if rng.random() < 0.7:
                plan[i] = ["frost"]
    elif evidence == "tampered":
        plan[top] = ["tamper"]
    else:
        raise ValueError(f"no image evidence painter for class {evidence!r}")
    return plan


def _face_texture(rng: np.random.Generator, face: Face, style: dict, marks: list[str]) -> Image.Image:
    """Paint one face flat: cardboard, confounders, tape, label, then class evidence."""
    tw, th = face.tex_size
    tex = paint.cardboard(rng, tw, th, style["base"])
    paint.confounders(rng, tex, style["base"])
    if face.kind == "top":
        paint.seam_and_tape(rng, tex, style)
        if style["label_on_top"]:
            paint.shipping_label(rng, tex, lower_half=True)
    elif face.kind == "side_x":
        paint.tape_tab(tex, style)
    elif not style["label_on_top"]:
        paint.shipping_label(rng, tex, lower_half=False)
    if style["fragile"] and face.kind == "side_y":
        paint.fragile_sticker(rng, tex)
    for mark in marks:
        paint.EVIDENCE[mark](rng, tex, style, face.kind)
    arr = np.asarray(tex, dtype=np.float32) * face.shade
    ramp = np.linspace(rng.uniform(0.88, 1.0), rng.uniform(1.0, 1.1), tw, dtype=np.float32)
    return Image.fromarray((arr * ramp[None, :, None]).clip(0, 255).astype(np.uint8))


def _paste_face(canvas: Image.Image, tex: Image.Image, face: Face) -> None:
    """Map the flat texture onto the face's parallelogram (an affine map) and paste it."""
    tw, th = face.tex_size
    m = np.array([[face.e1[0] / tw, face.e2[0] / th], [face.e1[1] / tw, face.e2[1] / th]])
    inv = np.linalg.inv(m)
    c = -inv @ face.origin
    data = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
    x0, y0 = np.floor(np.min(face.polygon(), axis=0)).astype(int)
    x1, y1 = np.ceil(np.max(face.polygon(), axis=0)).astype(int) + 1
    # Warp only the face's bounding box: the full canvas would cost 3-5x more.
    shifted = (data[0], data[1], data[2] + data[0] * x0 + data[1] * y0,
               data[3], data[4], data[5] + data[3] * x0 + data[4] * y0)
    warped = tex.transform((x1 - x0, y1 - y0), Image.Transform.AFFINE, shifted, resample=Image.Resampling.BILINEAR)
    mask = Image.new("L", warped.size, 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in face.polygon()], fill=255)
    canvas.paste(warped, (int(x0), int(y0)), mask)


def _finish(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Camera effects: slight blur, exposure and colour cast, vignette, sensor noise.

    Done in numpy with a shared noise bank (random crop per image): PIL's blur and a
    fresh normal draw per pixel were a third of the whole generator's time.
    """
    arr = np.asarray(img, dtype=np.float32)
    k = np.float32(rng.uniform(0.2, 1.0))                    # blur strength: mix with a [1 2 1] blur
    pad = np.pad(arr, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = pad[:-2] + pad[1:-1] * np.float32(2) + pad[2:]
    blurred = rows[:, :-2] + rows[:, 1:-1] * np.float32(2) + rows[:, 2:]
    arr += (blurred * np.float32(1 / 16) - arr) * k
    if rng.random() < 0.5:
        r2 = (np.linspace(-0.5, 0.5, arr.shape[0], dtype=np.float32) ** 2)
        arr *= (1 - np.float32(rng.uniform(0.2, 0.5)) * (r2[:, None] + r2[None, :]))[..., None]
    bank = _noise_bank(arr.shape[0])
    oy, ox = rng.integers(0, bank.shape[0] - arr.shape[0] + 1, 2)
    arr += bank[oy:oy + arr.shape[0], ox:ox + arr.shape[1]] * np.float32(rng.uniform(1.5, 5.0))
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, 3)      # exposure and colour cast, as a LUT
    lut = np.minimum(255, np.arange(256)[None, :] * gain[:, None]).astype(np.uint8)
    return out.point(lut.ravel().tolist())


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed unit Gaussian noise, twice the image side; deterministic, built once per size."""
    side = 2 * size
    return np.random.default_rng(20260101).standard_normal((side, side, 3), dtype=np.float32)
