"""The monitoring window's HTML page, in the run report's style (mmcore.report): one self-contained
file with the findings first, then the answers (class mix and confidence, as inlined PNGs), live and
estimated quality next to the gate-set figures, and drift. Pure rendering plus one writer."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from mmcore.plots import _pyplot
from mmcore.report import CSS, SCRIPT, esc, fmt, table

COLOURS = {"retrain": "#b35900", "alert": "#cf222e", "quiet": "#1a7f37"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return "<img alt='plot' src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'>"


def answers_plots(report: dict[str, Any]) -> str:
    plt = _pyplot()
    mix, conf = report["class_mix"], report["confidence"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = list(mix["window"])
    xs = range(len(names))
    a.bar([x - 0.2 for x in xs], [mix["gate_set"][n] for n in names], 0.4, label="gate set (labels)")
    a.bar([x + 0.2 for x in xs], [mix["window"][n] for n in names], 0.4, label="window (predicted)")
    a.set_xticks(list(xs), names, rotation=20, fontsize=8)
    a.set_title(f"class mix (TV distance {mix['distance']})")
    a.legend(fontsize=8)
    edges = conf["edges"]
    b.bar(edges[:-1], conf["counts"], width=edges[1] - edges[0], align="edge", edgecolor="white")
    b.set_title(f"confidence of {report['answers']} answers")
    b.set_xlabel("top probability")
    return _png(fig)


def findings_section(findings: list[dict[str, Any]]) -> str:
    kinds = {f["kind"] for f in findings}   # a deferred retrain alone (cooldown, too few labels) is no alarm
    kind = "retrain" if "retrain" in kinds else ("alert" if "alert" in kinds else "quiet")
    head = {"retrain": "Retrain requested", "alert": "Alert", "quiet": "Quiet: no alert"}[kind]
    rows = "".join(f"<li><b>{esc(f['kind'])}</b> ({esc(f['reason'])}): {esc(f['detail'])}</li>" for f in findings)
    return (f"<div id='findings' class='verdict' data-status='{kind}' style='background:{COLOURS[kind]}'>"
            f"{head}</div><ul>{rows}</ul>")


def quality_section(report: dict[str, Any]) -> str:
    rows = []
    for version, entry in report["quality"]["versions"].items():
        live, gate = entry.get("live") or {}, entry.get("gate_set") or {}
        f1 = live.get("macro_f1")
        rows.append([f"v{version}", entry["n"], gate.get("macro_f1"), f1["observed"] if f1 else None,
                     f"[{f1['low']:.3f}, {f1['high']:.3f}]" if f1 else entry.get("note", ""),
                     (live.get("accuracy") or {}).get("observed")])
    est = [[f"v{v}", e["n"], e.get("gate_set_macro_f1"), e["macro_f1"], e["accuracy"]]
           for v, e in report["estimated"].items()]
    return ("<h2 id='quality'>Quality</h2><p>Live: answers whose labels joined in the lookback, "
            "shipment-bootstrap intervals.</p>"
            + table(["version", "labels", "gate-set macro-F1", "live macro-F1", "interval", "live accuracy"], rows)
            + "<p>Estimated from calibrated confidence (CBPE) over the window's answers:</p>"
            + table(["version", "answers", "gate-set macro-F1", "estimated macro-F1", "estimated accuracy"], est))


def drift_section(report: dict[str, Any]) -> str:
    rows = [[name, e.get("drift"), e.get("effect_ok"), e.get("p_value"), e.get("auc"), e.get("n_reference"),
             e.get("n_current"), e.get("note", "")]
            for name, e in report.get("embedding_drift", {}).items()]
    tab = report.get("tabular_drift") or {}
    miss = report.get("missing_share") or {}
    return ("<h2 id='drift'>Drift</h2>"
            + table(["encoder", "drift", "effect ok", "p-value", "held-out AUC", "reference", "window", "note"], rows)
            + (f"<p>Drift below <code>monitor.min_drift_auc</code> (reported, not counted toward a retrain): "
               f"{esc(', '.join(report['drift_below_effect']))}.</p>" if report.get("drift_below_effect") else "")
            + f"<p>Tabular drift (PSI): <b>{esc(tab.get('status', 'n/a'))}</b>; failing columns "
              f"{esc(', '.join(tab.get('fail', [])) or 'none')}.</p>"
            + table(["modality", "missing in window", "missing in reference"],
                    [[m, v, (miss.get("reference") or {}).get(m)] for m, v in (miss.get("window") or {}).items()]))


def render(report: dict[str, Any], findings: list[dict[str, Any]]) -> str:
    title = f"Monitoring window {report.get('since')} to {report.get('until')}"
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>Batches {esc(', '.join(report['batches']))}: {fmt(report['volume'])} landed "
             f"records, {fmt(report['answers'])} answers.</p>",
             findings_section(findings),
             "<h2 id='answers'>Answers</h2>" + (answers_plots(report) if report["answers"] else
                                                "<p>No answers in this window.</p>"),
             quality_section(report), drift_section(report)]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")


def write(path: Path, report: dict[str, Any], findings: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, findings), encoding="utf-8")
    return path
