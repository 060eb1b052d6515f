"""The HTML run report, loaded in a real headless browser (Debian's Chromium, installed by
`make install`): the page parses, its plots decode, and the verdict is there to read."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from mmcore import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(page: Path) -> str:
    """The DOM after load (and after the page's own script ran), as Chromium serialises it."""
    assert CHROMIUM, "chromium is not installed: run `make install` (Debian package `chromium`)"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_report_renders_verdict_tables_plots_and_links_in_chromium(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    for name in report.PLOTS:
        (plots / name).write_bytes(png())
    run = {"name": "brave-otter", "started": "2026-11-23T02:00:00+00:00", "finished": "2026-11-23T02:09:00+00:00",
           "landing": "data/landing", "new_batches": ["b-7"],
           "stages": [{"stage": "ingest", "ran": True, "ok": True, "seconds": 3.0}],
           "verdict": {"status": "rejected", "summary": "version 3 rejected; champion stays version 2",
                       "reasons": ["min_delta: -0.0100 fails limit 0.0 <script>alert(1)</script>"]}}
    reports = {"ingest": {"landed": 10, "accepted": 8, "quarantined": 2, "by_reason": {"bad_json": 2},
                          "batches": {"b-7": {"landed": 10, "accepted": 8, "quarantined": 2, "bad_share": 0.2,
                                              "status": "ok"}}},
               "validation": {"success": True, "evaluated": 41, "successful": 41, "rows": 8, "hard_failures": [],
                              "warnings": ["note_lang=zh: [UNK] share 0.7"]},
               "drift": {"status": "warn", "columns": {"shock_max": {"psi": 0.12, "ks": 0.2, "status": "warn"}}},
               "metrics": {"macro_f1": 0.71, "accuracy": 0.8, "ece": 0.05, "model_version": 3,
                           "per_class": {"normal": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 5}},
                           "champion": {"version": 2, "macro_f1": 0.72},
                           "comparison": {"observed": -0.01, "low": -0.05, "high": 0.03, "ci": 0.95}},
               "gate": {"promoted": False, "challenger_version": 3, "champion_version": 2,
                        "rules": [{"rule": "min_delta", "value": -0.05, "limit": 0.0, "passed": False}]}}
    links = {"Data Docs": (tmp_path / "docs" / "index.html").as_uri(), "MLflow UI (run this)": "mlflow ui"}
    page = report.write(tmp_path / "run", run, reports, plots, links)

    dom = dump_dom(page)
    assert 'id="verdict" data-status="rejected"' in dom and "Challenger rejected" in dom
    assert 'data-plots-decoded="4"' in dom and 'data-plots-total="4"' in dom
    assert "<script>alert(1)</script>" not in dom and "&lt;script&gt;" in dom   # reasons are escaped
    assert 'id="data-docs"' in dom and "shock_max" in dom and "bad_json" in dom and "min_delta" in dom
    assert (tmp_path / "run" / "run.json").is_file()


def test_a_noop_run_has_a_page_too(tmp_path: Path) -> None:
    run = {"name": "idle-owl", "stages": [], "new_batches": [], "landing": "data/landing",
           "verdict": {"status": "no_new_data", "summary": "no new batch in data/landing", "reasons": []}}
    dom = dump_dom(report.write(tmp_path, run, {}, None, {}))
    assert 'data-status="no_new_data"' in dom and "No stage ran" in dom
    assert pytest.approx(0) == dom.count("<img")
