"""A request's cost is bounded by its size (issue 25): images over the per-image or per-request decoded
budget are refused from their headers with a 4xx naming the limit and the excess, on /predict and
/predict_file; a chunked body counts against the body limit; a JSON body must say it is JSON; and
/healthz answers while a request's images are checked and decoded (in a worker thread, not on the
event loop)."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from mmcore.bench.abuse import flat_image, images_body, side_for
from mmcore.serving.limits import MAX_BODY_BYTES, MAX_IMAGE_PIXELS, MAX_REQUEST_MEGAPIXELS
from tests.serve.conftest import AUTH

pytestmark = pytest.mark.slow
JSON = {"content-type": "application/json", **AUTH}
IMAGE_MP = MAX_IMAGE_PIXELS / 1e6


def test_palette_bomb_is_refused_from_its_header_naming_the_limit(server: str) -> None:
    # the request: 16 copies of a 4.9 kB palette PNG of 6300x6300 px
    resp = httpx.post(f"{server}/predict", content=images_body(flat_image("P", 6300), 16), headers=JSON, timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    detail = resp.json()["detail"]
    assert len(detail) == 16 and detail[0]["loc"] == ["records", 0, "image"]
    assert "79.4 decoded megapixels" in detail[0]["msg"] and "40-megapixel limit per image by 39.4" in detail[0]["msg"]


def test_images_over_the_request_budget_get_a_413_saying_by_how_much(server: str) -> None:
    side = side_for(IMAGE_MP, 1, 2)          # each palette image at the per-image limit: two are over budget
    resp = httpx.post(f"{server}/predict", content=images_body(flat_image("P", side), 2), headers=JSON, timeout=60)
    assert resp.status_code == 413, resp.text[:300]
    over = 2 * side * side * 2 / 1e6 - MAX_REQUEST_MEGAPIXELS
    assert "PARCEL_MAX_REQUEST_MEGAPIXELS" in resp.text and f"by {over:.1f}" in resp.text


def test_predict_file_counts_a_palette_image_at_its_decoded_size(server: str) -> None:
    side = side_for(IMAGE_MP, 1, 1)          # within the limit in pixels, twice over it decoded
    resp = httpx.post(f"{server}/predict_file", files={"image": ("p.png", flat_image("P", side), "image/png")}, headers=AUTH,
                      timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert "40-megapixel limit per image" in resp.text and "P counts 2x" in resp.text


def test_a_chunked_body_over_the_limit_gets_a_413(server: str) -> None:
    chunk = b" " * (1024 * 1024)

    def chunks():   # no content-length: httpx sends it chunked
        for _ in range(MAX_BODY_BYTES // len(chunk)):
            yield chunk
        yield b"x"

    resp = httpx.post(f"{server}/predict", content=chunks(), headers=JSON, timeout=120)
    assert resp.status_code == 413 and f"over {MAX_BODY_BYTES} bytes" in resp.text

    def small():
        yield b'{"records": [{"note": '
        yield b'"box dented"}]}'

    ok = httpx.post(f"{server}/predict", content=small(), headers=JSON, timeout=120)
    assert ok.status_code == 200, ok.text[:300]   # a chunked body within the limit is served


def test_a_json_body_must_be_sent_as_json(server: str) -> None:
    body = json.dumps({"records": [{"note": "box dented"}]})
    resp = httpx.post(f"{server}/predict", content=body, headers={"content-type": "text/plain", **AUTH}, timeout=60)
    assert resp.status_code == 415 and "application/json" in resp.text
    on_file_route = httpx.post(f"{server}/predict_file", content=json.dumps({"image": "http://127.0.0.1/x.png"}),
                               headers=JSON, timeout=60)
    assert on_file_route.status_code == 415 and "multipart/form-data" in on_file_route.text
    as_text_field = httpx.post(f"{server}/predict_file", data={"image": "http://127.0.0.1/x.png"},
                               files={"note": (None, "wet")}, headers=AUTH, timeout=60)
    assert as_text_field.status_code == 400 and "image must be a file part" in as_text_field.text


def truncated_png(side: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()[:-5000]


async def healthz_while(url: str, content: bytes) -> tuple[int, int]:
    """Post `content` to /predict and ask /healthz in a loop meanwhile: its status, and how many
    /healthz answers arrived before it did."""
    async with httpx.AsyncClient(timeout=120) as http, httpx.AsyncClient(timeout=120) as health:
        heavy = asyncio.create_task(http.post(f"{url}/predict", content=content, headers=JSON))
        answered = 0
        while not heavy.done():
            if (await health.get(f"{url}/healthz")).status_code == 200 and not heavy.done():
                answered += 1
        return (await heavy).status_code, answered


def test_healthz_answers_while_a_request_is_checked_and_decoded(server: str) -> None:
    # two RGB images filling the request's budget: their pixels are decoded (checked), then the
    # last record's truncated image fails its decode, so the whole request is checking and decoding;
    # on the event loop no /healthz could be answered until it ended
    big = base64.b64encode(flat_image("RGB", side_for(MAX_REQUEST_MEGAPIXELS - 1, 2, 1))).decode()
    records = [{"image": big}, {"image": big}, {"image": base64.b64encode(truncated_png()).decode()}]
    status, answered = asyncio.run(healthz_while(server, json.dumps({"records": records}).encode()))
    assert status == 400
    assert answered >= 5   # with the parse on the event loop: 2, both before it began (checked)
    # and a legal request of the same images is answered, /healthz answering meanwhile too
    status, answered = asyncio.run(healthz_while(server, json.dumps({"records": records[:2]}).encode()))
    assert status == 200 and answered >= 1
