"""Drift in an encoder's embedding space: has a window of served inputs moved away from training?

The test is the one "Failing Loudly" (Rabanser, Günnemann, Lipton, NeurIPS 2019) found most
reliable for high-dimensional inputs: reduce both samples with a PCA fitted on the reference, run a
two-sample Kolmogorov-Smirnov test on each component (`scipy.stats.ks_2samp`) and combine them with
a Bonferroni correction, so the family-wise false-alarm rate stays at `alpha` however many
components are tested. Every statistic comes from scikit-learn and SciPy; nothing here is a new
statistic. Evidently's `EmbeddingsDrift` was the first choice, but evidently 0.7.23 does not import
next to pandas 3.1 (it imports `pandas.core.dtypes.common.infer_dtype_from_object`, removed in 3.0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import ks_2samp
from sklearn.decomposition import PCA

METHOD = "pca_ks_bonferroni"


@dataclass(frozen=True)
class DriftResult:
    drift: bool
    p_value: float           # Bonferroni-corrected: min over components of p * k, at most 1
    alpha: float
    components: int
    drifted_components: int  # components whose own corrected p-value is below alpha
    max_ks: float            # the largest KS statistic: how far the most-moved component went
    n_reference: int
    n_current: int
    method: str = METHOD

    def as_dict(self) -> dict:
        return asdict(self)


def embedding_drift(reference: np.ndarray, current: np.ndarray, components: int = 20, alpha: float = 0.05,
                    seed: int = 0) -> DriftResult:
    """Two-sample test between `reference` (n, d) and `current` (m, d) embeddings of one encoder."""
    reference, current = _check(reference, "reference"), _check(current, "current")
    if reference.shape[1] != current.shape[1]:
        raise ValueError(f"embedding widths differ: reference {reference.shape[1]}, current {current.shape[1]} "
                         "(are both from the same encoder?)")
    fit, reference = _halves(reference, seed)
    k = max(1, min(components, reference.shape[1], len(fit) - 1))
    pca = PCA(n_components=k, random_state=seed).fit(fit)
    ref, cur = pca.transform(reference), pca.transform(current)
    tests = [ks_2samp(ref[:, j], cur[:, j]) for j in range(k)]
    corrected = np.minimum(np.array([t.pvalue for t in tests]) * k, 1.0)
    return DriftResult(drift=bool(corrected.min() < alpha), p_value=float(corrected.min()), alpha=alpha,
                       components=k, drifted_components=int((corrected < alpha).sum()),
                       max_ks=float(max(t.statistic for t in tests)), n_reference=len(reference),
                       n_current=len(current))


def _halves(reference: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The PCA is fitted on one random half and the test uses the other: projected on components fitted
    to it, a sample's own variance is inflated on the first and shrunk on the last, which alone made 13%
    of no-shift windows alarm at alpha 0.05 (tests/unit/test_embedding_drift.py)."""
    if len(reference) < 4:
        raise ValueError(f"reference: need at least 4 embeddings, got {len(reference)}")
    order = np.random.default_rng(seed).permutation(len(reference))
    half = len(reference) // 2
    return reference[order[:half]], reference[order[half:]]


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: need a 2-D array of at least 2 embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite values; drop those records first")
    return x
