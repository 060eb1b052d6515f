"""Drift in an encoder's embedding space: has a window of served inputs moved away from training?

The test is a classifier two-sample test (Lopez-Paz and Oquab, ICLR 2017; the domain classifier of
"Failing Loudly", Rabanser et al., NeurIPS 2019, and the default `model` method of Evidently's
`EmbeddingsDrift`): a logistic regression learns on part of both samples (half of the records; with
shipments, a third of them) to tell window from reference, and the Mann-Whitney U test asks whether
its scores on the rest rank the window
above the reference (AUC above 0.5). One model scoring data it never saw keeps the test exact;
pooling out-of-fold scores of five models did not (13% of no-shift windows alarmed at 5%). Both
samples are standardised and reduced to `components` principal components first (fitted on both,
without their labels, so nothing leaks into the held-out scores).

With `groups` (each record's shipment) the test is on shipments, not records: a shipment's records
are near-duplicates (photos of one parcel, one note), so their held-out scores are one observation
repeated, and Mann-Whitney on records counted them as several (7 false alarms in 100 no-shift
windows at 5%). The held-out scores are averaged per shipment and Mann-Whitney ranks the shipment
means, which are independent draws under no shift whatever the clustering. The effect size stays
the record-level held-out AUC (how well the classifier tells a window record from a reference one).

scikit-learn and SciPy do every step; nothing here is a new statistic. It replaced a KS test per PCA
component with a Bonferroni correction, which caught 28% of windows whose fifth came from a new hub,
where this test (then on records) caught 83% (same windows, `make bench` at the time). Evidently itself does not
import next to pandas 3.1 (it imports `pandas.core.dtypes.common.infer_dtype_from_object`, removed
in 3.0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

METHOD = "domain_classifier_c2st"


@dataclass(frozen=True)
class DriftResult:
    drift: bool
    p_value: float   # one-sided Mann-Whitney U: the window's held-out scores rank above the reference's
    alpha: float
    components: int
    auc: float       # the held-out ROC AUC of records: 0.5 indistinguishable, 1.0 fully separable
    n_reference: int
    n_current: int
    units: str = "records"        # what Mann-Whitney ranked: shipments (mean held-out score) or records
    held_reference: int = 0       # held-out units tested on each side
    held_current: int = 0
    method: str = METHOD

    def as_dict(self) -> dict:
        return asdict(self)


def embedding_drift(reference: np.ndarray, current: np.ndarray, components: int = 32, alpha: float = 0.05,
                    seed: int = 0, groups: tuple[np.ndarray, np.ndarray] | None = None) -> DriftResult:
    """Two-sample test between `reference` (n, d) and `current` (m, d) embeddings of one encoder.

    `groups` (the shipment of each reference and each current record) keeps a shipment's records on
    one side of the fit/test split: photos of one parcel are near-duplicates, and a classifier that
    has fitted some of them as "window" scores the rest as "window" with no shift at all; and the
    held-out scores are tested per shipment (their mean), so a shipment counts once."""
    reference, current = _check(reference, "reference"), _check(current, "current")
    if reference.shape[1] != current.shape[1]:
        raise ValueError(f"embedding widths differ: reference {reference.shape[1]}, current {current.shape[1]} "
                         "(are both from the same encoder?)")
    if min(len(reference), len(current)) < 4:
        raise ValueError(f"need at least 4 embeddings on each side (some fit, the rest test), got "
                         f"{len(reference)} and {len(current)}")
    x = StandardScaler().fit_transform(np.vstack([reference, current]))
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    k = max(1, min(components, x.shape[1], len(x) - 1))
    # randomized SVD with one power iteration: the components need not be exact (they are fitted without
    # labels, so any of them keep the test exact), and the monitor bench runs the test thousands of times
    z = PCA(n_components=k, svd_solver="randomized", iterated_power=1, random_state=seed).fit_transform(x)
    group = None if groups is None else _group_codes(groups, y)
    if group is None:
        fit, held = next(StratifiedKFold(2, shuffle=True, random_state=seed).split(z, y))
    else:
        fit, held = group_split(group, y, seed)
    if len(np.unique(y[fit])) < 2 or len(np.unique(y[held])) < 2:
        raise ValueError("need at least 2 shipments on each side (one fits the classifier, one tests it)")
    clf = LogisticRegression(class_weight="balanced", solver="newton-cholesky", max_iter=100).fit(z[fit], y[fit])
    scores, y = clf.decision_function(z[held]), y[held]
    units_scores, units_y = (scores, y) if group is None else shipment_means(scores, y, group[held])
    test = mannwhitneyu(units_scores[units_y == 1], units_scores[units_y == 0], alternative="greater")
    record_u = mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").statistic
    return DriftResult(drift=bool(test.pvalue < alpha), p_value=float(test.pvalue), alpha=alpha, components=k,
                       auc=float(record_u / ((y == 1).sum() * (y == 0).sum())),
                       n_reference=len(reference), n_current=len(current),
                       units="records" if group is None else "shipments",
                       held_reference=int((units_y == 0).sum()), held_current=int((units_y == 1).sum()))


def shipment_means(scores: np.ndarray, y: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean held-out score per (side, shipment): the units the test ranks. A shipment id on both
    sides (a parcel seen in training and again in traffic) gives one unit per side."""
    unit, inverse = np.unique(np.c_[y, group], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    means = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    return means, unit[:, 0]


FIT_SHARE = 1 / 3   # of each side's shipments fit the classifier; the rest are tested


def group_split(group: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): a third of each side's shipments fit, two thirds test, a shipment
    wholly on one side. Testing two thirds detected a fifth of a window from a new hub in 56 of 60
    windows where halves detected 52 (monitor bench windows, same seeds): a logistic regression on 32
    components needs fewer records than the test does. A shipment on both sides goes with the side it
    first appears on. (StratifiedGroupKFold took longer than the test itself.)"""
    rng = np.random.default_rng(seed)
    codes, first = np.unique(group, return_index=True)
    held_codes = []
    for side in (0, 1):
        mine = rng.permutation(codes[y[first] == side])
        held_codes.append(mine[int(len(mine) * FIT_SHARE):])
    held = np.isin(group, np.concatenate(held_codes))
    return np.flatnonzero(~held), np.flatnonzero(held)


def _group_codes(groups: tuple[np.ndarray, np.ndarray], y: np.ndarray) -> np.ndarray:
    group = np.unique(np.concatenate([np.asarray(g).astype(str) for g in groups]), return_inverse=True)[1]
    if len(group) != len(y):
        raise ValueError(f"groups: {len(group)} labels for {len(y)} embeddings")
    return group


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: need a 2-D array of at least 2 embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite values; drop those records first")
    return x
