"""Input limits over HTTP: every refused input is a 4xx naming the limit or field, never a 5xx,
and the server's log carries no payload content. Health, readiness, metrics, OpenAPI."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mmcore.bench.serve import synthetic_records
from mmcore.config import CLASSES
from tests.conftest import BAD_PHOTOS
from tests.serve.conftest import AUTH

pytestmark = pytest.mark.slow
SECRET = "PAYLOAD-MARKER-7f3a"  # sent inside refused and accepted bodies; must never reach the log


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims `width` x `height` (how a decompression bomb starts)."""
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sensor(rows: int, **over: list) -> dict:
    s = {c: [0.5] * rows for c in ("temperature_c", "humidity_pct", "shock_g", "light_lux")}
    s.update(over)
    return s


def post(url: str, body: dict | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{url}/predict", content=content, headers={"content-type": "application/json", **AUTH},
                      timeout=120)


def test_valid_records_with_any_modality_missing(server: str) -> None:
    rec = synthetic_records(1, seed=5)[0]
    records = [rec, {"note": f"box crushed {SECRET}"}, {"image": rec["image"]}, {"sensor": rec["sensor"]},
               {"note": "wet", "sensor": sensor(5000)}, {"note": "x" * 10_000}]
    resp = post(server, {"records": records})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert len(out) == len(records)
    assert [p["modalities"] for p in out[:4]] == [["image", "text", "sensor"], ["text"], ["image"], ["sensor"]]
    for p in out:
        assert p["label"] in CLASSES and p["model_version"] == "1"
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5


BAD = {
    "image_too_many_bytes": ({"records": [{"image": "A" * (14_000_000)}]}, "image"),
    "image_over_40_megapixels": ({"records": [{"image": b64(png_claiming(7000, 6000))}]}, "pixels"),
    "decompression_bomb": ({"records": [{"image": b64(png_claiming(30000, 30000))}]}, "image"),
    "image_not_base64": ({"records": [{"image": f"%%{SECRET}%%"}]}, "base64"),
    "image_not_an_image": ({"records": [{"image": b64(SECRET.encode() * 10)}]}, "image"),
    "image_gif_1x1": ({"records": [{"image": b64(BAD_PHOTOS["gif_1x1"][0])}]}, "image format GIF: JPEG or PNG only"),
    "sensor_too_many_rows": ({"records": [{"sensor": sensor(5001)}]}, "sensor"),
    "sensor_one_row": ({"records": [{"sensor": sensor(1)}]}, "sensor"),
    "sensor_missing_channel": ({"records": [{"sensor": {"temperature_c": [1, 2], "humidity_pct": [1, 2],
                                                        "shock_g": [1, 2]}}]}, "light_lux"),
    "sensor_extra_channel": ({"records": [{"sensor": sensor(3, pressure_hpa=[1, 2, 3])}]}, "pressure_hpa"),
    "sensor_unequal_lengths": ({"records": [{"sensor": sensor(3, shock_g=[1, 2])}]}, "equal lengths"),
    "sensor_string_values": ({"records": [{"sensor": sensor(3, shock_g=["a", "b", "c"])}]}, "shock_g"),
    "sensor_time_not_increasing": ({"records": [{"sensor": sensor(3, t_s=[0, 2, 1])}]}, "t_s"),
    "note_too_long": ({"records": [{"note": SECRET + "x" * 10_000}]}, "note"),
    "note_wrong_type": ({"records": [{"note": 123}]}, "note"),
    "no_modality": ({"records": [{"record_id": "a", "note": "   "}]}, "modality"),
    "too_many_records": ({"records": [{"note": "ok"}] * 257}, "records"),
    "no_records": ({"records": []}, "records"),
    "records_not_a_list": ({"records": {"note": "ok"}}, "records"),
    "unknown_field": ({"records": [{"note": "ok", "colour": SECRET}]}, "colour"),
    "record_id_too_long": ({"records": [{"note": "ok", "record_id": "r" * 65}]}, "record_id"),
}
RAW = {
    "nan_in_sensor": ('{"records": [{"sensor": {"temperature_c": [1, NaN], "humidity_pct": [1, 2], '
                      '"shock_g": [1, 2], "light_lux": [0, 0]}}]}', "temperature_c"),
    "infinity_in_sensor": ('{"records": [{"sensor": {"temperature_c": [1, 2], "humidity_pct": [1, Infinity], '
                           '"shock_g": [1, 2], "light_lux": [0, 0]}}]}', "humidity_pct"),
    "not_json": (f'{{"records": [{{"note": "{SECRET}"', "json"),
    "json_array_body": ('[{"note": "ok"}]', "object"),
}


@pytest.mark.parametrize("case", sorted(BAD) + sorted(RAW))
def test_refused_inputs_get_a_4xx_naming_the_fault(server: str, case: str) -> None:
    body, needle = BAD[case] if case in BAD else RAW[case]
    resp = post(server, body)
    assert 400 <= resp.status_code < 500, (case, resp.status_code, resp.text[:500])
    assert needle.lower() in resp.text.lower(), (case, resp.text[:500])
    assert SECRET not in resp.text  # errors name the field, they do not echo the input


def test_multipart_limits(server: str) -> None:
    rec = synthetic_records(1, seed=6)[0]
    ok = httpx.post(f"{server}/predict_file", files={"image": ("p.jpg", base64.b64decode(rec["image"]), "image/jpeg")},
                    data={"note": "box dented", "sensor": json.dumps(rec["sensor"])}, headers=AUTH, timeout=120)
    assert ok.status_code == 200, ok.text
    assert ok.json()["modalities"] == ["image", "text", "sensor"]
    for files, data, needle in [
        ({"image": ("p.png", png_claiming(7000, 6000), "image/png")}, {}, "pixels"),
        ({"image": ("p.jpg", b"GIF89a" + SECRET.encode(), "image/jpeg")}, {}, "image"),
        ({"image": ("p.png", BAD_PHOTOS["png_31x40"][0], "image/png")}, {}, "image 31x40 px: at least 32 px a side"),
        ({"image": ("p.jpg", base64.b64decode(rec["image"]), "image/jpeg")}, {"note": "x" * 10_001}, "note"),
        ({"image": ("p.jpg", base64.b64decode(rec["image"]), "image/jpeg")}, {"sensor": '{"t_s": "no"}'}, "sensor"),
    ]:
        resp = httpx.post(f"{server}/predict_file", files=files, data=data, headers=AUTH, timeout=120)
        assert 400 <= resp.status_code < 500, (needle, resp.status_code, resp.text[:300])
        assert needle in resp.text.lower(), resp.text[:300]


def test_health_readiness_metrics_and_openapi(server: str) -> None:
    assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{server}/readyz", timeout=10).status_code == 200
    post(server, {"records": [{"note": "ok"}]})
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'bentoml_service_request_total' in metrics and 'endpoint="/predict"' in metrics
    spec = httpx.get(f"{server}/docs.json", timeout=10).json()
    assert {"/predict", "/predict_file", "/labels"} <= set(spec["paths"])
    page = httpx.get(f"{server}/", timeout=10)  # BentoML's OpenAPI page (Swagger UI over /docs.json)
    assert page.status_code == 200 and "html" in page.headers["content-type"]
    labels = httpx.post(f"{server}/labels", json={}, headers=AUTH, timeout=10).json()
    assert labels == {"labels": list(CLASSES), "model_version": "1"}


def test_log_carries_no_payload(serve_ws: Path, server: str) -> None:
    # runs after the tests above in file order; send one refused body of each kind again to be sure
    post(server, {"records": [{"note": SECRET, "colour": SECRET}]})
    post(server, {"records": [{"note": f"fine {SECRET}"}]})
    log = (serve_ws / "logs" / "server.log").read_text(errors="replace")
    assert "/predict" in log  # the access log is there ...
    assert SECRET not in log  # ... without the bodies
