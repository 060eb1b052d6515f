"""Temperature scaling: the one post-hoc change to the model's probabilities, fitted on calib shipments.

Label smoothing in training caps the top probability near 0.96 and leaves the model under-confident
where it is right; one temperature T, fitted by likelihood on part of the calib split, sharpens (T < 1)
or softens (T > 1) every answer alike. It never changes the top class, so macro-F1 and every label
stay as they were; it changes the probabilities served, the prediction sets and which answers clear
a confidence threshold.

softmax(logits / T) equals p ** (1 / T) renormalised, so scaling works on probabilities: the torch
predictor, ONNX Runtime's and evaluation apply the same `apply_temperature` after their softmax, and T
travels in the model version's `selective.json`. Pure numpy/scipy: the serving image imports it.
"""
from __future__ import annotations

import numpy as np

FLOOR = 1e-12          # log(0) guard: a probability that underflowed stays the least likely class
BOUNDS = (0.05, 20.0)  # temperatures searched; outside them the model or the data is broken


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row by row; T = 1 returns `probs` unchanged (an unscaled model)."""
    if temperature == 1.0 or len(probs) == 0:
        return probs
    z = np.log(np.clip(np.asarray(probs, np.float64), FLOOR, None)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.asarray(probs).dtype)


def nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the observed labels after scaling."""
    p = apply_temperature(np.asarray(probs, np.float64), temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], FLOOR, None)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on (probs, y), searched over log T in BOUNDS."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda t: nll(probs, y, float(np.exp(t))), bounds=np.log(BOUNDS), method="bounded",
                          options={"xatol": 1e-4})
    return round(float(np.exp(res.x)), 6)
