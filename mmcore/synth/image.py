"""Rendered parcel photos for the synthetic generator (PIL + numpy only).

A photo has two sources of variation, kept apart so that one parcel photographed
at several hubs looks alike but not identical:

* the **parcel** (`make_parcel`, from the shipment's seed): box shape, cardboard,
  tape, label, stickers, scuffs, and its damage marks painted at fixed places on
  fixed faces, so a dent seen at one hub is the same dent at the next;
* the **capture** (`render_parcel`, from the record's seed): floor or conveyor,
  camera yaw, elevation and roll, framing, light, contact shadow, camera noise.

Each of the five faces a camera above the floor can see is painted flat in its own
frame (from its own child seed, at a size fixed by the parcel, not by the photo)
and mapped onto its projected parallelogram. Painting in face coordinates keeps the
painters simple and makes the marks follow the box's perspective for free.

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

from mmcore.synth import paint

SUPERSAMPLE = 1  # >1 renders larger and downsamples (anti-aliasing) at a quadratic cost in time
# Face textures are painted at this many px per box unit per px of image side (about the
# projected scale): fixed per parcel, so the same marks land in the same places in every photo.
PAINT_SCALE = 0.4
P_MAIN_ON_TOP = 0.9    # the main mark sits on the lid (the lid was the largest visible face 91 % of the time)
MIN_FACING = 0.5       # a photo that shows a side's main mark faces that side within about 60 degrees
FACES = ("top", "side_x", "side_x", "side_y", "side_y")   # painter kind of the faces +z, +x, -x, +y, -y


@dataclass(frozen=True)
class Parcel:
    """One physical parcel: what every photo of it shares (the record's capture varies the rest)."""

    seed: tuple[int, ...]               # entropy of its faces' painters
    dims: tuple[float, float, float]    # width, depth, height in box units
    style: dict
    evidence: str | None                # the class its marks show; None: a normal parcel, no marks
    marks: dict[int, list[str]]         # face index (FACES) -> evidence painters
    main_face: int                      # the face of the main mark: a photo showing the class shows this face

    def face_rng(self, face: int, stream: int) -> np.random.Generator:
        """Stream 0 paints the face, stream 1 its marks: a face looks the same with or without them."""
        return np.random.default_rng(np.random.SeedSequence(list(self.seed), spawn_key=(face, stream)))


@dataclass(frozen=True)
class Face:
    """One visible box face: where its texture lands on the canvas and how it is lit."""

    index: int                # which physical face (FACES)
    origin: np.ndarray        # canvas point of texture (0, 0)
    e1: np.ndarray            # canvas vector of the texture's full width
    e2: np.ndarray            # canvas vector of the texture's full height
    tex_size: tuple[int, int]
    shade: float
    area: float               # projected area in canvas px^2

    @property
    def kind(self) -> str:
        return FACES[self.index]

    def polygon(self) -> list[tuple[float, float]]:
        o, a, b = self.origin, self.e1, self.e2
        return [tuple(p) for p in (o, o + a, o + a + b, o + b)]


def make_parcel(seed: np.random.SeedSequence, evidence: str | None) -> Parcel:
    """The parcel of one shipment. Its look does not depend on `evidence` (its class once the
    damage has happened), so the photos before and after the onset show the same box."""
    rng = np.random.default_rng(seed)
    dims = (rng.uniform(1.0, 1.6), rng.uniform(0.65, 1.1), rng.uniform(0.45, 1.0))
    style = _box_style(rng)
    marks, main = _evidence_plan(rng, dims, evidence)
    return Parcel(tuple(int(v) for v in seed.generate_state(4)), dims, style, evidence, marks, main)


def render_parcel(rng: np.random.Generator, size: int, evidence: str | None,
                  parcel: Parcel | None = None) -> Image.Image:
    """A photo of `parcel` (a new one drawn from `rng` if None) taken with `rng`'s capture.

    `evidence` is the non-normal class whose marks the photo must show, or None: no marks,
    as before the onset or when the photo shows nothing of the damage.
    """
    if parcel is None:
        parcel = make_parcel(np.random.SeedSequence(int(rng.integers(2**63))), evidence)
    if evidence is not None and evidence != parcel.evidence:
        raise ValueError(f"a {parcel.evidence or 'normal'} parcel cannot show {evidence!r} marks")
    big = size * SUPERSAMPLE
    canvas = _background(rng, big)
    faces, footprint = _box_geometry(rng, big, parcel.dims, parcel.main_face if evidence else None)
    if evidence == "wet" and rng.random() < 0.4 or evidence != "wet" and rng.random() < 0.03:
        _puddle(rng, canvas, footprint)
    _shadow(rng, canvas, footprint, big)
    for face in faces:
        tex = _face_texture(parcel, face, parcel.marks.get(face.index, []) if evidence else [])
        _paste_face(canvas, _light(rng, tex, face.shade), face)
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


def _pose(rng: np.random.Generator, facing: int | None) -> tuple[float, float, float]:
    """Camera yaw, elevation and roll (radians). A photo that must show a side face's mark
    turns that side towards the camera, as the lid is always in view."""
    yaw = rng.uniform(0, 2 * math.pi)
    if facing:
        nx, ny = SIDE_NORMALS[facing]
        while -(math.sin(yaw) * nx + math.cos(yaw) * ny) < MIN_FACING:
            yaw = rng.uniform(0, 2 * math.pi)
    return yaw, math.radians(rng.uniform(32, 68)), math.radians(rng.uniform(-25, 25))


def _box_geometry(rng: np.random.Generator, big: int, dims: tuple[float, float, float],
                  facing: int | None) -> tuple[list[Face], np.ndarray]:
    """Project the box in a random pose; returns its visible faces and its floor footprint (canvas px)."""
    w, d, h = dims
    yaw, elev, roll = _pose(rng, facing)
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

    toward_cam, px_per_unit = np.array([0.0, -ce, se]), PAINT_SCALE * big
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), 1.3])
    light /= np.linalg.norm(light)
    faces = []
    for index, (n, origin, e1, e2) in enumerate(_face_frames(w, d, h)):
        n_rot = rot @ n
        if n_rot @ toward_cam <= 0.06:
            continue
        o = to_canvas(origin)
        a, b = to_canvas(origin + e1) - o, to_canvas(origin + e2) - o
        tex = (max(24, int(np.linalg.norm(e1) * px_per_unit)), max(24, int(np.linalg.norm(e2) * px_per_unit)))
        shade = float(np.clip(0.5 + 0.55 * max(0.0, n_rot @ light), 0.45, 1.08))
        faces.append(Face(index, o, a, b, tex, shade, abs(a[0] * b[1] - a[1] * b[0])))
    footprint = to_canvas(np.array([[-w / 2, -d / 2, 0], [w / 2, -d / 2, 0], [w / 2, d / 2, 0], [-w / 2, d / 2, 0]]))
    return faces, footprint


SIDE_NORMALS = {1: (1.0, 0.0), 2: (-1.0, 0.0), 3: (0.0, 1.0), 4: (0.0, -1.0)}   # FACES index -> (x, y)


def _face_frames(w: float, d: float, h: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(normal, origin, e1, e2) of the five faces that can face a camera above the floor, in FACES order.

    Texture x runs to the viewer's right and texture y runs down (towards the floor on
    sides), so labels are never mirrored and drips on side faces run downwards.
    """
    z = np.array([0.0, 0.0, 1.0])
    yield z, np.array([-w / 2, d / 2, h]), np.array([w, 0.0, 0.0]), np.array([0.0, -d, 0.0])
    for index, (nx, ny) in SIDE_NORMALS.items():
        nv = np.array([nx, ny, 0.0])
        half, width = (w / 2, d) if nx else (d / 2, w)
        right = np.cross(z, nv)
        origin = nv * half + z * h - right * width / 2
        yield nv, origin, right * width, -z * h


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


# --------------------------------------------------------------------------- the parcel
def _box_style(rng: np.random.Generator) -> dict:
    """Per-parcel look shared by all faces: cardboard tint, tape, label placement, extras."""
    if rng.random() < 0.1:
        base = np.array([218, 214, 204]) + rng.uniform(-10, 10, 3)          # white box
    else:
        base = np.array([192, 148, 102]) * rng.uniform(0.82, 1.12) + rng.uniform(-12, 12, 3)
    tape = paint.TAPES[int(rng.integers(len(paint.TAPES)))]
    label_face = 0 if rng.random() < 0.7 else int(rng.choice([3, 4]))    # the lid or one broad side
    return {"base": tuple(int(c) for c in base.clip(40, 250)), "tape": tape,
            "tape_w": rng.uniform(0.12, 0.2), "label_face": label_face,
            "h_tape": rng.random() < 0.2, "fragile": rng.random() < 0.2}


def _evidence_plan(rng: np.random.Generator, dims: tuple[float, float, float],
                   evidence: str | None) -> tuple[dict[int, list[str]], int]:
    """Which face gets which evidence painter, and the main mark's face: mostly the lid, else a
    side (broad sides more often), as when the largest face in view got it."""
    if evidence is None:
        return {}, 0
    w, d, h = dims
    main = 0
    if evidence != "tampered" and rng.random() >= P_MAIN_ON_TOP:
        areas = np.array([d * h, d * h, w * h, w * h])
        main = 1 + int(rng.choice(4, p=areas / areas.sum()))
    others = [i for i in range(len(FACES)) if i != main]
    plan: dict[int, list[str]] = {}
    if evidence == "damaged":
        plan[main] = [str(rng.choice(["dent", "crush", "tear"], p=[0.35, 0.3, 0.35]))]
        if rng.random() < 0.65:
            plan.setdefault(int(rng.integers(len(FACES))), []).append(str(rng.choice(["dent", "tear"])))
    elif evidence in ("wet", "temperature_excursion"):
        mark, p_other = ("stain", 0.6) if evidence == "wet" else ("frost", 0.7)
        plan[main] = [mark]
        plan.update({i: [mark] for i in others if rng.random() < p_other})
    elif evidence == "tampered":
        plan[0] = ["tamper"]
    else:
        raise ValueError(f"no image evidence painter for class {evidence!r}")
    return plan, main


def _face_texture(parcel: Parcel, face: Face, marks: list[str]) -> Image.Image:
    """Paint one face flat from the parcel's seeds: cardboard, confounders, tape, label, then marks."""
    tw, th = face.tex_size
    rng, style, kind = parcel.face_rng(face.index, 0), parcel.style, face.kind
    tex = paint.cardboard(rng, tw, th, style["base"])
    paint.confounders(rng, tex, style["base"])
    if kind == "top":
        paint.seam_and_tape(rng, tex, style)
    elif kind == "side_x":
        paint.tape_tab(tex, style)
    if face.index == style["label_face"]:
        paint.shipping_label(rng, tex, lower_half=kind == "top")
    if style["fragile"] and kind == "side_y":
        paint.fragile_sticker(rng, tex)
    mark_rng = parcel.face_rng(face.index, 1)
    for mark in marks:
        paint.EVIDENCE[mark](mark_rng, tex, style, kind)
    return tex


def _light(rng: np.random.Generator, tex: Image.Image, shade: float) -> Image.Image:
    """This capture's light on a face: its shade and a soft left-to-right ramp."""
    arr = np.asarray(tex, dtype=np.float32) * shade
    ramp = np.linspace(rng.uniform(0.88, 1.0), rng.uniform(1.0, 1.1), tex.size[0], dtype=np.float32)
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
