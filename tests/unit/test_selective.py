"""Abstention (mmcore.selective): the sets served are MAPIE's sets, their coverage holds on fresh records,
the certified threshold keeps automatic decisions precise, disagreement flags contradicting modalities,
and the gate enforces coverage, per-class precision and the automation drop."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from mmcore.config import CLASSES, SelectiveConfig
from mmcore.gate import decide, precision_upper, selective_rules
from mmcore.model import Batch
from mmcore.selective.calibrate import Calibration, calibrate, conformal_sets, precision_thresholds, scale
from mmcore.selective.decide import (answers, leave_one_out_disagreement, pairwise_disagreement,
                                     prediction_sets)
from mmcore.selective.evaluate import contradicted, goals, routing_metrics
from tests.unit.test_gate import CFG, scores

SEL = SelectiveConfig()
K = len(CLASSES)


def problem(n: int, seed: int, strength: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a fair but imperfect classifier: the true class's logit gets a gamma-sized push."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), y] += rng.gamma(2.0, strength / 2, n)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def test_served_sets_are_mapies_sets() -> None:
    probs, y = problem(400, 0)
    fresh, _ = problem(300, 1)
    scc = conformal_sets(probs, y, 0.1)
    cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool), SelectiveConfig(scaling_share=0.0))
    assert cal.temperature == 1.0 and cal.info["threshold_records"] == 400
    _, mapie_sets = scc.predict_set(fresh)
    assert np.array_equal(prediction_sets(fresh, cal.set_quantile), mapie_sets[:, :, 0])


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_holds_on_fresh_records(alpha: float) -> None:
    covered = []
    for seed in range(20):
        probs, y = problem(300, seed)
        test, yt = problem(500, 100 + seed)
        cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool), SelectiveConfig(alpha=alpha))
        covered.append(prediction_sets(scale(test, cal), cal.set_quantile)[np.arange(len(yt)), yt].mean())
    assert np.mean(covered) >= 1 - alpha - 0.01
    assert np.mean(covered) <= 1 - alpha + 0.05      # not vacuous: the sets are not every class


def test_certified_threshold_keeps_automatic_precision() -> None:
    probs, y = problem(6000, 3, strength=6.0)
    thr = precision_thresholds(probs, y, target=0.95, delta=0.1)
    assert None not in thr
    test, yt = problem(6000, 4, strength=6.0)
    pred = test.argmax(1)
    auto = test.max(1) >= np.array(thr)[pred]
    assert 0.2 < auto.mean() < 1.0
    for c in range(K):
        decided = auto & (pred == c)
        assert (yt[decided] == c).mean() >= 0.95


def test_too_few_records_certify_nothing_and_everything_goes_to_review() -> None:
    probs, y = problem(60, 5)
    cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool), SEL)
    assert set(cal.confidence_thresholds.values()) == {None} and cal.info["certified"] == []
    assert "fewer than the" in cal.info["why_uncertified"]["pooled"]
    out = answers(probs, np.zeros(len(y)), cal, list(CLASSES))
    assert {a["decision"] for a in out} == {"review"}
    assert all("low_confidence" in a["review_reason"] for a in out)


def test_answer_reasons() -> None:
    cal = Calibration(alpha=0.1, set_quantile=0.6, confidence_thresholds=dict.fromkeys(CLASSES, 0.9),
                      disagreement_threshold=0.3,
                      min_auto_precision=0.98, delta=0.1)
    probs = np.array([[0.95, 0.02, 0.01, 0.01, 0.01],     # sure, modalities agree: auto
                      [0.5, 0.45, 0.02, 0.02, 0.01],      # two classes over 0.4: set of two, low confidence
                      [0.95, 0.02, 0.01, 0.01, 0.01]])    # sure, but the modalities disagree
    out = answers(probs, np.array([0.1, 0.1, 0.5]), cal, list(CLASSES))
    assert [a["decision"] for a in out] == ["auto", "review", "review"]
    assert out[0] == {"prediction_set": ["normal"], "decision": "auto", "review_reason": [], "disagreement": 0.1}
    assert out[1]["prediction_set"] == ["normal", "damaged"]
    assert out[1]["review_reason"] == ["set_size", "low_confidence"]
    assert out[2]["review_reason"] == ["modalities_disagree"]
    uncalibrated = answers(probs[:1], np.zeros(1), None, list(CLASSES))[0]
    assert uncalibrated["review_reason"] == ["uncalibrated"] and uncalibrated["prediction_set"] == list(CLASSES)


def test_disagreement_counts_only_present_modalities() -> None:
    sure = np.eye(K)
    opinions = np.stack([np.stack([sure[0], sure[0], sure[1]]), np.stack([sure[0], sure[1], sure[2]])])
    both = pairwise_disagreement(opinions, np.array([[True, True, False], [True, True, True]]))
    assert both[0] == pytest.approx(0.0) and both[1] == pytest.approx(1.0)
    alone = np.array([[True, False, False], [False, False, False]])
    assert pairwise_disagreement(opinions, alone).tolist() == [0.0, 0.0]
    # leave one out: each modality against what the fused model says without it
    others = np.stack([np.stack([sure[0]] * 3), np.stack([sure[0], sure[0], sure[0]])])
    loo = leave_one_out_disagreement(opinions, others, np.array([[True, True, False], [True, True, True]]))
    assert loo[0] == pytest.approx(0.0) and loo[1] == pytest.approx(1.0)    # record 1's note and trace say otherwise
    assert leave_one_out_disagreement(opinions, others, alone).tolist() == [0.0, 0.0]


def test_contradictions_swap_in_another_class() -> None:
    n = 12
    y = np.arange(n) % K
    batch = Batch(image=torch.randn(n, 4), text=torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3),
                  sensor=torch.randn(n, 4, 8), mask=torch.ones(n, 3), ngrams=torch.zeros(n, 2))
    batch.mask[0, 0] = batch.mask[0, 2] = 0            # record 0 has a note alone: nothing to contradict
    swapped, idx = contradicted(batch, y, "text", seed=0)
    assert 0 not in idx.tolist() and len(idx) == n - 1
    donors = swapped.text[idx, 0].long().numpy()
    assert (y[donors] != y[idx]).all()
    assert torch.equal(swapped.sensor, batch.sensor)


def test_routing_metrics_and_goals() -> None:
    probs, y = problem(2000, 7, strength=8.0)
    cal = calibrate(probs[:1000], y[:1000], np.zeros(1000), np.zeros(1000, bool),
                    SelectiveConfig(min_auto_precision=0.95))
    m = routing_metrics(scale(probs[1000:], cal), y[1000:], np.zeros(1000), cal, list(CLASSES))
    assert m["coverage"]["overall"] >= 0.87 and set(m["coverage"]["per_class"]) == set(CLASSES)
    assert 0 < m["automation_rate"] < 1 and m["mean_set_size"] >= 0.8
    assert sum(v["n"] for v in m["auto_precision"].values()) == round(m["automation_rate"] * 1000)
    pooled = m["auto_precision_pooled"]
    assert pooled["n"] == round(m["automation_rate"] * 1000) and pooled["lower_bound"] < pooled["precision"]
    assert m["empty_set_rate"] == 0.0
    g = goals({**m, "contradictions": {"auroc": 0.95, "clean_flag_rate": 0.04}})
    assert g["contradiction_auroc"]["met"] and g["clean_flag_rate"]["met"]
    assert g["coverage"]["value"] == m["coverage"]["overall"]


def selective(coverage: float, precision: float | None, rate: float, n: int = 50, high: float | None = None,
              mode: str = "per_class") -> dict:
    """A section as evaluate writes it; `high`: the coverage's bootstrap upper bound (coverage + 0.02 unless given);
    `mode`: how the calibration certified precision (per class: n records a class; pooled: n in all)."""
    each = {"precision": precision, "n": n if precision is not None else 0}
    return {"calibrated": True, "coverage": {"overall": coverage}, "certified_on_calib": {"mode": mode},
            "coverage_ci": {"low": coverage - 0.02, "high": coverage + 0.02 if high is None else high},
            "auto_precision": dict.fromkeys(CLASSES, each), "auto_precision_pooled": each, "automation_rate": rate}


def failed(metrics: dict) -> list[str]:
    return [r["rule"] for r in selective_rules(metrics, SEL) if not r["passed"]]


def test_gate_fails_selective_rules_only_on_evidence() -> None:
    assert failed({"selective": selective(0.9, 0.99, 0.8)}) == []
    assert failed({"selective": selective(0.85, 0.99, 0.8)}) == ["selective_coverage"]       # upper 0.87 < 0.88
    assert failed({"selective": selective(0.87, 0.99, 0.8, high=0.90)}) == []               # short, maybe by chance
    assert failed({"selective": selective(0.9, 0.96, 0.8, n=50)}) == []       # 48/50: could still be 0.94
    assert failed({"selective": selective(0.9, 0.9, 0.8, n=400)}) == [f"auto_precision:{c}" for c in CLASSES]
    assert failed({"selective": selective(0.9, None, 0.0)}) == []          # nothing automatic: nothing to check
    # certified pooled: the pooled precision is what was promised and what is judged, not each class's
    assert failed({"selective": selective(0.9, 0.9, 0.8, n=400, mode="pooled")}) == ["auto_precision_pooled"]
    assert failed({"selective": selective(0.9, 0.96, 0.8, n=50, mode="pooled")}) == []
    old = {"selective": selective(0.9, 0.99, 0.85)}
    assert failed({"selective": selective(0.9, 0.99, 0.81), "champion": old}) == []
    assert failed({"selective": selective(0.9, 0.99, 0.75), "champion": old}) == ["automation_drop"]
    assert "selective_coverage" in [r["rule"] for r in decide(scores(), CFG, SEL)[1] if not r["passed"]]


def test_the_precision_bound_is_clopper_pearson() -> None:
    from scipy.stats import binomtest

    for k, n in [(45, 50), (390, 400), (10, 10), (0, 5)]:
        upper = precision_upper(k, n, 0.05)
        assert upper == 1.0 if k == n else abs(binomtest(k, n).proportion_ci(0.90, "exact").high - upper) < 1e-9


def smoothed(n: int, seed: int, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A label-smoothed model (top probability capped near 0.92) scored against labels with `noise` wrong:
    (probabilities, observed labels, shipments of 5 records)."""
    rng = np.random.default_rng(seed)
    probs, y = problem(n, seed, strength=6.0)
    probs = 0.9 * probs + 0.1 / K
    flip = rng.random(n) < noise
    y = np.where(flip, (y + rng.integers(1, K, n)) % K, y)
    return probs, y, np.arange(n) // 5


def test_search_starts_at_the_most_conservative_supported_threshold() -> None:
    """The top of the grid holds no prediction of a smoothed model: the search skips it rather than stop
    there, certifies the pooled target, and the threshold keeps it on fresh records."""
    probs, y, ships = smoothed(1200, 11)
    cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool), SEL, shipments=ships)
    test = cal.info["tests"]["pooled"]
    assert cal.info["mode"] == "pooled" and cal.info["why_uncertified"] == {}
    assert test["n"] >= test["start_support"] and test["lower_bound"] >= SEL.min_auto_precision
    assert len(set(cal.confidence_thresholds.values())) == 1 and cal.temperature < 1     # smoothing undone
    fresh, yf, _ = smoothed(4000, 12)
    m = routing_metrics(scale(fresh, cal), yf, np.zeros(len(yf)), cal, list(CLASSES))
    assert m["automation_rate"] >= 0.5 and m["auto_precision_pooled"]["precision"] >= SEL.min_auto_precision


def test_per_class_thresholds_once_every_class_has_enough_records() -> None:
    probs, y, ships = smoothed(1200, 13)
    cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool),
                    SelectiveConfig(per_class_min_records=60), shipments=ships)
    assert cal.info["mode"] == "per_class" and set(cal.info["tests"]) == set(CLASSES)
    assert min(cal.info["calib_records_per_class"].values()) >= 60


def test_a_target_above_what_noisy_labels_show_certifies_nothing_and_says_why() -> None:
    probs, y, ships = smoothed(1200, 14)
    cal = calibrate(probs, y, np.zeros(len(y)), np.zeros(len(y), bool),
                    SelectiveConfig(min_auto_precision=0.98, label_noise=0.03), shipments=ships)
    assert cal.info["certified"] == [] and "label noise" in cal.info["why_uncertified"]["pooled"]


def test_temperature_is_fitted_on_whole_shipments_and_changes_no_label() -> None:
    from mmcore.selective.calibrate import scaling_part
    from mmcore.selective.scaling import apply_temperature, fit_temperature

    ships = np.repeat(np.arange(40), np.arange(40) % 7 + 1)
    part = scaling_part(ships, 0.5)
    assert all(len(set(part[ships == s])) == 1 for s in np.unique(ships))
    assert len(np.unique(ships[part])) == 20
    probs, _ = problem(4000, 15)
    y = (np.random.default_rng(15).random((len(probs), 1)) > probs.cumsum(1)).sum(1)   # labels drawn from probs
    soft = apply_temperature(probs, 2.0)                  # a calibrated model made twice too soft
    assert fit_temperature(soft, y) == pytest.approx(0.5, rel=0.1)
    assert np.array_equal(apply_temperature(soft, 0.5).argmax(1), probs.argmax(1))
    assert apply_temperature(probs, 1.0) is probs
    cal = calibrate(soft[:1000], y[:1000], np.zeros(1000), np.zeros(1000, bool), SEL, scaling=(soft[1000:], y[1000:]))
    assert cal.info["threshold_records"] == 1000 and cal.info["scaling_split"] == "val"     # all of calib certifies
    assert cal.temperature == pytest.approx(0.5, rel=0.1)


@given(st.lists(st.lists(st.floats(1e-6, 1.0), min_size=K, max_size=K), min_size=1, max_size=20),
       st.floats(0.05, 20.0))
@settings(max_examples=60, deadline=None)
def test_scaling_keeps_distributions_and_the_top_class(rows: list[list[float]], temperature: float) -> None:
    from mmcore.selective.scaling import apply_temperature

    p = np.array(rows) / np.array(rows).sum(1, keepdims=True)
    out = apply_temperature(p, temperature)
    assert np.allclose(out.sum(1), 1.0) and (out >= 0).all()
    top = p.max(1, keepdims=True)
    clear = (p >= top - 1e-9).sum(1) == 1                 # a tie may break either way
    assert np.array_equal(out.argmax(1)[clear], p.argmax(1)[clear])


def test_an_empty_set_is_never_served() -> None:
    cal = Calibration(alpha=0.1, set_quantile=0.3, confidence_thresholds=dict.fromkeys(CLASSES, 0.35),
                      disagreement_threshold=None, min_auto_precision=0.94, delta=0.1)
    probs = np.array([[0.4, 0.3, 0.1, 0.1, 0.1], [0.75, 0.1, 0.05, 0.05, 0.05]])
    out = answers(probs, np.zeros(2), cal, list(CLASSES))
    assert out[0]["prediction_set"] == ["normal"] and out[0]["decision"] == "review"
    assert out[0]["review_reason"] == ["set_size"]
    assert out[1]["decision"] == "auto"
    m = routing_metrics(probs, np.array([0, 0]), np.zeros(2), cal, list(CLASSES))
    assert m["empty_set_rate"] == 0.0 and m["empty_sets_filled"] == 1 and m["mean_set_size"] == 1.0
