"""Model update without downtime (blue/green): a newly promoted champion is packaged as a new
bento version, started beside the old one, traffic moves once /readyz says it is ready, the old
one is stopped; a client loop running throughout sees no failed request."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from mmcore.bench_serve import random_bundle, serving, synthetic_records
from mmcore.config import load_params
from tests.serve.conftest import ROOT, env_for, release

pytestmark = pytest.mark.slow


class ClientLoop(threading.Thread):
    """Sends one record at a time to `self.target` (the router's single switch) and records every answer."""

    def __init__(self, target: str, max_requests: int = 3000, max_seconds: float = 400) -> None:
        super().__init__(daemon=True)
        self.target, self.max_requests, self.max_seconds = target, max_requests, max_seconds
        self.stop = threading.Event()
        self.answers: list[tuple[str, str]] = []  # (target, model_version)
        self.failures: list[str] = []
        self.body = {"records": [synthetic_records(1, seed=9)[0]]}

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set() and len(self.answers) + len(self.failures) < self.max_requests \
                    and time.monotonic() < deadline:
                target = self.target
                try:
                    resp = http.post(f"{target}/predict", json=self.body)
                    if resp.status_code == 200:
                        self.answers.append((target, resp.json()[0]["model_version"]))
                    else:
                        self.failures.append(f"{target}: {resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{target}: {type(exc).__name__}")
                time.sleep(0.02)

    def wait_for(self, n: int, target: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while sum(t == target for t, _ in self.answers) < n and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.1)
        assert sum(t == target for t, _ in self.answers) >= n, (target, self.failures[:5])


def test_switch_to_a_new_champion_loses_no_request(serve_ws: Path) -> None:
    random_bundle(serve_ws / "models" / "v2", load_params(ROOT / "params.yaml").model, seed=2)
    logs, blue_stack, green_stack = serve_ws / "logs", contextlib.ExitStack(), contextlib.ExitStack()
    loop = None
    try:
        blue = blue_stack.enter_context(serving("parcel-condition:v1", serve_ws, env_for(serve_ws), logs / "blue.log"))
        loop = ClientLoop(blue)
        loop.start()
        loop.wait_for(5, blue)
        # a new champion: registered, promoted and packaged as a new bento version, while blue serves
        assert release(serve_ws, serve_ws / "models" / "v2") == "parcel-condition:v2"
        package = json.loads((serve_ws / "reports" / "package.json").read_text())
        assert package["bento"] == "parcel-condition:v2" and package["model_version"] == 2
        # each bento pins its own model (a bento argument), so v1 stays v1 for a rollback
        for v in (1, 2):
            info = yaml.safe_load((serve_ws / ".bentoml" / "bentos" / "parcel-condition" / f"v{v}" / "bento.yaml").read_text())
            assert info["args"] == {"model_tag": f"parcel-condition:v{v}", "backend": "auto"}
        # green starts beside blue; `serving` returns once green's /readyz is 200 (model loaded, warmed)
        green = green_stack.enter_context(serving("parcel-condition:v2", serve_ws, env_for(serve_ws),
                                                  logs / "green.log"))
        loop.target = green  # move traffic
        loop.wait_for(5, green)  # so the loop's last request to blue has been answered
        blue_stack.close()  # stop the old version
        loop.wait_for(len([a for a in loop.answers if a[0] == green]) + 10, green)
    finally:
        if loop is not None:
            loop.stop.set()
            loop.join(timeout=90)
        green_stack.close()
        blue_stack.close()
    assert not loop.failures, loop.failures[:10]
    versions = [v for _, v in loop.answers]
    assert versions[0] == "1" and versions[-1] == "2" and versions.count("2") >= 15
    assert versions == sorted(versions), "an answer from the old version came after the switch"
