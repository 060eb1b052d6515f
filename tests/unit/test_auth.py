"""Keys and roles (mmcore/serving/auth.py). Risks: a service that starts open by accident, a reviewer key
that feeds /predict, the service's key labelling, a reviewer-key setting read wrongly (a key given to the
wrong name records the wrong labeller), and a file of keys that silently holds none."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from mmcore.serving.auth import (ApiKeyMiddleware, KeySettingError, parse_reviewer_keys, require_keys, reviewer_keys,
                                 service_middleware)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True)
keys = st.text(st.characters(blacklist_characters=",#:\n\r", blacklist_categories=("Cs", "Zs", "Cc")),
               min_size=1, max_size=40)


@given(st.dictionaries(names, keys, max_size=6), st.sampled_from([",", "\n", " , ", "\n# a comment\n"]))
def test_reviewer_keys_read_back_what_was_written(entries: dict[str, str], sep: str) -> None:
    if len(set(entries.values())) < len(entries):
        with pytest.raises(KeySettingError, match="appears twice"):
            parse_reviewer_keys(sep.join(f"{n}:{k}" for n, k in entries.items()), "X")
        return
    assert parse_reviewer_keys(sep.join(f"{n}:{k}" for n, k in entries.items()), "X") == entries


@given(st.text(max_size=60))
def test_any_text_is_keys_or_an_error_naming_the_setting(text: str) -> None:
    try:
        parsed = parse_reviewer_keys(text, "PARCEL_REVIEWER_KEYS")
    except KeySettingError as exc:
        assert str(exc).startswith("PARCEL_REVIEWER_KEYS")
    else:
        assert all(k and ":" not in n for n, k in parsed.items())


@pytest.mark.parametrize("text", ["ana", "ana:", ":k1", "a na:k1", "ana:k1,ana:k2", "ana:k1,ben:k1"])
def test_bad_entries_are_refused(text: str) -> None:
    with pytest.raises(KeySettingError):
        parse_reviewer_keys(text, "PARCEL_REVIEWER_KEYS")


def test_reviewer_keys_from_a_file_and_never_the_service_key(tmp_path) -> None:
    path = tmp_path / "reviewers"
    path.write_text("# team A\nana: k-ana\nben:k-ben\n")
    assert reviewer_keys({"PARCEL_REVIEWER_KEYS_FILE": str(path), "PARCEL_REVIEWER_KEYS": "cy:k-cy"}) == {
        "cy": "k-cy", "ana": "k-ana", "ben": "k-ben"}
    with pytest.raises(KeySettingError, match="cannot read"):
        reviewer_keys({"PARCEL_REVIEWER_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(KeySettingError, match="keys of their own"):
        reviewer_keys({"PARCEL_REVIEWER_KEYS": "ana:same", "PARCEL_API_KEY": "same"})


def test_nothing_starts_without_keys_unless_open_on_purpose(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SystemExit, match="set PARCEL_API_KEY, or PARCEL_ALLOW_OPEN=1"):
        require_keys({}, "the service", "PARCEL_API_KEY", env={})
    with pytest.raises(SystemExit):
        require_keys({}, "the service", "PARCEL_API_KEY", env={"PARCEL_ALLOW_OPEN": "yes"})   # only 1 says so
    assert require_keys({}, "the service", "PARCEL_API_KEY", env={"PARCEL_ALLOW_OPEN": "1"}) is True
    assert "runs OPEN" in caplog.text
    assert require_keys({"service": "k"}, "the service", "PARCEL_API_KEY", env={}) is False


def app_with(**middleware) -> TestClient:
    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"caller": getattr(request.state, "caller", None)})

    app = Starlette(routes=[Route("/predict", who, methods=["POST"]), Route("/readyz", who)])
    app.add_middleware(ApiKeyMiddleware, **middleware)
    return TestClient(app)


def test_the_service_takes_its_key_and_refuses_reviewer_keys_with_a_403() -> None:
    env = {"PARCEL_API_KEY": "svc-key", "PARCEL_REVIEWER_KEYS": "ana:ana-key"}
    client = app_with(**service_middleware(lambda path: path != "/readyz", env))
    assert client.post("/predict", headers={"x-api-key": "svc-key"}).json() == {"caller": "service"}
    assert client.post("/predict", headers={"Authorization": "Bearer svc-key"}).status_code == 200
    refused = client.post("/predict", headers={"x-api-key": "ana-key"})
    assert refused.status_code == 403 and "reviewer key" in refused.json()["error"]
    assert client.post("/predict", headers={"x-api-key": "wrong"}).status_code == 401
    assert client.post("/predict").status_code == 401
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "x-auth-warning" not in ready.headers


def test_an_open_service_says_so_on_readyz() -> None:
    client = app_with(**service_middleware(lambda path: path != "/readyz", {"PARCEL_ALLOW_OPEN": "1"}))
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "PARCEL_ALLOW_OPEN=1" in ready.headers["x-auth-warning"]
    assert client.post("/predict").json() == {"caller": "anonymous"}
