"""The run report: one self-contained HTML page per retrain run, for people.

It gathers what the stages wrote (reports/*.json, the PNG plots) and what the
orchestrator knows about the run (which stages ran, the verdict) into a page that
opens from disk in any browser: plots are inlined as data URIs, links point to
MLflow and to the Great Expectations Data Docs. Pure rendering plus one writer;
no Prefect, DVC or MLflow import.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

# verdict status -> (headline, colour)
VERDICTS = {
    "promoted": ("Promoted", "#1a7f37"),
    "rejected": ("Challenger rejected", "#b35900"),
    "validation_failed": ("Validation failed", "#cf222e"),
    "no_new_data": ("No new data", "#57606a"),
    "unchanged": ("Nothing changed", "#57606a"),
    "failed": ("Run failed", "#cf222e"),
}
PLOTS = ("confusion.png", "per_class_f1.png", "reliability.png", "training_curves.png")
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left}
th{background:#f6f8fa}.verdict{color:#fff;padding:.8em 1em;border-radius:6px;font-size:1.3em}
.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.muted{color:#57606a}
img{max-width:520px;border:1px solid #d0d7de;margin:.3em}"""
# After load the page records how many plots the browser decoded (a test reads it back).
SCRIPT = """window.addEventListener('load',function(){var imgs=[].slice.call(document.images);
document.body.setAttribute('data-plots-decoded',imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length);
document.body.setAttribute('data-plots-total',imgs.length);});"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value if value is not None else "n/a")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def table(header: list[str], rows: list[list[Any]], raw_cells: bool = False) -> str:
    """A table; cells are escaped unless raw_cells (already rendered HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw_cells else fmt(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def verdict_section(verdict: dict[str, Any]) -> str:
    status = verdict.get("status", "failed")
    title, colour = VERDICTS.get(status, (status, "#57606a"))
    reasons = "".join(f"<li>{esc(r)}</li>" for r in verdict.get("reasons", []))
    return (f'<section id="verdict" data-status="{esc(status)}"><div class="verdict" style="background:{colour}">'
            f'<span id="verdict-title">{esc(title)}</span>: {esc(verdict.get("summary", ""))}</div>'
            f'<ul id="verdict-reasons">{reasons}</ul></section>')


def timings(stages: list[dict[str, Any]], run_s: float) -> dict[str, Any]:
    """Seconds per stage, their total and the whole run's (stages, push and the checks around them), kept
    in run.json: set side by side across reports/runs/*/run.json they show which stage slowed down."""
    per = {s["stage"]: float(s.get("seconds", 0.0)) for s in stages}
    return {"stages_s": per, "stages_total_s": round(sum(per.values()), 1), "run_s": round(run_s, 1)}


def stages_section(run: dict[str, Any]) -> str:
    rows = [[s["stage"], "ran" if s.get("ran") else ("failed" if s.get("ok") is False else "up to date"),
             f"{s.get('seconds', 0):.1f}"] for s in run.get("stages", [])]
    if not rows:
        return "<h2>Stages</h2><p class='muted'>No stage ran in this run.</p>"
    if t := run.get("timings"):
        rows += [["total of the stages", "", f"{t['stages_total_s']:.1f}"], ["whole run", "", f"{t['run_s']:.1f}"]]
    return "<h2>Stages</h2>" + table(["stage", "outcome", "seconds"], rows)


def accounting_section(ingest: dict[str, Any] | None, new_batches: list[str]) -> str:
    if not ingest:
        return ""
    out = [f"<h2 id='accounting'>Data accounting</h2><p>Landed <b>{fmt(ingest.get('landed'))}</b> = accepted "
           f"<b>{fmt(ingest.get('accepted'))}</b> + quarantined <b>{fmt(ingest.get('quarantined'))}</b>. "
           f"New batches this run: {esc(', '.join(new_batches) or 'none')}.</p>"]
    if ingest.get("by_reason"):
        out.append(table(["quarantine reason", "records"], sorted(ingest["by_reason"].items())))
    batches = ingest.get("batches", {})
    out.append(table(["batch", "landed", "accepted", "quarantined", "bad share", "status"],
                     [[b, v.get("landed"), v.get("accepted"), v.get("quarantined"), v.get("bad_share"),
                       v.get("status")] for b, v in batches.items()]))
    return "".join(out)


def gate_set_section(split: dict[str, Any] | None) -> str:
    """What the split did to the gate set: its size, and every label change of a gate-set record
    (applied with its audit entry, or held for want of one: mmcore/data/membership.py)."""
    gate = (split or {}).get("gate")
    if not gate:
        return ""
    changes = gate.get("label_changes") or []
    out = [f"<h2 id='gate-set'>Gate set</h2><p>{fmt(gate.get('records'))} records, {fmt(gate.get('added'))} added "
           f"this run; membership {esc(split.get('membership'))}; label changes applied "
           f"<b>{fmt(gate.get('label_changes_applied'))}</b>, held <b>{fmt(gate.get('label_changes_held'))}</b>; "
           f"missing from data/raw {fmt(gate.get('missing_from_raw'))}.</p>"]
    if gate.get("by_source") is not None:   # only labels the model did not choose gate (mmcore/data/split.py)
        withheld = (split.get("sources") or {}).get("withheld", {})
        out.append("<p id='gate-sources'>By label source: " + (esc(", ".join(
            f"{k} {v}" for k, v in sorted(gate["by_source"].items()))) or "none") + f"; model-chosen labels "
            f"(review, unknown) withheld from the gate set {fmt(withheld.get('test'))}, from calib "
            f"{fmt(withheld.get('calib'))}.</p>")
    if changes:
        out.append(table(["record", "from", "to", "outcome", "source", "labelled at", "labeller", "audit batch"],
                         [[c.get("record_id"), c.get("from"), c.get("to"), "applied" if c.get("applied") else "held",
                           c.get("label_source"), c.get("labelled_at"), c.get("labeller"), c.get("audit_batch")]
                          for c in changes]))
    return "".join(out)


def validation_section(validation: dict[str, Any] | None, docs_url: str | None) -> str:
    if not validation:
        return ""
    ok = validation.get("success")
    out = [f"<h2 id='validation'>Validation</h2><p class='{'pass' if ok else 'fail'}'>"
           f"{'PASSED' if ok else 'FAILED'}: {fmt(validation.get('successful'))}/{fmt(validation.get('evaluated'))} "
           f"expectations met on {fmt(validation.get('rows'))} rows.</p>"]
    for key, label in (("hard_failures", "Hard failures"), ("warnings", "Warnings")):
        items = validation.get(key) or []
        if items:
            out.append(f"<p>{label}:</p><ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
    if docs_url:
        out.append(f'<p><a id="data-docs" href="{esc(docs_url)}">Great Expectations Data Docs</a></p>')
    return "".join(out)


def drift_section(drift: dict[str, Any] | None) -> str:
    if not drift:
        return ""
    cols = drift.get("columns", {})
    rows = [[c, v.get("psi"), v.get("ks"), v.get("status")] for c, v in sorted(cols.items())]
    body = table(["column", "PSI", "KS", "status"], rows) if rows else "<p class='muted'>No columns compared.</p>"
    return f"<h2 id='drift'>Drift against the champion's training data</h2><p>Status: <b>{esc(drift.get('status'))}</b></p>{body}"


def metrics_section(metrics: dict[str, Any] | None, plots: dict[str, bytes]) -> str:
    if not metrics:
        return ""
    champ = metrics.get("champion") or {}
    rows = [[k, metrics.get(k), champ.get(k)] for k in ("macro_f1", "accuracy", "ece", "ece_classwise")]
    lat = metrics.get("latency_ms") or {}
    rows.append(["latency p95 (ms)", lat.get("p95"), (champ.get("latency_ms") or {}).get("p95")])
    sel, old = metrics.get("selective") or {}, champ.get("selective") or {}
    rows += [["automation rate (decided alone)", sel.get("automation_rate"), old.get("automation_rate")],
             ["prediction-set coverage", (sel.get("coverage") or {}).get("overall"),
              (old.get("coverage") or {}).get("overall")],
             ["mean prediction-set size", sel.get("mean_set_size"), old.get("mean_set_size")],
             ["automatic precision, pooled (observed labels)", (sel.get("auto_precision_pooled") or {}).get("precision"),
              (old.get("auto_precision_pooled") or {}).get("precision")],
             ["its lower bound", (sel.get("auto_precision_pooled") or {}).get("lower_bound"),
              (old.get("auto_precision_pooled") or {}).get("lower_bound")]]
    out = ["<h2 id='metrics'>Metrics on the gate set</h2>",
           table(["metric", f"challenger v{metrics.get('model_version')}",
                  f"champion v{champ.get('version')}" if champ else "champion (none)"], rows)]
    why = (sel.get("certified_on_calib") or {}).get("why_uncertified") or {}
    out += [f"<p class='fail'>No confidence threshold certified ({esc(k)}): {esc(v)}; those answers all go to "
            "review.</p>" for k, v in why.items()]
    comp = metrics.get("comparison")
    if comp:
        out.append(f"<p>Macro-F1 gain of the challenger: {fmt(comp.get('observed'))}, {fmt(comp.get('ci'), 2)} "
                   f"bootstrap interval [{fmt(comp.get('low'))}, {fmt(comp.get('high'))}].</p>")
        ll = (comp.get("scores") or {}).get("log_loss")
        if ll:
            out.append(f"<p>Log-loss improvement (champion minus challenger): {fmt(ll.get('observed'))}, "
                       f"interval [{fmt(ll.get('low'))}, {fmt(ll.get('high'))}].</p>")
    per_class = metrics.get("per_class", {})
    out.append(table(["class", "precision", "recall", "F1", "support"],
                     [[c, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support")]
                      for c, v in per_class.items()]))
    if metrics.get("unimodal_macro_f1"):
        out.append(table(["unimodal baseline", "macro-F1"], sorted(metrics["unimodal_macro_f1"].items())))
    for name, data in plots.items():
        out.append(f'<img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
    return "".join(out)


def gate_section(gate: dict[str, Any] | None) -> str:
    if not gate:
        return ""
    rows = [[esc(r.get("rule")), fmt(r.get("value")), fmt(r.get("limit")),
             f"<span class='{'pass' if r.get('passed') else 'fail'}'>{'pass' if r.get('passed') else 'FAIL'}</span>"]
            for r in gate.get("rules", [])]
    return (f"<h2 id='gate'>Gate</h2><p>Challenger v{fmt(gate.get('challenger_version'))}: "
            f"<b>{'promoted' if gate.get('promoted') else 'not promoted'}</b>; champion is "
            f"v{fmt(gate.get('champion_version'))}.</p>" + table(["rule", "value", "limit", "verdict"], rows, True))


def links_section(links: dict[str, str]) -> str:
    if not links:
        return ""
    items = "".join(f'<li><a href="{esc(url)}">{esc(name)}</a></li>' if "://" in url
                    else f"<li>{esc(name)}: <code>{esc(url)}</code></li>" for name, url in links.items())
    return f"<h2 id='links'>Links</h2><ul>{items}</ul>"


def render(run: dict[str, Any], reports: dict[str, Any], plots: dict[str, bytes], links: dict[str, str]) -> str:
    """The page. `run`: name, started, verdict, stages, new_batches; `reports`: stage JSONs of this run."""
    package = reports.get("package") or {}
    parts = [
        f"<h1>Retrain run {esc(run.get('name'))}</h1>",
        f"<p class='muted'>Started {esc(run.get('started'))}, finished {esc(run.get('finished'))}; landing "
        f"<code>{esc(run.get('landing'))}</code>.</p>",
        verdict_section(run.get("verdict", {})),
        stages_section(run),
        accounting_section(reports.get("ingest"), run.get("new_batches", [])),
        validation_section(reports.get("validation"), links.get("Data Docs")),
        gate_set_section(reports.get("split")),
        drift_section(reports.get("drift")),
        metrics_section(reports.get("metrics"), plots),
        gate_section(reports.get("gate")),
        f"<h2>Package</h2><p>Bento <code>{esc(package.get('bento'))}</code></p>" if package else "",
        links_section(links),
    ]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Retrain {esc(run.get('name'))}: "
            f"{esc(run.get('verdict', {}).get('status'))}</title><style>{CSS}</style><script>{SCRIPT}</script>"
            f"</head><body>{''.join(parts)}</body></html>")


def write(run_dir: Path, run: dict[str, Any], reports: dict[str, Any], plots_dir: Path | None,
          links: dict[str, str]) -> Path:
    """report.html and run.json in run_dir; returns the page's path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plots = ({n: (plots_dir / n).read_bytes() for n in PLOTS if (plots_dir / n).is_file()}
             if plots_dir is not None else {})
    (run_dir / "run.json").write_text(json.dumps(run, indent=2, default=str), encoding="utf-8")
    page = run_dir / "report.html"
    page.write_text(render(run, reports, plots, links), encoding="utf-8")
    return page
