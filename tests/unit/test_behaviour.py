"""Behavioural suites (mmcore.behaviour): each perturbation does what it says, the templates carry their
class's evidence (a rule model that reads one modality passes that modality's templates and fails the
others'), and the suites' rates count what they claim."""
from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmcore import behaviour as bh
from mmcore.config import CLASSES
from mmcore.preprocess import decode_image


def photo(seed: int = 0, size: int = 96) -> bytes:
    """A textured JPEG (noise over a gradient): JPEG quality matters on it, as on a real photo."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(60, 200, size)[None, :, None] * np.ones((size, 1, 3))
    arr = np.clip(grad + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=95)
    return out.getvalue()


def trace(rows: int = 200, seed: int = 0) -> dict[str, Any]:
    """A quiet ambient trace in the serving format."""
    x = bh.baseline_trace(rows, False, np.random.default_rng(seed))
    return bh._as_sensor(x["t_s"], x)


def sensor_rules(rec: dict[str, Any]) -> int:
    """An oracle that reads only the trace, with the domain's limits; without a trace it says normal."""
    s = rec.get("sensor")
    if s is None:
        return 0
    temp, hum, shock, light = (np.asarray(s[c]) for c in ("temperature_c", "humidity_pct", "shock_g", "light_lux"))
    for cls, hit in (("temperature_excursion", (temp > 30).mean() > 0.05), ("wet", (hum > 90).mean() > 0.05),
                     ("tampered", (light > 20).sum() >= 3), ("damaged", shock.max() >= 8)):
        if hit:
            return CLASSES.index(cls)
    return 0


NOTE_WORDS = {"damaged": ("crushed", "torn", "dropped"), "wet": ("soaked", "wet", "damp"),
              "temperature_excursion": ("reefer", "cold chain", "temperature"),
              "tampered": ("seal", "tamper", "opened")}


def note_rules(rec: dict[str, Any]) -> int:
    """An oracle that reads only the note (keywords); without one it says normal."""
    note = (rec.get("note") or "").lower()
    for cls, words in NOTE_WORDS.items():
        if any(w in note for w in words) and "intact" not in note:
            return CLASSES.index(cls)
    return 0


def as_probs(rule: Any) -> bh.Probabilities:
    return lambda recs: np.eye(len(CLASSES))[[rule(r) for r in recs]]


def constant(recs: list[dict[str, Any]]) -> np.ndarray:
    return np.tile([0.6, 0.1, 0.1, 0.1, 0.1], (len(recs), 1))


def test_jpeg_quality_changes_the_bytes_not_the_size() -> None:
    data = photo()
    out = bh.reencode_jpeg(data)
    assert out != data and out[:2] == b"\xff\xd8" and len(out) < len(data)
    assert decode_image(out).size == decode_image(data).size
    assert bh.reencode_jpeg(data) == out                                # deterministic


@pytest.mark.parametrize("factor", bh.BRIGHTNESS)
def test_brightness_moves_mean_brightness_by_about_ten_percent(factor: float) -> None:
    data = photo()
    before = np.asarray(decode_image(data), np.float64).mean()
    after = np.asarray(decode_image(bh.brighten(data, factor)), np.float64).mean()
    assert decode_image(bh.brighten(data, factor)).size == decode_image(data).size
    assert abs(after / before - factor) < 0.02


def test_typos_are_small_seeded_and_skip_notes_without_a_long_word() -> None:
    note = "Corner crushed on arrival"
    for kind, delta in (("swap", 0), ("drop", -1)):
        outs = {bh.typo(note, seed, kind) for seed in range(20)}
        assert bh.typo(note, 3, kind) == bh.typo(note, 3, kind) and len(outs) > 1
        for out in outs:
            assert out != note and len(out) - len(note) == delta
            changed = [(a, b) for a, b in zip(note.split(), out.split()) if a != b]
            assert len(changed) == 1 and changed[0][0][0] == changed[0][1][0]   # one word, its first letter kept
            if kind == "swap":
                assert sorted(changed[0][0]) == sorted(changed[0][1])
    assert bh.typo("外箱潮湿", 0, "swap") is None and bh.typo("ok", 0, "drop") is None


@pytest.mark.parametrize("factor", bh.RESAMPLE)
def test_resampling_keeps_the_time_span_and_the_shock_peaks(factor: float) -> None:
    s = bh.add_shock_spike(trace(400), seed=1)
    out = bh.resample(s, factor)
    assert len(out["t_s"]) == round(400 * factor) and set(out) == set(s)
    assert (out["t_s"][0], out["t_s"][-1]) == (s["t_s"][0], s["t_s"][-1])
    assert max(out["shock_g"]) == max(s["shock_g"]) == bh.SPIKE_G
    assert abs(np.mean(out["temperature_c"]) - np.mean(s["temperature_c"])) < 0.1
    assert len(bh.resample(trace(30), 0.95)["t_s"]) == 30               # never below the contract's 30 rows


def test_the_temperature_run_is_sustained_above_the_limit_and_the_spike_is_a_drop() -> None:
    s = trace(200)
    hot = np.asarray(bh.add_temperature_run(s, seed=5)["temperature_c"])
    run = np.flatnonzero(hot >= bh.HOT_C)
    assert len(run) == round(bh.HOT_SHARE * 200) and np.all(np.diff(run) == 1)      # one window, 15 % of it
    assert bh.HOT_C > 8 + 25 and max(s["temperature_c"]) < 30
    assert np.array_equal(np.delete(hot, run), np.delete(np.asarray(s["temperature_c"]), run))
    spiked = np.asarray(bh.add_shock_spike(s, seed=5)["shock_g"])
    assert spiked.max() == bh.SPIKE_G >= 8 and (spiked != np.asarray(s["shock_g"])).sum() == 1


def test_templates_cover_every_class_and_missing_modality_pattern() -> None:
    cases = bh.template_cases(seed=0)
    patterns = {c.kind for c in cases}
    assert patterns == {c.name.split()[1] for c in cases}
    assert patterns == {"note", "sensor", "note+sensor", "image+note", "image+sensor", "image+note+sensor"}
    assert len(cases) == len(CLASSES) * len(patterns) * len(bh.TRACES)
    assert {c.target for c in cases} == set(range(len(CLASSES)))
    for c in cases:
        if c.record["sensor"] is not None:
            assert 30 <= len(c.record["sensor"]["t_s"]) <= 5000
    assert [c.record["note"] for c in bh.template_cases(0)] == [c.record["note"] for c in cases]


def pattern_rates(probabilities: bh.Probabilities) -> dict[str, float]:
    """Minimum-functionality failure rate per missing-modality pattern."""
    return bh.score_cases(probabilities, bh.Cases(cases=bh.template_cases(seed=0)))["minimum_functionality"]["by_kind"]


def test_a_model_that_reads_one_modality_fails_the_templates_of_the_others() -> None:
    sensor_only, note_only = pattern_rates(as_probs(sensor_rules)), pattern_rates(as_probs(note_rules))
    for pattern, rate in sensor_only.items():
        assert rate == (0.8 if "sensor" not in pattern else 0.0), (pattern, rate)    # all but normal missed
    for pattern, rate in note_only.items():
        assert rate == (0.8 if "note" not in pattern else 0.0), (pattern, rate)


def test_a_constant_predictor_fails_minimum_functionality_for_four_classes_of_five() -> None:
    out = bh.score_cases(constant, bh.Cases(cases=bh.template_cases(seed=0)))["minimum_functionality"]
    assert out["failure_rate"] == pytest.approx(0.8) and out["n"] == 90 and out["failed"] == 72
    assert len(out["examples"]) == bh.EXAMPLES and all("predicted normal" in e for e in out["examples"])


def records() -> tuple[list[dict[str, Any]], list[int]]:
    """Gate-set-like records: a photo, an English or missing note, a trace or none."""
    recs, labels = [], []
    for i, case in enumerate(bh.template_cases(seed=1)):
        if "note+sensor" in case.name and i % 2:
            recs.append({**case.record, "record_id": f"r{i}", "image": photo(i) if i % 3 else None})
            labels.append(case.target)
    return recs, labels


def test_suites_count_their_cases_and_rates_lie_in_zero_one() -> None:
    recs, labels = records()
    built = bh.build_cases(recs, labels, n=8, seed=0)
    assert len(built.bases) == 8 and {labels[recs.index(b)] for b in built.bases} == set(range(len(CLASSES)))
    for probabilities in (constant, as_probs(sensor_rules), as_probs(note_rules),
                          lambda rs: np.random.default_rng(len(rs)).dirichlet(np.ones(5), len(rs))):
        out = bh.score_cases(probabilities, built)
        assert set(out) == set(bh.SUITES)
        for suite, v in out.items():
            assert v["n"] == sum(c.suite == suite for c in built.cases) > 0
            assert 0 <= v["failure_rate"] <= 1 and v["failure_rate"] == v["failed"] / v["n"]
            kinds = Counter(c.kind for c in built.cases if c.suite == suite)
            assert set(v["by_kind"]) == set(kinds)
            assert sum(v["by_kind"][k] * m for k, m in kinds.items()) == pytest.approx(v["failed"])
    with_photo = sum(b["image"] is not None for b in built.bases)
    assert sum(c.suite == "invariance" and "jpeg" in c.name for c in built.cases) == with_photo
    assert out["directional"]["n"] == 2 * len(built.bases)               # every base has a trace
    assert bh.score_cases(as_probs(sensor_rules), built)["invariance"]["failure_rate"] == 0.0
    assert bh.score_cases(as_probs(sensor_rules), built)["directional"]["failure_rate"] == 0.0
    assert bh.score_cases(constant, built)["invariance"]["failure_rate"] == 0.0


def test_cases_are_deterministic_and_a_random_model_fails_them() -> None:
    recs, labels = records()
    a, b = bh.build_cases(recs, labels, 8, seed=0), bh.build_cases(recs, labels, 8, seed=0)
    assert [c.name for c in a.cases] == [c.name for c in b.cases]
    assert [c.record for c in a.cases if c.suite != "minimum_functionality"] == \
           [c.record for c in b.cases if c.suite != "minimum_functionality"]
    noisy = bh.run_suites(lambda rs: np.random.default_rng(len(rs)).dirichlet(np.ones(5) * 0.3, len(rs)),
                          recs, labels, 8, 0)
    assert noisy["invariance"]["failure_rate"] > 0.3 and noisy["directional"]["failure_rate"] > 0.2
    assert all(" -> " in e for e in noisy["invariance"]["examples"] + noisy["directional"]["examples"])
