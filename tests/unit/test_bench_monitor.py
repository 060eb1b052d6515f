"""The monitoring benchmark's synthetic capture log is what the capture step and the monitor read:
every line parses, lands in its period and becomes an answer with its probabilities."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from mmcore.bench.monitor import capture_log
from mmcore.config import CLASSES
from mmcore.monitor import quality
from mmcore.monitor.capture_batches import Period, read_log


def test_capture_log_lines_are_read_as_answers_in_their_period(tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    root = capture_log(tmp_path, 300, seed=0, start=start)
    logged = read_log(root, Period(start, start + timedelta(seconds=6)))   # 30 ms apart: the first 200
    assert logged.unreadable == 0 and len(logged.lines) == 200
    preds = quality.predictions(logged.lines, list(CLASSES))
    assert len(preds) == 200 and set(preds["model_version"]) == {"1", "2"}
    assert (preds["predicted"].map(lambda k: CLASSES[k]) == [ln["label"] for ln in logged.lines]).all()
