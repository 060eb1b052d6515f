"""The run report keeps each stage's seconds, their total and the whole run's, in run.json and on the
page, so a stage that slowed down shows when runs are set side by side (mmcore.report.timings)."""
from __future__ import annotations

import json
from pathlib import Path

from mmcore import report

STAGES = [{"stage": "ingest", "ran": True, "ok": True, "seconds": 12.3},
          {"stage": "train", "ran": True, "ok": True, "seconds": 80.25},
          {"stage": "evaluate", "ran": False, "ok": False, "seconds": 4.0}]


def test_run_json_and_page_keep_stage_seconds_and_totals(tmp_path: Path) -> None:
    run = {"name": "r1", "stages": STAGES, "timings": report.timings(STAGES, 130.04),
           "verdict": {"status": "failed", "summary": "evaluate failed", "reasons": []}}
    page = report.write(tmp_path, run, {}, None, {})
    kept = json.loads((tmp_path / "run.json").read_text())["timings"]
    assert kept == {"stages_s": {"ingest": 12.3, "train": 80.25, "evaluate": 4.0}, "stages_total_s": 96.5,
                    "run_s": 130.0}
    html = page.read_text()
    assert "<td>total of the stages</td><td></td><td>96.5</td>" in html
    assert "<td>whole run</td><td></td><td>130.0</td>" in html


def test_a_run_without_stages_has_zero_totals_and_an_older_run_renders_without_them() -> None:
    assert report.timings([], 1.26) == {"stages_s": {}, "stages_total_s": 0.0, "run_s": 1.3}
    html = report.stages_section({"stages": STAGES})                 # run.json written before timings existed
    assert "train" in html and "total of the stages" not in html
