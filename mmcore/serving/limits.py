"""What one request may hold. The schemas, the body guard and the file route all read these, so a
limit is stated once; a request over one is refused (4xx) before any model work."""
from __future__ import annotations

from dataclasses import dataclass

from mmcore.config import IMAGE_MIN_SIDE

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_SENSOR_ROWS = 5000
MAX_NOTE_CHARS = 10_000
MAX_RECORDS = 256
MAX_BODY_BYTES = 64 * 1024 * 1024  # a request body over this is a 413: send fewer records per request


@dataclass(frozen=True)
class ImageLimits:
    """The fields of IngestConfig that `mmcore.data.checks.check_image` reads: the ingest rules
    (JPEG or PNG, size, pixels, at least `image_min_side` px a side) hold for served images too."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    image_min_side: int = IMAGE_MIN_SIDE   # params `ingest.image_min_side` (the bento has no params.yaml)


def check_image_bytes(data: bytes) -> None:
    """The ingest rules (size, pixels, decompression bombs, full decode), then the serving decode."""
    from mmcore.data.checks import Rejected, check_image
    from mmcore.preprocess import decode_image

    try:
        check_image(data, ImageLimits())  # type: ignore[arg-type]
        decode_image(data)
    except Rejected as exc:
        raise ValueError(f"image refused ({exc.reason.value}): {exc.detail[:200]}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ValueError(f"image is not a decodable JPEG/PNG ({type(exc).__name__})") from None
