"""Evaluation plots, twice: data files `dvc plots show` renders (declared in dvc.yaml) and PNGs
(matplotlib, Agg) that go to the training run in MLflow.

Inputs are per model name (`challenger`, `champion`), so a first model simply has one entry.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

MODEL_COLOURS = {"challenger": "tab:blue", "champion": "tab:orange"}


def _write_json(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


# --- DVC plot data -----------------------------------------------------------------------

def confusion_rows(path: Path, labels: list[str], y_true: np.ndarray, y_pred: np.ndarray) -> Path:
    """One `actual,predicted` row per gate-set record (DVC template `confusion`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        w.writerows([labels[int(a)], labels[int(p)]] for a, p in zip(y_true, y_pred))
    return path


def reliability_rows(path: Path, bins: dict[str, list[dict[str, Any]]]) -> Path:
    """Accuracy per confidence bin (x: bin centre) for each model, plus the diagonal; null for empty bins.

    Both model columns are always present (null when there is no champion), so one dvc.yaml
    definition serves the first model and later ones."""
    ref = next(iter(bins.values()))
    rows = []
    for i, b in enumerate(ref):
        centre = round((b["lower"] + b["upper"]) / 2, 6)
        row = {"confidence": centre, "perfect": centre}
        for model in ("challenger", "champion"):
            row[model] = bins[model][i]["accuracy"] if model in bins else None
        rows.append(row)
    return _write_json(path, rows)


def per_class_rows(path: Path, f1: dict[str, dict[str, float]]) -> Path:
    """`{"class", "model", "f1"}` rows: grouped bars per class (template mmcore/plot_templates/grouped_bar.json)."""
    rows = [{"class": cls, "model": model, "f1": float(f1[model][cls])}
            for cls in next(iter(f1.values())) for model in ("champion", "challenger") if model in f1]
    return _write_json(path, rows)


def training_rows(path: Path, history: dict[str, list[tuple[int, float]]]) -> Path:
    """Per-epoch curves of the training run, one row per step, a column per MLflow metric (null when absent)."""
    steps = sorted({s for series in history.values() for s, _ in series})
    by_key = {k: dict(series) for k, series in history.items()}
    rows = [{"step": s, **{k: by_key[k].get(s) for k in sorted(by_key)}} for s in steps]
    return _write_json(path, rows)


# --- PNGs --------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(path: Path, labels: list[str], cms: dict[str, list[list[int]]]) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cms), figsize=(5.5 * len(cms), 5), squeeze=False)
    for ax, (model, cm) in zip(axes[0], cms.items()):
        m = np.asarray(cm)
        rates = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="actual",
               title=f"{model}: confusion (colour = row share)")
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_yticklabels(labels)
    return _save(fig, path)


def reliability_png(path: Path, bins: dict[str, list[dict[str, Any]]], eces: dict[str, float]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    for model, rows in bins.items():
        pts = [(b["confidence"], b["accuracy"]) for b in rows if b["count"]]
        ax.plot(*zip(*pts), "o-", color=MODEL_COLOURS.get(model), label=f"{model} (ECE {eces[model]:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy", title="Reliability")
    ax.legend(loc="upper left")
    return _save(fig, path)


def per_class_png(path: Path, f1: dict[str, dict[str, float]]) -> Path:
    plt = _pyplot()
    classes = list(next(iter(f1.values())))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(f1)
    for k, (model, scores) in enumerate(f1.items()):
        x = np.arange(len(classes)) + (k - (len(f1) - 1) / 2) * width
        bars = ax.bar(x, [scores[c] for c in classes], width, color=MODEL_COLOURS.get(model), label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=20, ha="right")
    ax.set(ylim=(0, 1.18), ylabel="F1", title="Per-class F1 on the gate set")
    ax.legend(loc="upper left", ncol=len(f1))
    return _save(fig, path)


def training_png(path: Path, history: dict[str, list[tuple[int, float]]]) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, suffix, title in zip(axes, ("_train_loss", "_val_macro_f1"), ("training loss", "validation macro-F1")):
        for key in sorted(k for k in history if k.endswith(suffix)):
            steps, values = zip(*sorted(history[key])) if history[key] else ((), ())
            ax.plot(steps, values, label=key[: -len(suffix)])
        ax.set(xlabel="epoch", title=title)
        ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
