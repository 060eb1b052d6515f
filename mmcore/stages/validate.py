"""Validate stage (DESIGN §3.2): a Great Expectations suite over the raw profile table.

Why GX and not asserts: the suite, its results and the Data Docs HTML are
artifacts a person can open when the nightly run stops. Every expectation carries
GX's own `severity` field: a `critical` one that fails is a hard failure (reported
as "error"; the pipeline stops, exit 1), a `warning` that fails is reported and
the run goes on. Range checks where one odd record is
plausible come in two tiers: a strict warning, and an error with `mostly`, so a
couple of outliers warn and a systematic break fails.

Drift: when the champion's training rows are at hand (MLflow artifact
`reference/profile.parquet`, see mmcore.registry), rows of batches new to that
reference are compared with it twice: PSI/KS per column by mmcore.drift (the
drift report), and a handful of GX distribution expectations (KL divergence
against a reference partition, means, hubs seen) so the same checks show in Data
Docs. Drift only warns unless params `validate.drift_fail_is_hard` is true.

CLI: python -m mmcore.stages.validate --params params.yaml --raw data/raw \
         --gx gx --report reports/validation.json \
         [--drift-report reports/drift.json --drift-md reports/drift.md]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from mmcore import drift
from mmcore.config import CLASSES, IMAGE_MIN_SIDE, Params, RegistryConfig, ValidateConfig, load_params
from mmcore.expectations import (DRIFT_SCOPE, ERROR, GX_SEVERITY, MISSING_PREFIX, MODALITIES,
                                 SHARE_PREFIX, build_suite, reference_source)
from mmcore.stages.common import jsonable, read_json, write_json

log = logging.getLogger(__name__)

DATASOURCE_NAME = "parcel_raw"
ASSET_NAME = "profile_table"
BATCH_DEFINITION_NAME = "whole_table"
VALIDATION_NAME = "parcel_profile_validation"
CHECKPOINT_NAME = "parcel_profile_checkpoint"
UNK_SHARE_WARN = 0.3          # above this the English tokenizer cannot read a language


# --------------------------------------------------------------------------- data


def _gx_frame(profile: pd.DataFrame, drift_scope: np.ndarray | None = None) -> pd.DataFrame:
    """Profile plus 0/1 columns whose means are the batch-level shares GX checks.

    GX has no "share of rows where" expectation; a mean over a derived column is one.
    Class shares are NaN on unlabelled rows, so their mean is over labelled rows.
    `drift_scope` marks the rows the drift expectations look at (batches new to the
    reference).
    """
    frame = profile.copy()
    if drift_scope is not None:
        frame[DRIFT_SCOPE] = drift_scope
    for m in MODALITIES:
        if f"has_{m}" in frame:
            present = frame[f"has_{m}"].astype("boolean").fillna(False).to_numpy(dtype=bool)
            frame[f"{MISSING_PREFIX}{m}"] = (~present).astype(float)
    if "label" in frame:
        labelled = frame["label"].notna().to_numpy()
        for c in CLASSES:
            is_c = (frame["label"] == c).astype("boolean").fillna(False).to_numpy(dtype=float)
            frame[f"{SHARE_PREFIX}{c}"] = np.where(labelled, is_c, np.nan)
    return frame


def unk_share_by_lang(profile: pd.DataFrame) -> dict[str, float | None]:
    """Mean [UNK] token share per note language (English MiniLM tokenizer)."""
    if not {"note_lang", "note_unk_share"} <= set(profile.columns):
        return {}
    means = profile.groupby("note_lang", dropna=True)["note_unk_share"].mean()
    return {str(k): (None if pd.isna(v) else round(float(v), 4)) for k, v in means.items()}


def _unk_warnings(shares: dict[str, float | None]) -> list[str]:
    """Tell the user in words which languages the text encoder effectively cannot read."""
    return [f"note_lang={lang}: mean [UNK] token share {s:.2f} > {UNK_SHARE_WARN}: the "
            f"English MiniLM text encoder cannot read these notes; use a multilingual "
            f"text model for them" for lang, s in sorted(shares.items())
            if s is not None and s > UNK_SHARE_WARN]


# --------------------------------------------------------------------------- GX context


def _context(gx_root: Path) -> Any:
    """File context in gx_root itself (gx_root holds great_expectations.yml), bars off."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_root.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", context_root_dir=str(gx_root))
    bars = ctx.variables.progress_bars
    if bars is None or bars.get("globally", True) or bars.get("metric_calculations", True):
        # tqdm "Calculating Metrics" bars flood CI logs; persisted in great_expectations.yml.
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
        ctx.variables.save()
    _ignore_uncommitted(gx_root)
    return ctx


def _ignore_uncommitted(gx_root: Path) -> None:
    """GX scaffolds gx/.gitignore with uncommitted/ (run history, Data Docs, secrets);
    make sure it stays there even if the folder was created by hand or the file edited."""
    gitignore = gx_root / ".gitignore"
    text = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
    if "uncommitted/" not in text.split():
        head = text.rstrip("\n") + "\n" if text.strip() else ""
        gitignore.write_text(head + "uncommitted/\n", encoding="utf-8")


def _batch_definition(ctx: Any) -> Any:
    """Pandas datasource -> dataframe asset -> whole-frame batch; get-or-add, never dup."""
    try:
        ds = ctx.data_sources.get(DATASOURCE_NAME)
    except KeyError:
        ds = ctx.data_sources.add_pandas(name=DATASOURCE_NAME)
    try:
        asset = ds.get_asset(ASSET_NAME)
    except LookupError:
        asset = ds.add_dataframe_asset(name=ASSET_NAME)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION_NAME)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)


def _checkpoint(ctx: Any, cfg: ValidateConfig, reference: pd.DataFrame | None = None,
                n_new: int = 0, image_min_side: int = IMAGE_MIN_SIDE) -> Any:
    """Suite, validation definition and checkpoint, add-or-update so reruns are idempotent."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    # checkpoints.add_or_update cascades to the validation definition and the suite
    # (each add_or_update by name); calling all three would rewrite the suite 3 times.
    vd = gx.ValidationDefinition(name=VALIDATION_NAME, data=_batch_definition(ctx),
                                 suite=build_suite(cfg, reference, n_new, image_min_side))
    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=CHECKPOINT_NAME, validation_definitions=[vd], result_format="SUMMARY",
        actions=[UpdateDataDocsAction(name="update_data_docs")]))


def _docs_index(ctx: Any, gx_root: Path) -> str:
    """Path of the local Data Docs index.html, relative to cwd when it lies below it."""
    urls = [u.get("site_url") for u in ctx.get_docs_sites_urls() if u.get("site_url")]
    path = (Path(unquote(urlparse(urls[0]).path)) if urls
            else gx_root / "uncommitted" / "data_docs" / "local_site" / "index.html")
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- results




def _exception_messages(info: dict) -> list[str]:
    """GX 1.x keeps exceptions flat, or per metric id when a metric failed to compute."""
    infos = [info] if "raised_exception" in info else list(info.values())
    return sorted({str(i.get("exception_message")) for i in infos
                   if isinstance(i, dict) and str(i.get("raised_exception")) == "True"})


def _observed(res: Any) -> Any:
    """What GX saw: the aggregate value, the unexpected rows, or the exception."""
    errors = _exception_messages(res.exception_info or {})
    if errors:
        return {"exception": "; ".join(errors)}
    result = res.result or {}
    mismatched = (result.get("details") or {}).get("mismatched")
    if mismatched:  # column-set check: extra (derived) columns are allowed, missing are not
        return jsonable({"missing_columns": mismatched.get("missing", [])})
    if "observed_value" in result:
        return jsonable(result["observed_value"])
    keys = ("element_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
    out = {k: result[k] for k in keys if k in result}
    if "partial_unexpected_list" in out:
        out["partial_unexpected_list"] = out["partial_unexpected_list"][:5]
    return jsonable(out)


def _row(res: Any) -> dict[str, Any]:
    """One expectation result as a flat JSON-able dict."""
    conf = res.expectation_config
    gx_severity = str(getattr(conf.severity, "value", conf.severity))
    severity = ERROR if gx_severity == GX_SEVERITY[ERROR] else gx_severity
    return {"expectation": conf.type, "column": conf.kwargs.get("column", "(table)"),
            "success": bool(res.success), "severity": severity,
            "mostly": conf.kwargs.get("mostly", 1.0), "observed": _observed(res)}


def _describe(row: dict[str, Any]) -> str:
    """Human line for a failed expectation: type(column) and what was observed."""
    obs = row["observed"]
    if isinstance(obs, dict) and "exception" in obs:
        obs = f"error: {obs['exception']}"
    elif isinstance(obs, dict) and "unexpected_count" in obs:
        pct = obs.get("unexpected_percent") or 0.0
        obs = (f"{obs['unexpected_count']} unexpected ({pct:.1f}%), "
               f"e.g. {obs.get('partial_unexpected_list', [])[:3]}")
    mostly = f", mostly={row['mostly']}" if row["mostly"] != 1.0 else ""
    return f"{row['expectation']}({row['column']}{mostly}): observed {obs}"


def summarize(rows: list[dict[str, Any]], profile: pd.DataFrame, docs: str) -> dict[str, Any]:
    """The stage's JSON summary; severity of each failed expectation decides success."""
    failed = [r for r in rows if not r["success"]]
    hard = [_describe(r) for r in failed if r["severity"] == ERROR]
    shares = unk_share_by_lang(profile)
    warns = [_describe(r) for r in failed if r["severity"] != ERROR] + _unk_warnings(shares)
    return {"success": not hard, "hard_failures": hard, "warnings": warns,
            "evaluated": len(rows), "successful": len(rows) - len(failed),
            "rows": int(len(profile)), "unk_share_by_lang": shares,
            "data_docs": docs, "results": rows}


# --------------------------------------------------------------------------- drift




def drift_report(profile: pd.DataFrame, reference: pd.DataFrame | None, cfg: ValidateConfig,
                 scope: tuple[np.ndarray, dict[str, Any]] | None = None) -> dict[str, Any]:
    """drift.json: mmcore.drift statistics of the new rows, and what was compared."""
    if reference is None:
        return drift.no_reference_report()
    mask, compared = scope or drift.new_rows(profile, reference)
    report = drift.compute_drift(reference, profile[mask], cfg.drift_psi_warn, cfg.drift_psi_fail)
    report["thresholds"]["fail_is_hard"] = cfg.drift_fail_is_hard
    return jsonable({"status": report.pop("status"), "reference": reference_source(reference),
                      "compared": compared, **report})


def _drift_line(name: str, col: dict[str, Any], report: dict[str, Any]) -> str:
    """One warning / hard-failure line for a drifted column."""
    limit = report["thresholds"][f"psi_{col['status']}"]
    ks = "" if col.get("ks") is None else f", KS {col['ks']:.3f}"
    return (f"drift({name}): PSI {col['psi']:.3f} >= drift_psi_{col['status']} {limit} "
            f"against the champion's training data{ks}")


def with_drift(summary: dict[str, Any], report: dict[str, Any],
               cfg: ValidateConfig) -> dict[str, Any]:
    """Summary plus the drift report; a drift fail is hard only if drift_fail_is_hard."""
    cols = report.get("columns", {})
    fails = [_drift_line(c, cols[c], report) for c in report.get("fail", [])]
    warns = [_drift_line(c, cols[c], report) for c in report.get("warn", [])]
    hard = summary["hard_failures"] + (fails if cfg.drift_fail_is_hard else [])
    soft = summary["warnings"] + warns + ([] if cfg.drift_fail_is_hard else fails)
    return {**summary, "success": not hard, "hard_failures": hard, "warnings": soft,
            "drift": report}


def run_validation(profile: pd.DataFrame, cfg: ValidateConfig, gx_root: Path,
                   reference: pd.DataFrame | None = None, image_min_side: int = IMAGE_MIN_SIDE) -> dict:
    """Validate the profile table with GX, build Data Docs, return the JSON-able summary.

    `image_min_side` is params `ingest.image_min_side`: the photo rule ingest enforces (and the
    service), so validation checks the same one.

    `reference` is the champion's training rows (registry.champion_reference); with it
    the suite gains drift expectations and `summary["drift"]` the drift report, without
    it the report says "no_reference". Passing it in keeps this function free of MLflow.
    """
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx = _context(Path(gx_root))
    scope = None if reference is None else drift.new_rows(profile, reference)
    mask = None if scope is None else scope[0]
    checkpoint = _checkpoint(ctx, cfg, reference, 0 if mask is None else int(mask.sum()), image_min_side)
    result = checkpoint.run(batch_parameters={"dataframe": _gx_frame(profile, mask)})
    rows = sorted((_row(r) for suite_result in result.run_results.values()
                   for r in suite_result.results),
                  key=lambda r: (r["column"], r["expectation"], r["severity"]))
    summary = summarize(rows, profile, _docs_index(ctx, Path(gx_root)))
    return with_drift(summary, drift_report(profile, reference, cfg, scope), cfg)


# --------------------------------------------------------------------------- CLI


def _paragraph(summary: dict[str, Any], seconds: float) -> str:
    """One paragraph for logs; on failure it names the checks and the next step."""
    unk = ", ".join(f"{k} {v:.2f}" for k, v in summary["unk_share_by_lang"].items()
                    if v is not None) or "n/a"
    parts = [f"validate: {'PASSED' if summary['success'] else 'FAILED'}: "
             f"{summary['successful']}/{summary['evaluated']} expectations met on "
             f"{summary['rows']} rows in {seconds:.1f}s; {len(summary['hard_failures'])} hard "
             f"failure(s), {len(summary['warnings'])} warning(s); note [UNK] share: {unk}; "
             f"{_drift_phrase(summary.get('drift') or {})}."]
    if summary["warnings"]:
        parts.append("Warnings: " + "; ".join(summary["warnings"]) + ".")
    if summary["hard_failures"]:
        parts.append(
            "Hard failures, pipeline stopped: " + "; ".join(summary["hard_failures"]) + ". "
            "Next: open the Data Docs below to see the failing values. A record-level rule "
            "(ids, labels, ranges) means ingest let bad records through: fix ingest or the "
            "producer and re-ingest; a table-level rule (row count, class mix, missing "
            "modalities) means the data changed: check the landing batches; a drift(...) rule "
            "means new batches differ from the champion's training data (see the drift report; "
            "`validate.drift_fail_is_hard: false` only warns). If the threshold "
            "itself is wrong, change `validate:` in params.yaml. Then re-run `dvc repro`.")
    parts.append(f"Data Docs: {summary['data_docs']}.")
    return " ".join(parts)


def _drift_phrase(report: dict[str, Any]) -> str:
    """Drift in a few words for the log paragraph."""
    status = report.get("status", drift.NOT_RUN)
    moved = ", ".join(report.get("fail", []) + report.get("warn", []))
    return f"drift vs champion data: {status}" + (f" ({moved})" if moved else "")


def _crash_summary(message: str) -> dict[str, Any]:
    """Summary for a run that could not validate at all (missing input, GX error)."""
    return {"success": False, "hard_failures": [message], "warnings": [], "evaluated": 0,
            "successful": 0, "rows": 0, "unk_share_by_lang": {}, "data_docs": None,
            "results": [], "drift": drift.not_run_report(message)}


def champion_reference(model_name: str, experiment: str) -> pd.DataFrame | None:
    """The champion's training rows from MLflow (tracking URI as the registry sets it)."""
    from mmcore import registry

    registry.setup(experiment)
    return registry.champion_reference(model_name)


def _reference(reg: RegistryConfig) -> tuple[pd.DataFrame | None, str | None]:
    """(reference, error): a registry that cannot be read is reported, not a crash,
    because without a reference the rest of validation still means something."""
    try:
        return champion_reference(reg.model_name, reg.experiment), None
    except Exception as exc:  # tracking store down or corrupt
        log.exception("champion reference could not be loaded")
        return None, (f"drift: the champion's training data could not be loaded from MLflow "
                      f"({type(exc).__name__}: {exc}); drift was not checked")


def _note_reference_error(summary: dict[str, Any], error: str, hard: bool) -> dict[str, Any]:
    """A failed lookup is as serious as the drift check it disables."""
    key = "hard_failures" if hard else "warnings"
    out = {**summary, key: summary[key] + [error], "drift": drift.not_run_report(error)}
    return {**out, "success": not out["hard_failures"]}


def _write_drift(report: dict[str, Any], json_path: Path | None, md_path: Path | None) -> None:
    """drift.json and drift.md, each only when asked for; atomic like the main report."""
    if json_path is not None:
        write_json(json_path, report)
    if md_path is not None:
        md_path = Path(md_path)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = md_path.with_name(md_path.name + ".tmp")
        tmp.write_text(drift.render_markdown(report), encoding="utf-8")
        os.replace(tmp, md_path)


def _validate_table(table: Path, params: Params, gx_root: Path, wants_drift: bool) -> dict:
    """run_validation on the raw table, with the champion's reference when drift is wanted."""
    cfg = params.validate
    reference, error = _reference(params.registry) if wants_drift else (None, None)
    try:
        summary = run_validation(pd.read_parquet(table), cfg, gx_root, reference,
                                 image_min_side=params.ingest.image_min_side)
    except Exception as exc:  # the report must exist even when GX itself breaks
        log.exception("validation could not run")
        return _crash_summary(f"validation could not run: {type(exc).__name__}: {exc}")
    return _note_reference_error(summary, error, cfg.drift_fail_is_hard) if error else summary


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmcore.stages.validate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--raw", type=Path, default=Path("data/raw"))
    p.add_argument("--gx", type=Path, default=Path("gx"))
    p.add_argument("--report", type=Path, default=Path("reports/validation.json"))
    p.add_argument("--drift-report", type=Path, default=None,
                   help="drift JSON; with either drift flag the champion's training data is "
                        "read from MLflow and drift is checked (neither: drift skipped)")
    p.add_argument("--drift-md", type=Path, default=None, help="drift report as Markdown")
    p.add_argument("--ingest-report", type=Path, default=None,
                   help="ingest accounting: a batch ingest rejected whole is a hard failure")
    return p.parse_args(argv)


def with_rejected_batches(summary: dict[str, Any], ingest: dict[str, Any]) -> dict[str, Any]:
    """A batch whose bad share broke ingest.max_bad_share means a broken feed: its good records
    were held back too, so the data is incomplete and the pipeline stops until the batch is
    fixed or removed from the landing area."""
    lines = [f"batch {b}: rejected whole by ingest (bad share {s.get('bad_share', 0):.2f} > "
             f"ingest.max_bad_share); its {s.get('landed')} records are in data/quarantine with their "
             f"reasons; fix the feed, then replace or remove the batch in the landing area"
             for b, s in sorted((ingest.get("batches") or {}).items()) if s.get("status") == "rejected"]
    if not lines:
        return summary
    return {**summary, "success": False, "hard_failures": summary["hard_failures"] + lines}


def main(argv: list[str] | None = None) -> int:
    """Run the stage; the report is written on every outcome, exit 1 on a hard failure."""
    args = _parse(argv)
    params = load_params(args.params)
    table = args.raw / "records.parquet"
    start = time.perf_counter()
    wants_drift = args.drift_report is not None or args.drift_md is not None
    if not table.is_file():
        summary = _crash_summary(f"{table} not found: run the ingest stage first")
    else:
        summary = _validate_table(table, params, args.gx, wants_drift)
    if args.ingest_report is not None and Path(args.ingest_report).is_file():
        summary = with_rejected_batches(summary, read_json(args.ingest_report))
    write_json(args.report, summary)  # atomic: split (next stage) never reads half a file
    _write_drift(summary["drift"], args.drift_report, args.drift_md)
    text = _paragraph(summary, time.perf_counter() - start) + f" Report: {args.report}"
    if args.drift_md is not None:
        text += f" Drift: {args.drift_md}"
    print(text, file=sys.stdout if summary["success"] else sys.stderr)
    return 0 if summary["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
