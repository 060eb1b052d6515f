"""Drift of new profile rows against reference rows (the data the champion was trained on).

Pure functions over DataFrames: no I/O, no MLflow, no Great Expectations, so the
statistics are unit-testable in milliseconds and the validate stage only feeds frames
in and writes what comes out.

Why PSI decides the status: it is one number per column, numeric or categorical, with
thresholds people already know (0.1 / 0.25). Numeric columns are binned at the
reference's quantiles, so every reference bin holds data and a shift moves mass
between bins. The two-sample KS statistic is reported next to it because it needs no
binning, but it does not set the status (with thousands of rows it flags shifts too
small to matter).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

NUMERIC_COLUMNS: tuple[str, ...] = (
    "image_width", "image_height", "image_brightness", "note_length", "note_unk_share",
    "sensor_rows", "temperature_min", "temperature_max", "humidity_min", "humidity_max",
    "shock_max", "light_max")
CATEGORICAL_COLUMNS: tuple[str, ...] = ("hub", "note_lang", "label",
                                        "has_image", "has_note", "has_sensor")
OK, WARN, FAIL = "ok", "warn", "fail"
NO_REFERENCE, NOT_RUN = "no_reference", "not_run"
NULL = "(null)"        # missing value as its own category: more unlabelled rows is drift too
EPS = 1e-4             # share given to an empty bin, so a new category gives a large finite PSI
MAX_BINS = 10
ROWS_PER_BIN = 100     # fewer rows per bin and sampling noise alone nears PSI 0.1
SMALL_SAMPLE = 500     # below this many compared rows the report says PSI may be noise
_RANK = {OK: 0, WARN: 1, FAIL: 2}


# --------------------------------------------------------------------------- statistics


def psi(ref_shares: np.ndarray, new_shares: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    r = np.clip(np.asarray(ref_shares, dtype=float), EPS, None)
    n = np.clip(np.asarray(new_shares, dtype=float), EPS, None)
    return float(np.sum((n - r) * np.log(n / r)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    gap = (np.searchsorted(a, grid, side="right") / len(a)
           - np.searchsorted(b, grid, side="right") / len(b))
    return float(np.max(np.abs(gap)))


def bin_count(n_ref: int, n_new: int) -> int:
    """Fewer bins for small samples: PSI's noise floor grows with bins / rows."""
    return int(np.clip(min(n_ref, n_new) // ROWS_PER_BIN, 2, MAX_BINS))


def quantile_edges(ref: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles (ties collapse to fewer bins)."""
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin (-inf, e0], (e0, e1], ..., (e_last, inf): zeros stay in bin 0."""
    idx = np.searchsorted(edges, values, side="left")
    return np.bincount(idx, minlength=len(edges) + 1) / max(len(values), 1)


def status_of(value: float | None, warn: float, fail: float) -> str:
    """ok / warn / fail by the PSI thresholds of params `validate:`."""
    if value is None:
        return OK
    return FAIL if value >= fail else WARN if value >= warn else OK


# --------------------------------------------------------------------------- columns


def _numeric(series: pd.Series) -> np.ndarray:
    """Non-null values as float (Int64 <NA> and NaN dropped: missingness is has_*'s job)."""
    values = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
    return values[~np.isnan(values)]


def _categories(series: pd.Series) -> pd.Series:
    """Values as strings with null as the NULL category (True/False for the has_* flags)."""
    obj = series.astype("object")
    return obj.where(obj.notna(), NULL).astype(str)


def numeric_drift(ref: pd.Series, new: pd.Series) -> dict[str, Any]:
    """PSI over reference-quantile bins, KS, and the two means for the report."""
    r, n = _numeric(ref), _numeric(new)
    out: dict[str, Any] = {"kind": "numeric", "n_ref": len(r), "n_new": len(n)}
    if not len(r) or not len(n):
        return {**out, "psi": None, "ks": None, "ref_mean": None, "new_mean": None,
                "note": "no values on one side"}
    edges = quantile_edges(r, bin_count(len(r), len(n)))
    return {**out, "psi": psi(bin_shares(r, edges), bin_shares(n, edges)),
            "ks": ks_statistic(r, n), "ref_mean": float(r.mean()), "new_mean": float(n.mean())}


def categorical_drift(ref: pd.Series, new: pd.Series) -> dict[str, Any]:
    """PSI over the union of categories; shares kept so the report can say what moved."""
    r = _categories(ref).value_counts(normalize=True)
    n = _categories(new).value_counts(normalize=True)
    cats = sorted(set(r.index) | set(n.index))
    r, n = r.reindex(cats, fill_value=0.0), n.reindex(cats, fill_value=0.0)
    value = psi(r.to_numpy(), n.to_numpy()) if len(ref) and len(new) else None
    return {"kind": "categorical", "n_ref": int(len(ref)), "n_new": int(len(new)),
            "psi": value, "ks": None,
            "ref_shares": {k: round(float(v), 4) for k, v in r.items()},
            "new_shares": {k: round(float(v), 4) for k, v in n.items()},
            "new_values": [c for c in cats if r[c] == 0.0]}


def column_drift(name: str, ref: pd.Series, new: pd.Series, warn: float,
                 fail: float) -> dict[str, Any]:
    """One column's entry: `statistic` is the PSI that set `status`."""
    fn = numeric_drift if name in NUMERIC_COLUMNS else categorical_drift
    out = fn(ref, new)
    if out["psi"] is not None:
        out["psi"] = round(out["psi"], 4)
    if out["ks"] is not None:
        out["ks"] = round(out["ks"], 4)
    return {"statistic": out["psi"], "status": status_of(out["psi"], warn, fail), **out}


# --------------------------------------------------------------------------- report


def compute_drift(reference: pd.DataFrame, new: pd.DataFrame, psi_warn: float,
                  psi_fail: float) -> dict[str, Any]:
    """Per-column drift of `new` against `reference`; overall status is the worst column.

    Columns missing on either side are skipped (listed under `skipped`), so an older
    reference artifact still yields a report for the columns it has.
    """
    if not 0 <= psi_warn <= psi_fail:
        raise ValueError(f"need 0 <= drift_psi_warn ({psi_warn}) <= drift_psi_fail ({psi_fail})")
    names = NUMERIC_COLUMNS + CATEGORICAL_COLUMNS
    present = [c for c in names if c in reference.columns and c in new.columns]
    columns = {c: column_drift(c, reference[c], new[c], psi_warn, psi_fail) for c in present}
    worst = max((col["status"] for col in columns.values()), key=_RANK.get, default=OK)
    return {"status": worst,
            "thresholds": {"psi_warn": psi_warn, "psi_fail": psi_fail},
            "columns": columns,
            "fail": [c for c, v in columns.items() if v["status"] == FAIL],
            "warn": [c for c, v in columns.items() if v["status"] == WARN],
            "skipped": [c for c in names if c not in present]}


def no_reference_report() -> dict[str, Any]:
    """What drift.json says before any champion (or one trained without a reference)."""
    return {"reference": None, "columns": {}, "status": NO_REFERENCE}


def not_run_report(reason: str) -> dict[str, Any]:
    """drift.json when validation itself could not run or the reference could not be read."""
    return {"reference": None, "columns": {}, "status": NOT_RUN, "message": reason}


def new_rows(profile: pd.DataFrame, reference: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows to compare: those of batches the reference has never seen.

    The raw table accumulates every batch, so comparing all of it with the champion's
    training rows would dilute a drifting new batch more with every ingest. When no
    batch is new (re-validation, or no batch_id column) all rows are compared.
    """
    if "batch_id" in profile and "batch_id" in reference:
        seen = set(reference["batch_id"].dropna().astype(str))
        mask = ~profile["batch_id"].astype(str).isin(seen).to_numpy()
        if mask.any():
            batches = sorted(set(profile.loc[mask, "batch_id"].astype(str)))
            return mask, {"scope": "new_batches", "rows": int(mask.sum()), "batches": batches}
    return np.ones(len(profile), dtype=bool), {"scope": "all_rows", "rows": int(len(profile))}


# --------------------------------------------------------------------------- GX partitions


def continuous_partition(ref: pd.Series, n_new: int) -> dict[str, list[float]] | None:
    """GX `partition_object` from reference quantiles (finite edges incl. min and max).

    Same binning rule as the PSI, so GX's KL check and the PSI look at the same bins.
    None when the reference is constant (no partition to compare against).
    """
    r = _numeric(ref)
    if not len(r):
        return None
    bins = bin_count(len(r), max(n_new, 1))
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return None
    weights = np.histogram(r, edges)[0] / len(r)
    return {"bins": [float(e) for e in edges], "weights": [float(w) for w in weights]}


def categorical_partition(ref: pd.Series) -> dict[str, list[Any]] | None:
    """GX categorical `partition_object` of the non-null reference values."""
    shares = ref.dropna().astype(str).value_counts(normalize=True).sort_index()
    if shares.empty:
        return None
    return {"values": list(shares.index), "weights": [float(w) for w in shares]}


def mean_bounds(ref: pd.Series, k: float) -> tuple[float, float] | None:
    """Reference mean +- k * std: a coarse GX-side check that the centre did not move."""
    r = _numeric(ref)
    if len(r) < 2:
        return None
    mu, sd = float(r.mean()), float(r.std(ddof=1))
    return mu - k * sd, mu + k * sd


# --------------------------------------------------------------------------- markdown


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _detail(col: dict[str, Any]) -> str:
    """What moved, in words: the mean for numbers, new or the most moved category else."""
    if col.get("note"):
        return col["note"]
    if col["kind"] == "numeric":
        return f"mean {_fmt(col['ref_mean'], 2)} → {_fmt(col['new_mean'], 2)}"
    ref, new = col["ref_shares"], col["new_shares"]
    if col["new_values"]:
        return "new: " + ", ".join(f"{v} ({new[v]:.1%})" for v in col["new_values"][:5])
    cat = max(ref, key=lambda c: abs(new[c] - ref[c]))
    return f"{cat} {ref[cat]:.1%} → {new[cat]:.1%}"


def _source(report: dict[str, Any]) -> str:
    """One sentence on what was compared with what."""
    ref = report.get("reference") or {}
    if ref.get("version"):
        what = (f"{ref.get('model')} version {ref['version']} ({ref.get('alias', 'champion')}, "
                f"run {str(ref.get('run_id'))[:12]}), {ref.get('rows', '?')} training rows")
    else:
        what = f"{ref.get('rows', '?')} reference rows"
    cmp = report.get("compared") or {}
    scope = (f"{cmp.get('rows')} rows of batches not in the reference "
             f"({', '.join(cmp.get('batches', [])[:10])})" if cmp.get("scope") == "new_batches"
             else f"all {cmp.get('rows', '?')} rows (no batch is new to the reference)")
    return f"Reference: {what}. Compared: {scope}."


def _headline(report: dict[str, Any]) -> str:
    """The sentence a reader needs if they read nothing else."""
    t = report["thresholds"]
    n = len(report["columns"])
    fails, warns = report["fail"], report["warn"]
    if not fails and not warns:
        return f"No drift: all {n} columns have PSI < {t['psi_warn']}."
    parts = []
    if fails:
        parts.append(f"{len(fails)} of {n} columns drifted past the fail threshold "
                     f"(PSI ≥ {t['psi_fail']}): {', '.join(fails)}.")
    if warns:
        parts.append(f"{len(warns)} warn (PSI ≥ {t['psi_warn']}): {', '.join(warns)}.")
    return " ".join(parts)


def _table(report: dict[str, Any]) -> list[str]:
    """One Markdown table row per column, fails first, then warns."""
    lines = ["| column | status | PSI | KS | rows ref / new | reference → new |",
             "|---|---|---:|---:|---:|---|"]
    order = sorted(report["columns"].items(), key=lambda kv: -_RANK[kv[1]["status"]])
    for name, col in order:
        status = f"**{col['status'].upper()}**" if col["status"] == FAIL else col["status"]
        lines.append(f"| {name} | {status} | {_fmt(col['psi'])} | {_fmt(col['ks'])} | "
                     f"{col['n_ref']} / {col['n_new']} | {_detail(col)} |")
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    """How to read the numbers, and when not to trust them."""
    t = report["thresholds"]
    out = [f"PSI: population stability index over reference-quantile bins (numeric) or "
           f"categories (null counted as one); ok < {t['psi_warn']} ≤ warn < {t['psi_fail']} "
           f"≤ fail. KS: two-sample Kolmogorov-Smirnov statistic, for information only."]
    if (report.get("compared") or {}).get("rows", SMALL_SAMPLE) < SMALL_SAMPLE:
        out.append(f"Few rows compared (< {SMALL_SAMPLE}): a PSI near the warn threshold, "
                   f"especially for categories, can be sampling noise.")
    if report.get("skipped"):
        out.append(f"Not compared (column missing on one side): {', '.join(report['skipped'])}.")
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """drift.md: headline, what was compared, one table row per column (worst first)."""
    if report["status"] == NO_REFERENCE:
        return ("# Data drift: no reference\n\nNo drift computed: there is no champion model "
                "yet, or its training run logged no reference data (`reference/profile.parquet`)."
                " The first champion trained by this pipeline becomes the reference.\n")
    if not report.get("columns"):
        reason = report.get("message") or "no column could be compared"
        return f"# Data drift: {report['status']}\n\nNo drift computed: {reason}\n"
    head = [f"# Data drift: {report['status'].upper()}", _headline(report), _source(report)]
    return "\n\n".join(head + ["\n".join(_table(report))] + _notes(report)) + "\n"
