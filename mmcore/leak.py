"""Proof that the gate set is held out from what a model was fitted on.

A model is fitted on its train split and selected (early stopping) on its val split, so both
count. A gate-set record leaks when its id, its content (`content_sha256`: image, note and sensor
together, for records with a photo or a trace) or its photo (`image_sha256`) was among them: the
same parcel landed again under a new id is caught too. The train stage logs these keys with every
model version; evaluate checks the champion's and the challenger's against the current gate set,
and the gate refuses on any overlap
(a changed `split.salt` or `split.test_fraction` moves fitted records into the gate set).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

KEYS = ("record_id", "content_sha256", "image_sha256")
CONTENT_KEYS = KEYS[1:]
FIT_SPLITS = ("train", "val", "calib")


def identity(profile: pd.DataFrame) -> pd.DataFrame:
    """The keys that identify a capture: a note alone does not ("ok" is many parcels' note), so the
    content hash of a record with neither photo nor trace is blanked."""
    keys = profile[[k for k in KEYS if k in profile.columns]].copy()
    if "content_sha256" in keys and {"has_image", "has_sensor"} <= set(profile.columns):
        captured = profile["has_image"].fillna(False).astype(bool) | profile["has_sensor"].fillna(False).astype(bool)
        note_only = ~captured
        keys["content_sha256"] = keys["content_sha256"].astype("string").mask(note_only.to_numpy())
    return keys


def fit_rows(profile: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The keys of every record the model was fitted or selected on, with its split."""
    fitted = splits.loc[splits["split"].isin(FIT_SPLITS), ["record_id", "split"]]
    return fitted.merge(identity(profile), on="record_id", how="left").reset_index(drop=True)


def overlap(fitted: pd.DataFrame | None, gate: pd.DataFrame, source: str) -> dict[str, Any]:
    """How many gate-set records the fitted set shares, by id and by content; `records` is the union.

    `fitted` None (nothing logged with the model) gives `records: None`: not checked, so the gate fails."""
    if fitted is None:
        return {"records": None, "source": source, "note": "no fitted-record keys were logged with this model"}
    gate = identity(gate)
    leaked = pd.Series(False, index=gate.index)
    by: dict[str, int] = {}
    for key in KEYS:
        if key in fitted.columns and key in gate.columns:
            known = set(fitted[key].dropna().astype(str))
            hit = gate[key].notna() & gate[key].astype("string").isin(known).fillna(False)
            by[key] = int(hit.sum())
            leaked |= hit
    return {"records": int(leaked.sum()), "by": by, "fitted_records": int(len(fitted)), "source": source,
            "examples": gate.loc[leaked, "record_id"].astype(str).head(5).tolist()}


def leak_message(who: str, info: dict[str, Any]) -> str:
    """What the gate prints when a model's fitted records are in the gate set, and what to do."""
    by = ", ".join(f"{k} {v}" for k, v in (info.get("by") or {}).items() if v)
    return (f"gate_set_held_out:{who}: {info['records']} gate-set records were in the {who}'s training or "
            f"validation data ({by}; e.g. {', '.join(info.get('examples') or [])}). The gate set is not held "
            "out, so the comparison is void. Likely cause: split.salt or split.test_fraction changed since the "
            "champion was trained, or records landed again under new ids. Restore the split settings in "
            "params.yaml; to start a new gate set on purpose, retire the champion first "
            "(python -m mmcore.registry retire), and the next model is judged on the floors alone.")
