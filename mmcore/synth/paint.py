"""Flat-texture painters for one box face: cardboard, tape, labels, confounders, evidence.

Every painter draws in the face's own pixel frame (x right, y down; on side faces y
runs towards the floor) and modifies the texture in place. Sizes are fractions of
the face so the same painter works on any box. `image` maps the result onto
the projected face.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Colour = tuple[int, int, int]
Points = list[tuple[float, float]]

# Main sealing tapes (None = clear tape: the cardboard shows through, a bit glossier).
TAPES: tuple[Colour | None, ...] = ((150, 105, 55), (205, 170, 115), None, None, (232, 232, 225))
# Re-taping after tampering uses whatever tape was at hand: clearly not the original.
RETAPES: tuple[Colour, ...] = ((200, 40, 40), (40, 80, 190), (230, 200, 40), (50, 150, 70), (25, 25, 25))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, size))


def _scale(c: Colour, k: float, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Colour:
    return tuple(int(min(255, max(0, v * k * t))) for v, t in zip(c, tint))  # type: ignore[return-value]


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
         n: int = 20, rough: float = 0.25, jag: float = 0.0) -> Points:
    """Irregular closed outline: smooth low-frequency wobble plus optional jagged teeth."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi / n)
    r = np.ones(n)
    for k in (2, 3, 5):
        r += rough / k * 1.5 * np.sin(k * t + rng.uniform(0, 2 * math.pi))
    if jag:
        r *= 1 + jag * np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.3, 1.0, n)
    r = np.clip(r, 0.25, None)
    rot = rng.uniform(0, 2 * math.pi)
    x, y = r * rx * np.cos(t), r * ry * np.sin(t)
    return [(cx + a * math.cos(rot) - b * math.sin(rot), cy + a * math.sin(rot) + b * math.cos(rot))
            for a, b in zip(x, y)]


def _blend(tex: Image.Image, mask: Image.Image, mult: tuple[float, float, float] | None = None,
           colour: Colour | None = None) -> None:
    """Darken (mult) or paint over (colour) the texture where the mask is, in place."""
    arr = np.asarray(tex, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    if mult is not None:
        out = arr * (1 - m + m * np.array(mult, dtype=np.float32))
    else:
        out = arr * (1 - m) + m * np.array(colour, dtype=np.float32)
    tex.paste(Image.fromarray(out.clip(0, 255).astype(np.uint8)))


def _region(rng: np.random.Generator, tw: int, th: int, frac: tuple[float, float]) -> tuple[float, float, float, float]:
    """Centre and radii of an evidence patch covering `frac` of the face area."""
    area = rng.uniform(*frac) * tw * th
    aspect = rng.uniform(0.6, 1.6)
    r = math.sqrt(area / math.pi)
    rx, ry = min(r * math.sqrt(aspect), 0.48 * tw), min(r / math.sqrt(aspect), 0.48 * th)
    return rng.uniform(rx * 0.7, tw - rx * 0.7), rng.uniform(ry * 0.7, th - ry * 0.7), rx, ry


# --------------------------------------------------------------------------- base layers
def cardboard(rng: np.random.Generator, tw: int, th: int, base: Colour) -> Image.Image:
    """Plain cardboard with faint flute streaks and darker edges."""
    tex = Image.new("RGB", (tw, th), base)
    draw = ImageDraw.Draw(tex)
    for _ in range(int(rng.integers(3, 9))):
        y = rng.uniform(0, th)
        draw.line([(0, y), (tw, y + rng.uniform(-3, 3))], fill=_scale(base, rng.uniform(0.93, 1.05)), width=1)
    draw.rectangle([0, 0, tw - 1, th - 1], outline=_scale(base, 0.7), width=max(1, tw // 90))
    return tex


def confounders(rng: np.random.Generator, tex: Image.Image, base: Colour) -> None:
    """Harmless marks every parcel may carry: scuffs, dots, a small smudge, a ding, a scribble."""
    tw, th = tex.size
    draw = ImageDraw.Draw(tex)
    for _ in range(int(rng.integers(0, 5)) if rng.random() < 0.6 else 0):
        x, y, ln, ang = rng.uniform(0, tw), rng.uniform(0, th), rng.uniform(0.03, 0.08) * tw, rng.uniform(0, math.pi)
        draw.line([(x, y), (x + ln * math.cos(ang), y + ln * math.sin(ang))], fill=_scale(base, 0.72), width=1)
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.4 else 0):
        x, y, r = rng.uniform(0, tw), rng.uniform(0, th), rng.uniform(0.004, 0.012) * tw
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_scale(base, 0.5))
    if rng.random() < 0.15:   # small smudge: a wet-stain look-alike, but tiny and faint
        cx, cy, rx, ry = _region(rng, tw, th, (0.004, 0.02))
        mask = Image.new("L", tex.size, 0)
        ImageDraw.Draw(mask).polygon(blob(rng, cx, cy, rx, ry), fill=90)
        _blend(tex, mask, mult=(0.8, 0.8, 0.8))
    if rng.random() < 0.1:    # small ding: a dent look-alike within tolerance
        cx, cy, rx, ry = _region(rng, tw, th, (0.003, 0.012))
        ImageDraw.Draw(tex).polygon(blob(rng, cx, cy, rx, ry, rough=0.4), fill=_scale(base, 0.85))
    if rng.random() < 0.3:    # marker scribble (hub sorter codes)
        x, y = rng.uniform(0.1, 0.7) * tw, rng.uniform(0.1, 0.8) * th
        pts = [(x + i * 0.025 * tw, y + rng.uniform(-0.03, 0.03) * th) for i in range(int(rng.integers(3, 7)))]
        draw.line(pts, fill=(30, 30, 35), width=max(1, tw // 120))


def _tape_rect(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], tape: Colour | None,
               base: Colour, horizontal: bool = True) -> None:
    """A tape strip with slightly darker edges; clear tape is a glossy band of the base colour."""
    fill = tape if tape is not None else _scale(base, 1.12)
    draw.rectangle(box, fill=fill)
    x0, y0, x1, y1 = box
    edge = _scale(fill, 0.82)
    if horizontal:
        draw.line([(x0, y0), (x1, y0)], fill=edge, width=1)
        draw.line([(x0, y1), (x1, y1)], fill=edge, width=1)
        if tape is None:
            draw.line([(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)], fill=_scale(base, 1.25), width=1)
    else:
        draw.line([(x0, y0), (x0, y1)], fill=edge, width=1)
        draw.line([(x1, y0), (x1, y1)], fill=edge, width=1)


def seam_and_tape(rng: np.random.Generator, tex: Image.Image, style: dict) -> None:
    """Flap seam along the top with its sealing tape (the tamper painter cuts it later)."""
    tw, th = tex.size
    draw = ImageDraw.Draw(tex)
    base, tape = style["base"], style["tape"]
    draw.line([(0, th / 2), (tw, th / 2)], fill=_scale(base, 0.45), width=max(1, th // 80))
    half = style["tape_w"] * th / 2
    _tape_rect(draw, (0, th / 2 - half, tw, th / 2 + half), tape, base)
    if style["h_tape"]:   # H-taping: same tape across both short edges, a re-tape look-alike
        wid = half * 1.6
        for x0 in (0.02 * tw, 0.98 * tw - wid):
            _tape_rect(draw, (x0, 0, x0 + wid, th), tape, base, horizontal=False)


def tape_tab(tex: Image.Image, style: dict) -> None:
    """The end of the top tape folding over onto a side face."""
    tw, th = tex.size
    half = style["tape_w"] * tw / 2
    _tape_rect(ImageDraw.Draw(tex), (tw / 2 - half, 0, tw / 2 + half, 0.2 * th), style["tape"], style["base"],
               horizontal=False)


def shipping_label(rng: np.random.Generator, tex: Image.Image, lower_half: bool) -> None:
    """White label with barcode bars and a few text lines."""
    tw, th = tex.size
    lw = rng.uniform(0.3, 0.45) * tw
    lh = min(lw * rng.uniform(0.55, 0.75), 0.4 * th)
    y_lo = th * 0.62 if lower_half else th * 0.1
    x0 = rng.uniform(0.05 * tw, 0.95 * tw - lw)
    y0 = rng.uniform(y_lo, max(y_lo, 0.96 * th - lh))
    draw = ImageDraw.Draw(tex)
    draw.rectangle([x0, y0, x0 + lw, y0 + lh], fill=(246, 246, 242), outline=(170, 170, 165))
    bx, by, bh = x0 + 0.08 * lw, y0 + 0.52 * lh, 0.36 * lh
    x_end = x0 + 0.92 * lw
    while bx < x_end:
        bar = max(1.0, rng.uniform(0.006, 0.02) * lw)
        draw.rectangle([bx, by, bx + max(0.0, bar - 1), by + bh], fill=(15, 15, 15))
        bx += bar + max(1.0, rng.uniform(0.006, 0.02) * lw)
    font = _font(int(lh * 0.13))
    for i in range(3):
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789 "), int(rng.integers(6, 14))))
        draw.text((x0 + 0.08 * lw, y0 + (0.06 + 0.14 * i) * lh), text, fill=(35, 35, 35), font=font)


def fragile_sticker(rng: np.random.Generator, tex: Image.Image) -> None:
    """Red FRAGILE sticker: a bright, colourful patch on normal parcels too."""
    tw, th = tex.size
    sw, sh = 0.28 * tw, 0.12 * tw
    x0, y0 = rng.uniform(0.05, 0.95) * (tw - sw), rng.uniform(0.3, 0.9) * max(1.0, th - sh)
    draw = ImageDraw.Draw(tex)
    draw.rectangle([x0, y0, x0 + sw, y0 + sh], fill=(205, 35, 35))
    draw.text((x0 + 0.08 * sw, y0 + 0.2 * sh), "FRAGILE", fill=(250, 250, 250), font=_font(int(sh * 0.55)))


# --------------------------------------------------------------------------- evidence
def dent(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Crumpled, darker caved-in region with radial creases (dark fold plus lit ridge)."""
    tw, th = tex.size
    base = style["base"]
    cx, cy, rx, ry = _region(rng, tw, th, (0.12, 0.28))
    outline = blob(rng, cx, cy, rx, ry, n=16, rough=0.35, jag=0.12)
    mask = Image.new("L", tex.size, 0)
    md = ImageDraw.Draw(mask)
    md.polygon(outline, fill=255)
    _blend(tex, mask, mult=(0.62, 0.6, 0.58))
    ang = rng.uniform(0, 2 * math.pi)        # the half turned away from the light is darker still
    half = [p for p in outline if (p[0] - cx) * math.cos(ang) + (p[1] - cy) * math.sin(ang) > 0]
    if len(half) >= 3:
        shadow = Image.new("L", tex.size, 0)
        ImageDraw.Draw(shadow).polygon([(cx, cy), *half], fill=150)
        _blend(tex, shadow, mult=(0.7, 0.7, 0.7))
    _creases(rng, tex, base, (cx, cy), outline)


def _creases(rng: np.random.Generator, tex: Image.Image, base: Colour, centre: tuple[float, float],
             outline: Points) -> None:
    draw = ImageDraw.Draw(tex)
    w = max(2, tex.size[0] // 70)
    picks = rng.choice(len(outline), size=min(len(outline), int(rng.integers(5, 10))), replace=False)
    for i in picks:
        ex, ey = outline[int(i)]
        cx, cy = centre
        sx, sy = cx + rng.uniform(-0.2, 0.2) * (ex - cx), cy + rng.uniform(-0.2, 0.2) * (ey - cy)
        mx = (sx + ex) / 2 + rng.uniform(-0.1, 0.1) * (ey - sy)
        my = (sy + ey) / 2 + rng.uniform(-0.1, 0.1) * (ex - sx)
        fold = [(sx, sy), (mx, my), (ex * 0.95 + sx * 0.05, ey * 0.95 + sy * 0.05)]
        draw.line(fold, fill=_scale(base, 0.35), width=w)                                   # dark fold
        draw.line([(x + w, y + w) for x, y in fold], fill=_scale(base, 1.3), width=max(1, w // 2))  # lit ridge


def crush(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Crushed corner: a wedge at one corner caved in, with folds parallel to its edge."""
    tw, th = tex.size
    base = style["base"]
    corner = (float(rng.choice([0, tw])), float(rng.choice([0, th])))
    dx, dy = rng.uniform(0.35, 0.6) * tw, rng.uniform(0.35, 0.6) * th
    sx, sy = (1 if corner[0] == 0 else -1), (1 if corner[1] == 0 else -1)

    def arc(k: float) -> Points:
        pts = []
        for t in np.linspace(0, 1, 9):
            wob = 1 + rng.uniform(-0.12, 0.12)
            pts.append((corner[0] + sx * dx * k * (1 - t) * wob, corner[1] + sy * dy * k * t * wob))
        return pts

    edge = arc(1.0)
    mask = Image.new("L", tex.size, 0)
    ImageDraw.Draw(mask).polygon([corner, *edge], fill=255)
    _blend(tex, mask, mult=(0.55, 0.53, 0.5))
    draw = ImageDraw.Draw(tex)
    w = max(2, tw // 60)
    for k in (0.3, 0.55, 0.8, 1.0):
        line = arc(k)
        draw.line(line, fill=_scale(base, 0.3), width=w)
        draw.line([(x + w, y + w) for x, y in line], fill=_scale(base, 1.3), width=max(1, w // 2))


def tear(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Jagged hole or rip: dark interior, pale torn-fibre rim, a hanging flap, maybe contents."""
    tw, th = tex.size
    base = style["base"]
    cx, cy, rx, ry = _region(rng, tw, th, (0.07, 0.16))
    if rng.random() < 0.5:   # a rip is long and thin
        rx, ry = (min(rx * 1.8, 0.48 * tw), ry * 0.45) if rng.random() < 0.5 else (rx * 0.45, min(ry * 1.8, 0.48 * th))
    draw = ImageDraw.Draw(tex)
    hole = blob(rng, cx, cy, rx, ry, n=26, rough=0.25, jag=0.3)
    rim = [(cx + (x - cx) * 1.18, cy + (y - cy) * 1.18) for x, y in hole]
    draw.polygon(rim, fill=(228, 212, 182))
    draw.polygon(hole, fill=(38, 30, 24))
    if rng.random() < 0.5:   # bubble wrap or product visible inside
        inner = blob(rng, cx + rx * 0.2, cy + ry * 0.2, rx * 0.45, ry * 0.45, n=12)
        draw.polygon(inner, fill=tuple(int(v) for v in rng.choice([[150, 160, 178], [200, 200, 205], [90, 120, 160]])))
    i = int(rng.integers(len(hole)))
    a, b = hole[i], hole[(i + 3) % len(hole)]
    tip = (a[0] + (a[0] - cx) * 0.9 + rng.uniform(-0.1, 0.1) * tw, a[1] + (a[1] - cy) * 0.9 + 0.1 * th)
    draw.polygon([a, b, tip], fill=_scale(base, 0.8), outline=_scale(base, 0.4))


def stain(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Water stains: large soft darker blotches with tide-line rims and drips running down."""
    tw, th = tex.size
    mask = Image.new("L", tex.size, 0)
    md = ImageDraw.Draw(mask)
    rims = []
    for _ in range(int(rng.integers(1, 3))):
        if kind == "top":
            cx, cy, rx, ry = _region(rng, tw, th, (0.12, 0.3))
        else:   # water rises from the floor on side faces
            rx, ry = rng.uniform(0.25, 0.48) * tw, rng.uniform(0.3, 0.6) * th
            cx, cy = rng.uniform(0.3, 0.7) * tw, th * rng.uniform(0.8, 1.05)
        outline = blob(rng, cx, cy, rx, ry, n=22, rough=0.3)
        md.polygon(outline, fill=int(rng.uniform(190, 235)))
        rims.append(outline)
        for _ in range(int(rng.integers(0, 4))):   # drips
            x, y = cx + rng.uniform(-0.6, 0.6) * rx, cy + rng.uniform(0.0, 0.6) * ry
            ln, w = rng.uniform(0.1, 0.3) * th, rng.uniform(0.012, 0.025) * tw
            md.line([(x, y), (x + rng.uniform(-2, 2), y + ln)], fill=220, width=max(2, int(w)))
            md.ellipse([x - w, y + ln - w, x + w, y + ln + w * 1.4], fill=235)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, tw / 70)))
    md = ImageDraw.Draw(mask)
    for outline in rims:
        md.line([*outline, outline[0]], fill=255, width=max(2, tw // 60))
        c = np.mean(outline, axis=0)
        inner = [(c[0] + (x - c[0]) * 0.82, c[1] + (y - c[1]) * 0.82) for x, y in outline]
        md.line([*inner, inner[0]], fill=245, width=max(1, tw // 120))
    k = rng.uniform(0.45, 0.6)
    _blend(tex, mask, mult=(k, k * 0.9, k * 0.8))


def frost(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Frost and condensation of a cold-chain parcel: pale hazy patches, ice specks, droplets."""
    tw, th = tex.size
    mask = Image.new("L", tex.size, 0)
    md = ImageDraw.Draw(mask)
    patches = []
    for _ in range(int(rng.integers(2, 4))):
        cx, cy, rx, ry = _region(rng, tw, th, (0.08, 0.18))
        md.polygon(blob(rng, cx, cy, rx, ry, n=18, rough=0.35), fill=int(rng.uniform(150, 210)))
        patches.append((cx, cy, rx, ry))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, tw / 45)))
    _blend(tex, mask, colour=(232, 238, 248))
    draw = ImageDraw.Draw(tex)
    for cx, cy, rx, ry in patches:
        for _ in range(int(rng.integers(15, 35))):   # ice specks
            x, y, r = cx + rng.normal(0, rx / 2), cy + rng.normal(0, ry / 2), rng.uniform(0.004, 0.012) * tw
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(252, 253, 255))
    for _ in range(int(rng.integers(10, 25))):       # condensation droplets
        x, y, r = rng.uniform(0, tw), rng.uniform(0, th), rng.uniform(0.008, 0.02) * tw
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_scale(style["base"], 0.78), outline=_scale(style["base"], 0.5))
        draw.ellipse([x - r * 0.5, y - r * 0.6, x - r * 0.1, y - r * 0.2], fill=(250, 250, 250))


def tamper(rng: np.random.Generator, tex: Image.Image, style: dict, kind: str) -> None:
    """Cut seal: the tape split with a gap over an open seam, curled ends, a foreign re-tape strip."""
    tw, th = tex.size
    base, tape = style["base"], style["tape"]
    half = style["tape_w"] * th / 2
    draw = ImageDraw.Draw(tex)
    g0 = rng.uniform(0.25, 0.55) * tw
    g1 = g0 + rng.uniform(0.14, 0.26) * tw
    draw.rectangle([g0, th / 2 - half - 1, g1, th / 2 + half + 1], fill=base)          # tape removed
    gap = max(2.0, th * rng.uniform(0.03, 0.06))                                       # flaps pulled open
    draw.rectangle([g0, th / 2 - gap, g1, th / 2 + gap], fill=(30, 24, 20))
    for x_end, sign in ((g0, 1), (g1, -1)):                                            # curled cut ends
        lift = rng.uniform(0.04, 0.08) * tw * sign
        curl = [(x_end, th / 2 - half), (x_end + lift, th / 2 - half * 1.3), (x_end + lift * 1.2, th / 2 + half * 1.2),
                (x_end, th / 2 + half)]
        draw.polygon(curl, fill=_scale(tape if tape else base, 1.2), outline=(40, 35, 30))
    choices = [c for c in RETAPES if tape is None or sum(abs(a - b) for a, b in zip(c, tape)) > 120]
    retape = choices[int(rng.integers(len(choices)))]
    w = rng.uniform(0.12, 0.2) * tw
    xc, tilt = (g0 + g1) / 2 + rng.uniform(-0.05, 0.05) * tw, rng.uniform(-0.25, 0.25) * tw
    strip = [(xc - w / 2 - tilt / 2, 0), (xc + w / 2 - tilt / 2, 0),
             (xc + w / 2 + tilt / 2, th), (xc - w / 2 + tilt / 2, th)]
    draw.polygon(strip, fill=retape, outline=_scale(retape, 0.6))
    if rng.random() < 0.5:
        draw.text((xc - w * 0.35, th * 0.25), "VOID", fill=_scale(retape, 0.45), font=_font(int(w * 0.3)))


EVIDENCE: dict[str, Callable[[np.random.Generator, Image.Image, dict, str], None]] = {
    "dent": dent, "crush": crush, "tear": tear, "stain": stain, "frost": frost, "tamper": tamper,
}
