"""The review page in a real headless browser (Debian's Chromium, driven by Playwright) against the
review app started as its own process, as a reviewer runs it: `python -m mmcore.selective.review`.
Risks: a page that shows too little to decide on, a shortcut that labels the wrong record or class,
a skip that writes a label, and a rotated key that silently loses (or, worse, writes) answers."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from mmcore.config import CLASSES
from tests.unit.test_review_queue import SENSOR, capture, jpeg, served, write_labels

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "review-key-1"
SERVICE_KEY = "service-key-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert proc.poll() is None, f"the review app exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the review app did not answer in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@contextmanager
def review_app(cap: Path, monitor: str, labels: Path, key: str, port: int) -> Iterator[str]:
    """`python -m mmcore.selective.review` on a loopback port with reviewer ana's key `key` (and the
    service's key, which the page must refuse); its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARCEL_")}
    env.update(PARCEL_REVIEWER_KEYS=f"ana:{key}", PARCEL_API_KEY=SERVICE_KEY, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    log = labels.parent / f"review-app-{port}-{key}.log"
    cmd = [sys.executable, "-m", "mmcore.selective.review", "--capture", str(cap), "--labels", str(labels),
           "--monitor", monitor, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Three answers routed to review (p1 oldest, with a photo and a sensor trace) and one auto answer."""
    root = tmp_path_factory.mktemp("review-capture")
    monitor = capture(root, [
        served("p2", 2, reasons=("low_confidence",), note="left at the door"),
        served("p1", 1, reasons=("set_size", "modalities_disagree"), note="corner crushed, tape cut",
               image=jpeg((200, 60, 40)), sensor=SENSOR),
        served("auto1", 0, decision="auto"),
        served("p3", 3, pset=("tampered",), reasons=("modalities_disagree",))])
    return root, monitor


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM, "chromium is not installed: run `make install` (Debian package `chromium`)"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()        # its own sessionStorage: every test enters the key
    yield context.new_page()
    context.close()


def enter_key(page: Page, url: str, key: str = KEY) -> None:
    page.goto(url)
    expect(page.locator("#key-panel")).to_be_visible()
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")


def batches(labels: Path) -> list[dict[str, Any]]:
    """The finished label batches on disk, as their (single) label lines."""
    if not labels.is_dir():
        return []
    done = sorted(p for p in labels.iterdir() if (p / "_SUCCESS").is_file())
    return [json.loads((p / "labels.jsonl").read_text()) for p in done]


def test_a_record_shows_everything_a_reviewer_decides_on(page: Page, captured: tuple[Path, str],
                                                        tmp_path: Path) -> None:
    with review_app(*captured, tmp_path / "labels", KEY, free_port()) as url:
        enter_key(page, url)
        expect(page.locator("#prediction-id")).to_have_text("p1")
        expect(page.locator("#waiting")).to_have_text("3 waiting")
        expect(page.locator("#note")).to_have_text("corner crushed, tape cut")
        page.wait_for_function("document.getElementById('photo').naturalWidth === 48")
        lines = page.locator("#sensor polyline")
        expect(lines).to_have_count(4)
        assert len(page.get_attribute("#sensor polyline[data-channel=shock_g]", "points").split()) == 3
        assert page.locator("#prediction-set span").all_inner_texts() == ["damaged", "wet"]
        assert page.locator("#review-reason span").all_inner_texts() == ["set_size", "modalities_disagree"]
        rows = page.locator("#probabilities tr td.name").all_inner_texts()
        assert rows == ["damaged", "wet", "tampered", "normal", "temperature_excursion"]
        assert page.locator("#probabilities tr td.value").first.inner_text() == "0.450"
        expect(page.locator("#model-label")).to_have_text("damaged")
        expect(page.locator("#model-version")).to_have_text("3")
        expect(page.locator("#answered-at")).to_have_text("2026-12-01T10:01:00+00:00")
        assert page.locator("#answers button kbd").all_inner_texts() == ["1", "2", "3", "4", "5", "s"]
        assert page.locator("#answers button").all_inner_texts() == [f"{i + 1}{c}" for i, c in enumerate(CLASSES)] \
            + ["sSkip"]


def test_a_shortcut_labels_the_shown_record_and_the_next_one_shows(page: Page, captured: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    with review_app(*captured, labels, KEY, free_port()) as url:
        enter_key(page, url)
        expect(page.locator("#prediction-id")).to_have_text("p1")
        page.keyboard.press("4")
        expect(page.locator("#prediction-id")).to_have_text("p2")
        expect(page.locator("#waiting")).to_have_text("2 waiting")
        expect(page.locator("#note")).to_have_text("left at the door")
        expect(page.locator("#photo")).to_be_hidden()
        expect(page.locator("#no-photo")).to_have_text("(no photo sent)")
    [line] = batches(labels)
    assert line["prediction_id"] == "p1" and line["label"] == CLASSES[3] and line["source"] == "review"
    assert line["labeller"] == "ana"


def test_the_services_key_cannot_label_and_the_page_says_so(page: Page, captured: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    with review_app(*captured, labels, KEY, free_port()) as url:
        enter_key(page, url, SERVICE_KEY)
        expect(page.locator("#key-message")).to_contain_text("cannot label: use your own reviewer key")
        expect(page.locator("#key-panel")).to_be_visible()
    assert not labels.exists()


def test_a_skipped_record_comes_back_after_the_others_and_nothing_is_written(
        page: Page, captured: tuple[Path, str], tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    with review_app(*captured, labels, KEY, free_port()) as url:
        enter_key(page, url)
        shown = []
        for _ in range(4):
            expect(page.locator("#answers button").first).to_be_enabled()
            shown.append(page.locator("#prediction-id").inner_text())
            page.keyboard.press("s")
            expect(page.locator("#prediction-id")).not_to_have_text(shown[-1])
        assert shown == ["p1", "p2", "p3", "p1"]
        expect(page.locator("#notice")).to_contain_text("comes back after the others")
    assert not labels.exists() or list(labels.iterdir()) == []


def test_a_rotated_key_is_refused_on_the_page_and_nothing_is_written(page: Page, captured: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    labels, port = tmp_path / "labels", free_port()
    with review_app(*captured, labels, KEY, port) as url:
        enter_key(page, url)
        expect(page.locator("#prediction-id")).to_have_text("p1")
    with review_app(*captured, labels, "review-key-2", port):     # the key rotated under the open page
        page.keyboard.press("1")
        expect(page.locator("#key-message")).to_contain_text("no longer valid")
        expect(page.locator("#key-panel")).to_be_visible()
        expect(page.locator("#record")).to_be_hidden()
        assert batches(labels) == [] and not labels.exists()
        page.fill("#key-input", "review-key-2")
        page.press("#key-input", "Enter")
        expect(page.locator("#prediction-id")).to_have_text("p1")   # the answer was not taken: p1 again


def test_an_empty_queue_says_so(page: Page, captured: tuple[Path, str], tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    at = "2026-12-02T09:00:00+00:00"
    write_labels(labels, "inspection-7", [{"prediction_id": "p1", "label": "wet", "labelled_at": at,
                                           "source": "inspection"}])
    write_labels(labels, "claim-3", [{"record_id": "cap-p2", "label": "normal", "labelled_at": at, "source": "claim"},
                                     {"prediction_id": "p3", "label": "tampered", "labelled_at": at,
                                      "source": "claim"}])
    with review_app(*captured, labels, KEY, free_port()) as url:
        enter_key(page, url)
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#empty")).to_contain_text("The queue is empty")
        expect(page.locator("#record")).to_be_hidden()
        expect(page.locator("#waiting")).to_have_text("0 waiting")
