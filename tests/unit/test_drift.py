"""mmcore.drift: PSI / KS per profile column against reference rows, and its Markdown page.

Frames are synthetic and large enough (3,000 rows) that sampling noise stays far below
the 0.1 warn threshold, so each test can name exactly the columns that must move.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmcore import drift
from mmcore.config import CLASSES

WARN, FAIL = 0.1, 0.25
HUBS = ["SHA01", "SZX02", "HKG03", "AMS04"]
N = 3000


def profile(seed: int, n: int = N) -> pd.DataFrame:
    """Profile columns that mmcore.drift reads, drawn from one fixed distribution."""
    rng = np.random.default_rng(seed)
    has_image, has_note, has_sensor = rng.random((3, n)) > [[0.1], [0.2], [0.1]]
    lang = np.where(~has_note, "empty", rng.choice(["en", "zh"], n, p=[0.7, 0.3]))
    label = rng.choice([*CLASSES, None], n, p=[0.34, 0.16, 0.16, 0.16, 0.16, 0.02])

    def sensor(values: np.ndarray) -> np.ndarray:
        return np.where(has_sensor, values, np.nan)

    def image(values: np.ndarray) -> pd.Series:
        return pd.Series(np.where(has_image, values, np.nan)).astype("Int64")

    return pd.DataFrame({
        "batch_id": "b0001", "hub": rng.choice(HUBS, n), "label": label,
        "has_image": has_image, "image_width": image(rng.integers(200, 400, n)),
        "image_height": image(rng.integers(200, 400, n)),
        "image_brightness": np.where(has_image, rng.normal(120, 30, n), np.nan),
        "has_note": has_note, "note_length": np.where(has_note, rng.integers(5, 80, n), 0),
        "note_lang": lang,
        "note_unk_share": np.where(lang == "zh", rng.uniform(0.6, 0.9, n),
                                   np.where(lang == "en", rng.uniform(0, 0.05, n), np.nan)),
        "has_sensor": has_sensor,
        "sensor_rows": pd.Series(np.where(has_sensor, rng.integers(30, 5000, n), np.nan)).astype("Int64"),
        "temperature_min": sensor(rng.normal(2, 3, n)), "temperature_max": sensor(rng.normal(20, 5, n)),
        "humidity_min": sensor(rng.normal(30, 8, n)), "humidity_max": sensor(rng.normal(70, 8, n)),
        "shock_max": sensor(rng.gamma(2, 3, n)),
        "light_max": sensor(np.where(rng.random(n) < 0.8, 0.0, rng.uniform(0, 500, n))),
    })


def flagged(report: dict) -> dict[str, str]:
    """Columns whose status is not ok, with that status."""
    return {c: v["status"] for c, v in report["columns"].items() if v["status"] != drift.OK}


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return profile(seed=1)


def test_same_distribution_is_ok_everywhere(ref):
    report = drift.compute_drift(ref, profile(seed=2), WARN, FAIL)
    assert set(report["columns"]) == set(drift.NUMERIC_COLUMNS + drift.CATEGORICAL_COLUMNS)
    assert flagged(report) == {}
    assert report["status"] == drift.OK and report["fail"] == report["warn"] == []
    assert max(v["psi"] for v in report["columns"].values()) < WARN / 2
    col = report["columns"]["image_brightness"]
    assert col["statistic"] == col["psi"] and col["ks"] < 0.05
    assert col["n_ref"] == int(ref["has_image"].sum())  # missing images are not values


def test_shifted_brightness_fails_only_brightness(ref):
    new = profile(seed=2)
    new["image_brightness"] += 30  # one reference std: a darker/brighter scanner
    report = drift.compute_drift(ref, new, WARN, FAIL)
    assert flagged(report) == {"image_brightness": drift.FAIL}
    assert report["status"] == drift.FAIL and report["fail"] == ["image_brightness"]
    assert report["columns"]["image_brightness"]["ks"] > 0.3


def test_small_shift_warns(ref):
    new = profile(seed=2)
    new["image_brightness"] += 12  # 0.4 std: PSI about 0.15
    assert flagged(drift.compute_drift(ref, new, WARN, FAIL)) == {"image_brightness": drift.WARN}


def test_new_hub_fails_only_hub(ref):
    new = profile(seed=2)
    new.loc[new.index[::5], "hub"] = "ZZZ99"
    report = drift.compute_drift(ref, new, WARN, FAIL)
    assert flagged(report) == {"hub": drift.FAIL}
    assert report["columns"]["hub"]["new_values"] == ["ZZZ99"]


def test_label_mix_change_flags_only_label(ref):
    new = profile(seed=2)
    new.loc[new["label"] == "tampered", "label"] = "normal"  # a class vanishes
    assert flagged(drift.compute_drift(ref, new, WARN, FAIL)) == {"label": drift.FAIL}


def test_unlabelled_share_counts_as_label_drift(ref):
    new = profile(seed=2)
    new.loc[new.index[::4], "label"] = None  # 2% -> ~27% unlabelled
    report = drift.compute_drift(ref, new, WARN, FAIL)
    assert flagged(report) == {"label": drift.FAIL}
    assert report["columns"]["label"]["new_shares"][drift.NULL] > 0.2


def test_psi_and_ks_basics():
    shares = np.array([0.2, 0.3, 0.5])
    assert drift.psi(shares, shares) == 0.0
    assert drift.psi(shares, shares[::-1]) > 0.25
    a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 11.0])
    assert drift.ks_statistic(a, b) == 1.0 and drift.ks_statistic(a, a) == 0.0
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 300), rng.normal(0.3, 1, 500)
    assert drift.ks_statistic(x, y) == pytest.approx(stats.ks_2samp(x, y).statistic)


def test_small_samples_use_fewer_bins():
    # PSI's noise floor is about (bins - 1) * (1/n_ref + 1/n_new): 10 bins at 120 rows
    # would put same-distribution columns near the warn threshold.
    assert drift.bin_count(120, 3000) == 2
    assert drift.bin_count(3000, 560) == 5
    assert drift.bin_count(3000, 3000) == drift.MAX_BINS
    assert drift.bin_count(0, 0) == 2


def test_small_samples_are_called_out_in_markdown(ref):
    report = {**drift.compute_drift(ref, profile(seed=2, n=120), WARN, FAIL),
              "compared": {"scope": "all_rows", "rows": 120}}
    assert "sampling noise" in drift.render_markdown(report)


def test_missing_columns_are_skipped_not_crashed(ref):
    report = drift.compute_drift(ref.drop(columns=["hub"]), profile(seed=2), WARN, FAIL)
    assert "hub" not in report["columns"] and report["skipped"] == ["hub"]


def test_bad_thresholds_refused(ref):
    with pytest.raises(ValueError, match="drift_psi"):
        drift.compute_drift(ref, ref, 0.3, 0.2)


def test_new_rows_are_the_batches_the_reference_has_not_seen(ref):
    new = profile(seed=2, n=10).assign(batch_id="b0002")
    mask, compared = drift.new_rows(pd.concat([ref, new], ignore_index=True), ref)
    assert mask.sum() == 10 and not mask[: len(ref)].any()
    assert compared == {"scope": "new_batches", "rows": 10, "batches": ["b0002"]}
    mask, compared = drift.new_rows(ref, ref)
    assert mask.all() and compared["scope"] == "all_rows"


def test_gx_partitions_are_valid(ref):
    part = drift.continuous_partition(ref["image_brightness"], N)
    assert len(part["bins"]) == len(part["weights"]) + 1 == 11
    assert sum(part["weights"]) == pytest.approx(1.0)
    label = drift.categorical_partition(ref["label"])
    assert set(label["values"]) == set(CLASSES) and sum(label["weights"]) == pytest.approx(1.0)
    assert drift.continuous_partition(pd.Series([5.0] * 10), 10) is None
    lo, hi = drift.mean_bounds(ref["note_length"], 0.5)
    assert lo < ref["note_length"].mean() < hi


def test_markdown_names_failing_column_first(ref):
    new = profile(seed=2)
    new["image_brightness"] += 30
    report = {**drift.compute_drift(ref, new, WARN, FAIL),
              "reference": {"model": "parcel-condition", "version": "4", "run_id": "abc123",
                            "rows": N},
              "compared": {"scope": "new_batches", "rows": N, "batches": ["b0009"]}}
    md = drift.render_markdown(report)
    assert md.startswith("# Data drift: FAIL")
    assert "fail threshold (PSI ≥ 0.25): image_brightness." in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| column | status | PSI | KS |")
    assert table[1].startswith("| image_brightness | **FAIL** |")  # worst first
    assert "parcel-condition version 4" in md and "b0009" in md
    assert sum("| ok |" in line for line in table) == len(report["columns"]) - 1


def test_markdown_without_reference_says_so():
    report = drift.no_reference_report()
    assert report == {"reference": None, "columns": {}, "status": "no_reference"}
    assert "no champion" in drift.render_markdown(report)
