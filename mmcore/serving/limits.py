"""What one request may hold and cost. The schemas, the body guard and the file route all read these,
so a limit is stated once; a request over one is refused (4xx) before any model work.

An image is checked in two steps: its header while the request is parsed (format, size and mode, no
pixel decoded: `image_cost`), then, once every image of the request is known to fit the budget, a full
decode (`decode_check`). The service runs both in a worker thread, never on the event loop
(mmcore/serving/schemas.py `PredictInput`, service.py `predict_file`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from http import HTTPStatus

from bentoml.exceptions import BentoMLException

from mmcore.config import IMAGE_MIN_SIDE

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000   # per image, counted as decoded (`image_cost`); ingest counts raw pixels
MAX_SENSOR_ROWS = 5000
MAX_NOTE_CHARS = 10_000
# Records per request: model work grows with records, not bytes. At 256, a request of 233 kB (256 32-px
# JPEGs with a note) took 2.6-4.7 s and one of 99 notes of 10,000 characters 2.0-4.9 s on the bench
# machine (`python -m mmcore.bench serve --parts abuse`); at 64, 0.5 s and 0.8-0.9 s (2026-12-07).
MAX_RECORDS = 64
MAX_BODY_BYTES = 64 * 1024 * 1024  # a request body over this is a 413: send fewer records per request
# Decoded megapixels one request may cost, all its images together (`image_cost`): the work of a
# request grows with the pixels it decodes, not with its bytes (a 5 kB palette PNG decodes 40 MP).
# At 48 the costliest legal request (two RGB PNGs filling it) took 1.2 s, at 32 0.8 s, on the bench
# machine at a load of 3.5 on 2 CPUs (`python -m mmcore.bench serve --parts abuse`, 2026-12-07); 32 would
# refuse a single image at the per-image limit. A bad value stops the service's start.
MAX_REQUEST_MEGAPIXELS = float(os.environ.get("PARCEL_MAX_REQUEST_MEGAPIXELS", "48"))
# Modes that mmcore.preprocess.decode_image takes through a second full-size image: palette and alpha
# (to RGBA, then an alpha composite) and 16-bit (float32, rescaled). They count twice: measured 15-38 ms
# a megapixel for those against 7-25 for JPEG, greyscale and RGB PNG (2,000 px a side, bench machine).
DOUBLE_COST_MODES = frozenset({"P", "PA", "RGBA", "LA", "La", "RGBa", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class ImageLimits:
    """The fields of IngestConfig that `mmcore.data.checks.check_image` reads: the ingest rules
    (JPEG or PNG, size, pixels, at least `image_min_side` px a side) hold for served images too."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    image_min_side: int = IMAGE_MIN_SIDE   # params `ingest.image_min_side` (the bento has no params.yaml)


@dataclass(frozen=True)
class ImageCost:
    """What decoding one image costs, from its header: pixels times 2 for the DOUBLE_COST_MODES."""

    width: int
    height: int
    mode: str
    factor: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height * self.factor / 1e6

    def describe(self) -> str:
        why = f" ({self.mode} counts {self.factor}x: palette, alpha and 16-bit decode through a second image)"
        return f"{self.width}x{self.height} {self.mode} is {self.megapixels:.1f} decoded megapixels" + \
            (why if self.factor > 1 else "")


class OverBudget(BentoMLException):
    """A request whose images together decode more than MAX_REQUEST_MEGAPIXELS: a 413."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def image_cost(data: bytes) -> ImageCost:
    """The ingest rules the header answers (mmcore.data.checks.open_image), then the per-image limit
    counted as decoded. Nothing is decoded; a ValueError names the rule."""
    from mmcore.data.checks import Rejected, open_image

    try:
        img = open_image(data, ImageLimits())  # type: ignore[arg-type]
    except Rejected as exc:
        raise ValueError(f"image refused ({exc.reason.value}): {exc.detail[:200]}") from None
    sixteen_bit = any(";16" in str(tile.args) for tile in getattr(img, "tile", []) or [])
    cost = ImageCost(img.width, img.height, img.mode, 2 if img.mode in DOUBLE_COST_MODES or sixteen_bit else 1)
    limit = MAX_IMAGE_PIXELS / 1e6
    if cost.megapixels > limit:
        raise ValueError(f"image refused (image_too_large): {cost.describe()}, over the {limit:g}-megapixel "
                         f"limit per image by {cost.megapixels - limit:.1f}")
    return cost


def check_budget(costs: list[ImageCost]) -> None:
    """The request's images together within MAX_REQUEST_MEGAPIXELS, else OverBudget (413) saying by how much."""
    total = sum(c.megapixels for c in costs)
    if total > MAX_REQUEST_MEGAPIXELS:
        raise OverBudget(f"images: {len(costs)} images decode to {total:.1f} megapixels (palette, alpha and 16-bit "
                         f"count twice), over the {MAX_REQUEST_MEGAPIXELS:g}-megapixel budget per request "
                         f"(PARCEL_MAX_REQUEST_MEGAPIXELS) by {total - MAX_REQUEST_MEGAPIXELS:.1f}: "
                         "send fewer or smaller images per request")


def decode_check(data: bytes) -> None:
    """Every pixel of an image whose header passed decoded, in its own mode, and its EXIF read: truncated
    or corrupt data is a ValueError here, a 400 for its own request, never a failed batch. The model's
    conversion to RGB (mmcore.preprocess.decode_image) runs once, in the predictor: it cannot fail on
    decoded pixels, and for palette images it is most of the cost (20 MP: 18 ms to load, 338 ms to RGB)."""
    import io

    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img.getexif()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ValueError(f"image is not a decodable JPEG/PNG ({type(exc).__name__})") from None


def check_image_bytes(data: bytes) -> ImageCost:
    """One image as its own request (/predict_file): header, budget, then the full decode."""
    cost = image_cost(data)
    check_budget([cost])
    decode_check(data)
    return cost
