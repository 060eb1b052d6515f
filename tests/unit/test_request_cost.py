"""What a request may cost, without a server: an image's decoded cost from its header alone, the
request's budget, the decode check, and the body guard's content-type and chunked-body rules."""
from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmcore.bench.abuse import flat_image
from mmcore.serving.guards import ClientGone, media_type_error, read_body
from mmcore.serving.limits import (MAX_IMAGE_PIXELS, MAX_REQUEST_MEGAPIXELS, ImageCost, OverBudget, check_budget,
                                   decode_check, image_cost)

PNG_COLOUR = {"L": 0, "RGB": 2, "P": 3, "LA": 4, "RGBA": 6}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, colour: int, depth: int = 8) -> bytes:
    """A PNG claiming the size, colour type and bit depth, with an empty pixel stream."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    palette = chunk(b"PLTE", bytes(3)) if colour == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + palette + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@settings(max_examples=200, deadline=None)
@given(side_w=st.integers(1, 20_000), side_h=st.integers(1, 20_000), mode=st.sampled_from(sorted(PNG_COLOUR)),
       sixteen=st.booleans())
def test_header_cost_counts_palette_alpha_and_16_bit_twice(side_w: int, side_h: int, mode: str, sixteen: bool) -> None:
    depth = 16 if sixteen and mode != "P" else 8
    data = png_header(side_w, side_h, PNG_COLOUR[mode], depth)
    twice = mode in ("P", "LA", "RGBA") or depth == 16
    decoded_mp = side_w * side_h * (2 if twice else 1) / 1e6
    if min(side_w, side_h) < 32 or side_w * side_h > MAX_IMAGE_PIXELS or decoded_mp > MAX_IMAGE_PIXELS / 1e6:
        with pytest.raises(ValueError, match=r"image refused \((image_too_small|image_too_large)\)"):
            image_cost(data)
        return
    cost = image_cost(data)   # from the header alone: this PNG has no pixel data at all
    assert cost.megapixels == pytest.approx(decoded_mp) and cost.factor == (2 if twice else 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_cost_or_a_value_error(data: bytes) -> None:
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"):   # any other exception fails the test
        try:
            cost = image_cost(magic + data)
        except ValueError:
            continue
        assert cost.megapixels >= 0 and cost.factor in (1, 2)


def test_the_issue_palette_bomb_is_refused_from_its_header() -> None:
    bomb = flat_image("P", 6300)
    assert len(bomb) < 6000
    with pytest.raises(ValueError, match=r"6300x6300 P is 79.4 decoded megapixels .* limit per image by 39.4"):
        image_cost(bomb)


def test_budget_names_the_limit_and_the_excess() -> None:
    check_budget([ImageCost(4000, 3000, "RGB", 1)] * 4)   # 48 MP: at the budget
    with pytest.raises(OverBudget, match=r"5 images decode to 60.0 megapixels.*by 12.0") as err:
        check_budget([ImageCost(4000, 3000, "RGB", 1)] * 5)
    assert err.value.error_code == 413 and MAX_REQUEST_MEGAPIXELS == 48


def test_decode_check_catches_what_the_header_cannot() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(buf, format="PNG")
    image_cost(buf.getvalue()[:-4000])   # the header is fine ...
    with pytest.raises(ValueError, match="not a decodable JPEG/PNG"):
        decode_check(buf.getvalue()[:-4000])   # ... the pixels are not
    decode_check(buf.getvalue())


@pytest.mark.parametrize("method,path,media_type,refused", [
    ("POST", "/predict", "application/json", None),
    ("POST", "/predict", "", None),                                  # BentoML reads it as JSON
    ("POST", "/predict", "text/plain", "send the body as application/json"),
    ("POST", "/predict", "application/x-www-form-urlencoded", "application/json"),
    ("POST", "/predict", "multipart/form-data", "application/json"),
    ("POST", "/predict_file", "multipart/form-data", None),
    ("POST", "/predict_file", "application/json", "send multipart/form-data"),
    ("POST", "/predict_file", "", "content-type missing"),          # BentoML would download a URL body
    ("GET", "/healthz", "text/plain", None),
])
def test_each_route_takes_its_one_content_type(method: str, path: str, media_type: str, refused: str | None) -> None:
    error = media_type_error(method, path, media_type)
    assert (error is None) if refused is None else (refused in error)


def receiver(chunks: list[bytes], gone: bool = False):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if gone:
        messages[-1] = {"type": "http.disconnect"}

    async def receive() -> dict:
        return messages.pop(0)
    return receive


def test_a_chunked_body_is_counted_against_the_limit() -> None:
    assert asyncio.run(read_body(receiver([b"ab", b"cd", b""]), 4)) == b"abcd"
    assert asyncio.run(read_body(receiver([b"ab", b"cd", b"e"]), 4)) is None
    with pytest.raises(ClientGone):
        asyncio.run(read_body(receiver([b"ab", b"cd"], gone=True), 4))


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), band=st.integers(1, 5000), seed=st.integers(0, 2**16))
def test_banded_compositing_is_pixel_for_pixel_alpha_composite(width: int, height: int, band: int, seed: int) -> None:
    """mmcore.preprocess.on_white composites in bands so other threads run meanwhile; training and serving
    see the same pixels as with one Image.alpha_composite call."""
    from mmcore.preprocess import on_white

    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 4), np.uint8)
    img = Image.fromarray(arr, "RGBA")
    whole = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    assert np.array_equal(np.asarray(on_white(img, band_pixels=band)), np.asarray(whole))


def ngrams_one_at_a_time(note: str, buckets: int) -> np.ndarray:
    """mmcore.preprocess.note_ngrams as it was written first: every gram hashed and added in turn."""
    import unicodedata

    out = np.zeros(buckets, np.float32)
    text = unicodedata.normalize("NFKC", note).lower()
    for gram in [*text, *(text[i:i + 2] for i in range(len(text) - 1))]:
        out[zlib.crc32(gram.encode("utf-8")) % buckets] += 1.0
    return out / np.linalg.norm(out)


@settings(max_examples=200, deadline=None)
@given(note=st.text(min_size=1, max_size=400).filter(str.strip), buckets=st.sampled_from([1, 7, 64, 256]))
def test_counted_ngrams_are_the_ngrams_hashed_one_at_a_time(note: str, buckets: int) -> None:
    """note_ngrams counts grams before hashing them (long notes were the costliest text requests): the
    features, which a trained head reads, stay bit for bit what they were."""
    from mmcore.preprocess import note_ngrams, prepare_note

    prepared = prepare_note(note)
    np.testing.assert_array_equal(note_ngrams(prepared, buckets), ngrams_one_at_a_time(prepared, buckets))
