"""The Great Expectations suite the validate stage runs (DESIGN §3.2), built from params.

The suite is rebuilt in code on every run, so code and params.yaml are its source and
the JSON GX stores is only a copy. Each expectation is tagged `critical` (a failure
stops the pipeline, reported as "error") or `warning`. Range checks where one odd
record is plausible come in two tiers: a strict warning, and an error with `mostly`.
With the champion's training rows as a reference the suite also holds a few drift
expectations, so they show in Data Docs next to the rest.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pandas as pd

from mmcore import drift
from mmcore.config import CLASSES, IMAGE_MIN_SIDE, ValidateConfig
from mmcore.schema import NOTE_LANGS, PROFILE_COLUMNS, RECORD_ID_RE
from mmcore.stages.common import jsonable

SUITE_NAME = "parcel_profile"
ERROR, WARNING = "error", "warning"   # summary vocabulary
GX_SEVERITY = {ERROR: "critical", WARNING: "warning"}  # GX 1.x FailureSeverity values
ERROR_MOSTLY = 0.95           # error tier of a two-tier check: >5% bad rows is systematic
MISSING_PREFIX, SHARE_PREFIX = "missing_", "label_share_"
MODALITIES = ("image", "note", "sensor")
# Record contract of DESIGN §2 (ingest quarantines outside it; ValidateConfig has no keys
# for it, so the values live here and a mismatch with params `ingest:` is a hard failure).
SENSOR_ROWS_RANGE = (30, 5000)
MAX_NOTE_CHARS = 10_000
# Drift expectations (GX side). They look only at rows of batches new to the reference,
# marked by a derived boolean column. KL(new || reference) is about half the PSI for small
# shifts, so threshold psi_fail / 2 fails where the PSI does; a mean outside
# reference mean +- 0.5 std is roughly a PSI 0.25 shift of a normal column.
DRIFT_SCOPE = "in_drift_scope"
DRIFT_KL_COLUMNS = ("image_brightness", "temperature_max", "shock_max")
DRIFT_MEAN_COLUMNS = ("note_length",)
DRIFT_MEAN_K = 0.5
DRIFT_TAIL_HOLDOUT = 0.01     # weight for new values beyond the reference's min/max


# Storage types the raw table must keep (pandas names; a float read as object means a broken writer).
COLUMN_TYPES = {
    "image_brightness": ["float64", "Float64"], "note_length": ["int64", "Int64"],
    "temperature_max": ["float64", "Float64"],
    "has_image": ["bool", "boolean"], "has_sensor": ["bool", "boolean"],
}


def _exp(cls: type, severity: str, **kwargs: Any) -> Any:
    """One expectation, tagged with the severity that decides if the pipeline stops."""
    return cls(severity=GX_SEVERITY[severity], **kwargs)


def _tiered(cls: type, **kwargs: Any) -> list[Any]:
    """Strict check that only warns + the same check with `mostly` that fails hard."""
    return [_exp(cls, WARNING, **kwargs), _exp(cls, ERROR, mostly=ERROR_MOSTLY, **kwargs)]


def _record_expectations(gxe: Any) -> list[Any]:
    """Contract of DESIGN §2 that ingest should already enforce: a break here is a bug."""
    rid = "record_id"
    return [
        _exp(gxe.ExpectTableColumnsToMatchSet, ERROR, column_set=list(PROFILE_COLUMNS),
             exact_match=False),
        _exp(gxe.ExpectColumnValuesToNotBeNull, ERROR, column=rid),
        _exp(gxe.ExpectColumnValuesToBeUnique, ERROR, column=rid),
        _exp(gxe.ExpectColumnValuesToMatchRegex, ERROR, column=rid, regex=RECORD_ID_RE.pattern),
        _exp(gxe.ExpectColumnValuesToBeInSet, ERROR, column="label", value_set=list(CLASSES)),
        _exp(gxe.ExpectColumnValuesToNotBeNull, ERROR, column="note_lang"),
        _exp(gxe.ExpectColumnValuesToBeInSet, ERROR, column="note_lang",
             value_set=list(NOTE_LANGS)),
        _exp(gxe.ExpectColumnValuesToBeBetween, ERROR, column="note_length",
             min_value=0, max_value=MAX_NOTE_CHARS),
        _exp(gxe.ExpectColumnValueLengthsToBeBetween, ERROR, column="hub", min_value=1, max_value=32),
        _exp(gxe.ExpectColumnValueLengthsToBeBetween, ERROR, column="image_sha256", min_value=64, max_value=64),
        *[_exp(gxe.ExpectColumnValuesToBeInTypeList, ERROR, column=c, type_list=types)
          for c, types in COLUMN_TYPES.items()],
    ]


def _image_expectations(gxe: Any, cfg: ValidateConfig, image_min_side: int) -> list[Any]:
    """A few black photos happen; many mean a broken scanner. The smallest side is params
    `ingest.image_min_side`, the one ingest quarantines below (and the service refuses), so a
    smaller photo here is a record that bypassed ingest's rule."""
    from great_expectations.expectations.row_conditions import Column

    has_image = Column("has_image") == True  # noqa: E712  (builds a GX condition)
    out: list[Any] = []
    for col in ("image_width", "image_height"):
        out += _tiered(gxe.ExpectColumnValuesToBeBetween, column=col,
                       min_value=image_min_side, row_condition=has_image)
    lo, hi = cfg.brightness_range
    out += _tiered(gxe.ExpectColumnValuesToBeBetween, column="image_brightness",
                   min_value=lo, max_value=hi)
    return out


def _sensor_expectations(gxe: Any, cfg: ValidateConfig) -> list[Any]:
    """Readings outside the tracker's physical range are unit or firmware bugs: hard."""
    ranges = {
        ("temperature_min", "temperature_max"): cfg.sensor_temperature_range,
        ("humidity_min", "humidity_max"): cfg.sensor_humidity_range,
        ("shock_max",): cfg.sensor_shock_range,
        ("light_max",): cfg.sensor_light_range,
    }
    out = [_exp(gxe.ExpectColumnValuesToBeBetween, ERROR, column="sensor_rows",
                min_value=SENSOR_ROWS_RANGE[0], max_value=SENSOR_ROWS_RANGE[1])]
    # a dead channel (frozen for the whole trace) warns; many of them mean a broken tracker fleet
    out += _tiered(gxe.ExpectColumnValuesToBeInSet, column="sensor_stuck_channels", value_set=[""])
    for cols, (lo, hi) in ranges.items():
        out += [_exp(gxe.ExpectColumnValuesToBeBetween, ERROR, column=c,
                     min_value=lo, max_value=hi) for c in cols]
    out += _tiered(gxe.ExpectColumnValuesToBeBetween, column="sensor_nan_count",
                   min_value=0, max_value=0)
    return out


def _batch_expectations(gxe: Any, cfg: ValidateConfig) -> list[Any]:
    """Whole-table checks on the derived columns added by validate's `_gx_frame`."""
    out = [_exp(gxe.ExpectTableRowCountToBeBetween, ERROR, min_value=cfg.min_rows)]
    out += [_exp(gxe.ExpectColumnMeanToBeBetween, ERROR, column=f"{MISSING_PREFIX}{m}",
                 min_value=0.0, max_value=cfg.max_missing_share) for m in MODALITIES]
    out += [_exp(gxe.ExpectColumnMeanToBeBetween, ERROR, column=f"{SHARE_PREFIX}{c}",
                 min_value=cfg.min_class_share, max_value=1.0) for c in CLASSES]
    return out


def _kl(gxe: Any, severity: str, column: str, partition: dict | None, cfg: ValidateConfig,
        scope: Any) -> list[Any]:
    """KL(new rows || reference partition) below the level where the PSI says fail."""
    if partition is None:
        return []
    return [_exp(gxe.ExpectColumnKLDivergenceToBeLessThan, severity, column=column,
                 partition_object=partition, threshold=cfg.drift_psi_fail / 2,
                 tail_weight_holdout=DRIFT_TAIL_HOLDOUT, row_condition=scope)]


def _drift_expectations(gxe: Any, cfg: ValidateConfig, reference: pd.DataFrame,
                        n_new: int) -> list[Any]:
    """A handful of distribution checks built from the champion's training rows.

    They run on the rows new to the reference only (DRIFT_SCOPE), so they show in Data
    Docs next to the rest; mmcore.drift computes the full per-column report.
    """
    from great_expectations.expectations.row_conditions import Column

    severity = ERROR if cfg.drift_fail_is_hard else WARNING
    scope = Column(DRIFT_SCOPE) == True  # noqa: E712  (builds a GX condition)
    out: list[Any] = []
    hubs = sorted(reference["hub"].dropna().astype(str).unique()) if "hub" in reference else []
    if hubs:  # values-in-set, not distinct-values-in-set: GX 1.24 Data Docs crash on the latter
        mostly = {"mostly": ERROR_MOSTLY} if severity == ERROR else {}  # stop only if systematic
        out.append(_exp(gxe.ExpectColumnValuesToBeInSet, severity, column="hub",
                        value_set=hubs, row_condition=scope, **mostly))
    if "label" in reference:
        out += _kl(gxe, severity, "label", drift.categorical_partition(reference["label"]),
                   cfg, scope)
    for col in (c for c in DRIFT_KL_COLUMNS if c in reference):
        out += _kl(gxe, severity, col, drift.continuous_partition(reference[col], n_new),
                   cfg, scope)
    for col in (c for c in DRIFT_MEAN_COLUMNS if c in reference):
        bounds = drift.mean_bounds(reference[col], DRIFT_MEAN_K)
        if bounds:
            out.append(_exp(gxe.ExpectColumnMeanToBeBetween, severity, column=col,
                            min_value=bounds[0], max_value=bounds[1], row_condition=scope))
    return out


def reference_source(reference: pd.DataFrame | None) -> dict[str, Any] | None:
    """What the reference is: registry.champion_reference puts model/version/run in attrs."""
    if reference is None:
        return None
    return dict(reference.attrs.get("source") or {"rows": int(len(reference))})


def build_suite(cfg: ValidateConfig, reference: pd.DataFrame | None = None,
                n_new: int = 0, image_min_side: int = IMAGE_MIN_SIDE) -> Any:
    """The `parcel_profile` suite, rebuilt from params every run so code is the source.

    With a reference (champion's training rows) it also holds the drift expectations.
    `image_min_side` is params `ingest.image_min_side` (one setting for ingest, validation, service).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = (_record_expectations(gxe) + _image_expectations(gxe, cfg, image_min_side)
                    + _sensor_expectations(gxe, cfg) + _batch_expectations(gxe, cfg))
    if reference is not None:
        expectations += _drift_expectations(gxe, cfg, reference, n_new)
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations,
                               meta={"built_by": "mmcore.stages.validate",
                                     "validate_params": asdict(cfg),
                                     "ingest_params": {"image_min_side": image_min_side},
                                     "drift_reference": jsonable(reference_source(reference))})

