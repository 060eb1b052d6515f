"""What the documentation site renders instead of typing: figures from their reports, the config reference.

    python -m mmcore.docs_gen snapshot    # a release point: reports/bench/*.json -> docs/reports/bench/
    python -m mmcore.docs_gen render docs/benchmarks.md    # a page as the site builds it, to stdout

`mkdocs build` runs this file as a hook (mkdocs.yml `hooks:`): `on_page_markdown` renders every
page. A page asks for generated text with a marker line, replaced in the built site:

    <!-- docs: figure bench-serve -->     a table of a report's figures, with its date, machine, command
    <!-- docs: config-reference -->      every params.yaml key: type and default from mmcore/config.py,
                                         its meaning from the comment on the field, the project's value
    <!-- docs: readme-diagram -->        the README's Mermaid picture of the pipeline and the loop

No measured figure is typed in the docs: a table names the report it comes from, and a report the
release does not hold renders as a note naming the command that writes it. The benchmark reports
live in `reports/bench/` (not committed); `snapshot` copies them with their provenance into
`docs/reports/bench/`, which is committed at release points; the quality table reads
`reports/quality.json`, committed by `make sweep`.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import operator
import posixpath
import re
import shutil
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = "docs/reports/bench"      # the committed copy of reports/bench/ the benchmark tables read
MARKER = re.compile(r"^<!-- docs: ([a-z-]+)(?: ([a-z0-9-]+))? -->$", re.MULTILINE)
OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


# --------------------------------------------------------------------------- figures from reports
@dataclass(frozen=True)
class Row:
    """One figure: its label, where it sits in the report (dotted path), and its goal if it has one."""

    label: str
    key: str
    op: str | None = None            # "<=" or ">=": the figure's goal ...
    goal: str | float | None = None  # ... a number, or the dotted path of the goal in the same report


@dataclass(frozen=True)
class Figure:
    report: str                      # path from the repository root
    produce: str                     # the command that writes the report
    rows: tuple[Row, ...] = ()
    render: Callable[[dict[str, Any]], list[str]] | None = None   # for tables that are not one figure a row


def lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def fmt(value: Any) -> str:
    """Numbers as the reports hold them, thousands separated; anything else as compact JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def goal_text(row: Row, data: dict[str, Any]) -> str:
    if row.op is None:
        return ""
    goal = lookup(data, row.goal) if isinstance(row.goal, str) else row.goal
    value = lookup(data, row.key)
    if not isinstance(goal, (int, float)):
        return "" if value is None else f"{row.op} ? (no goal in the report)"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{row.op} {fmt(goal)}"
    return f"{row.op} {fmt(goal)}: {'met' if OPS[row.op](value, goal) else '**not met**'}"


def rows_table(rows: tuple[Row, ...], data: dict[str, Any]) -> list[str]:
    lines = ["| figure | value | goal | key in the report |", "|---|---|---|---|"]
    for row in rows:
        value = lookup(data, row.key)
        shown = "not in this report" if value is None else fmt(value)
        lines.append(f"| {cell(row.label)} | {cell(shown)} | {cell(goal_text(row, data))} | `{row.key}` |")
    return lines


def serve_backends(data: dict[str, Any]) -> list[str]:
    """ms per record in process, per backend, at batch 1 and 32 on one and two threads."""
    cols = ("b1_t1", "b32_t1", "b1_t2", "b32_t2")
    lines = ["| backend | " + " | ".join(f"ms/record, batch {c[1:c.index('_')]}, {c[-1]} thread(s)" for c in cols)
             + " | slowest part (batch 1, 1 thread) |", "|---" * (len(cols) + 2) + "|"]
    for name, row in (data.get("backends") or {}).items():
        lines.append(f"| `{name}` | " + " | ".join(fmt(row.get(f"ms_per_record_{c}")) for c in cols)
                     + f" | {fmt(lookup(data, f'slowest_part_b1_t1.{name}'))} |")
    goal = data.get("goal_inproc_ms_per_record_b1_t1_max")
    return lines + ([f"\nGoal (`goal_inproc_ms_per_record_b1_t1_max`): at most {fmt(goal)} ms per record at "
                     "batch 1 on one thread."] if goal is not None else [])


def serve_batch_curve(data: dict[str, Any]) -> list[str]:
    """In-process ms per request by batch size, and the batching settings derived from it."""
    curve = data.get("inproc_ms_by_batch") or {}
    derived = lookup(data, "batching.derived.ms_per_record") or {}
    lines = ["| batch size | ms per call | ms per record |", "|---|---|---|"]
    lines += [f"| {size} | {fmt(ms)} | {fmt(derived.get(size))} |" for size, ms in curve.items()]
    return lines + ["", *rows_table((
        Row("derived max_batch_size", "batching.derived.max_batch_size"),
        Row("derived max_latency_ms", "batching.derived.max_latency_ms"),
        Row("rule", "batching.derived.rule"),
        Row("configured max_batch_size (service.py)", "batching.configured.max_batch_size"),
        Row("configured max_latency_ms (service.py)", "batching.configured.max_latency_ms"),
        Row("adaptive batching on by default", "batching.on_by_default")), data)]


def serve_abuse(data: dict[str, Any]) -> list[str]:
    """The costliest request of at most 1 MB and /healthz meanwhile, then each request sent."""
    lines = rows_table((
        Row("worst request, seconds (median of its repeats)", "abuse.max_request_seconds", "<=",
            "abuse.goals.max_request_seconds.limit"),
        Row("the worst request", "abuse.worst_request"),
        Row("/healthz while they ran, p99 ms", "abuse.healthz_p99_ms", "<=", "abuse.goals.healthz_p99_ms.limit"),
        Row("/healthz while they ran, slowest ms", "abuse.healthz_max_ms"),
        Row("/healthz polls", "abuse.healthz_polls"), Row("limits served", "abuse.limits"),
        Row("load average (1 min) before and after, and CPUs", "abuse.load_average_1m")), data)
    lines += ["", "| request | bytes | status | seconds, each repeat | slowest /healthz meanwhile, ms |",
              "|---|---|---|---|---|"]
    for name, row in (lookup(data, "abuse.requests") or {}).items():
        lines.append(f"| `{name}` | {fmt(row.get('bytes'))} | {fmt(row.get('status'))} | {fmt(row.get('seconds'))} "
                     f"| {fmt(row.get('healthz_max_ms'))} |")
    return lines


FIGURES: dict[str, Figure] = {
    "quality": Figure("reports/quality.json", "make sweep", render=lambda q: _quality_table(q)),
    "bench-ingest": Figure(f"{SNAPSHOT}/ingest.json", "python -m mmcore.bench ingest --records 3000", rows=(
        Row("records ingested", "records"), Row("worker processes", "workers"),
        Row("ingest, records/s", "records_per_s"),
        Row("decode-only limit, records/s (same images, same processes)", "decode_limit_per_s"),
        Row("ratio ingest / decode limit", "ratio", ">=", "goal_ratio"),
        Row("validation (GX), rows/s", "validation_rows_per_s"),
        Row("no-op `dvc repro`, s", "noop_dvc_repro_s"))),
    "bench-serve": Figure(f"{SNAPSHOT}/serve.json", "python -m mmcore.bench serve --seconds 20", rows=(
        Row("in process, batch 1, ms (median)", "inproc_ms_b1"),
        Row("served, concurrency 1, p50 ms", "p50_ms_c1"), Row("served, concurrency 1, p95 ms", "p95_ms_c1"),
        Row("limit for p50: 1.3 x in process + 5 ms", "p50_c1_limit_ms"),
        Row("p50 / limit", "p50_c1_ratio", "<=", "goal_p50_c1_ratio_max"),
        Row("p50 at concurrency 1 after a concurrency-32 burst / before", "p50_c1_after_burst_ratio", "<=",
            "goal_p50_c1_after_burst_ratio_max"),
        Row("the same with adaptive batching on", "batched_p50_c1_after_burst_ratio"),
        Row("served, concurrency 32, requests/s (batching off)", "served_rps_c32"),
        Row("served, concurrency 32, requests/s (batching on)", "batched_rps_c32"),
        Row("batching speed-up at concurrency 32", "batching_speedup"),
        Row("mean merged batch at concurrency 32", "mean_merged_batch_c32"),
        Row("served, concurrency 32, p99 ms", "p99_ms_c32"),
        Row("shipped backend", "served.shipped.backend"), Row("int8 encoders shipped", "served.shipped.int8_encoders"),
        Row("torch backend served: p50 ms at concurrency 1", "served.torch.p50_ms_c1"),
        Row("torch backend served: requests/s at concurrency 32", "served.torch.rps_c32"),
        Row("shipped / torch requests/s", "served_speedup_vs_torch", ">=", "goal_served_speedup_vs_torch_min"),
        Row("seconds per concurrency-32 run", "seconds_per_c32_run"),
        Row("requests per run", "requests"), Row("failed requests per run", "errors"),
        Row("the record sent", "record"))),
    "bench-serve-backends": Figure(f"{SNAPSHOT}/serve.json", "python -m mmcore.bench serve --seconds 20",
                                   render=serve_backends),
    "bench-serve-batching": Figure(f"{SNAPSHOT}/serve.json", "python -m mmcore.bench serve --seconds 20",
                                   render=serve_batch_curve),
    "bench-serve-abuse": Figure(f"{SNAPSHOT}/serve.json", "python -m mmcore.bench abuse",
                                render=serve_abuse),
    "bench-serve-routing": Figure(f"{SNAPSHOT}/serve.json", "python -m mmcore.bench serve --seconds 20", rows=(
        Row("served, concurrency 1, p50 ms, routed", "routing.p50_ms_c1.routed"),
        Row("served, concurrency 1, p50 ms, plain", "routing.p50_ms_c1.plain"),
        Row("routed / plain, served", "routing.p50_c1_routing_ratio", "<=", "routing.goal_ratio_max"),
        Row("in process, ms, routed", "routing.inproc_ms_b1.routed"),
        Row("in process, ms, plain", "routing.inproc_ms_b1.plain"),
        Row("routed / plain, in process", "routing.inproc_routing_ratio", "<=", "routing.goal_ratio_max"),
        Row("requests each", "routing.requests_each"))),
    "bench-train": Figure(f"{SNAPSHOT}/train.json", "python -m mmcore.bench train", rows=(
        Row("strategy", "strategy"), Row("training records", "train_records"), Row("epochs", "epochs"),
        Row("alternating repeats (fastest of each kept)", "repeats"),
        Row("through the featurizer and fit, samples/s", "samples_per_s"),
        Row("same model on tensors in memory, samples/s", "compute_limit_samples_per_s"),
        Row("ratio", "ratio", ">=", "goal_ratio"),
        Row("steady pace: training records / median epoch after the first, samples/s", "steady_samples_per_s"),
        Row("fine-tuning strategy", "finetune.strategy"), Row("its training records", "finetune.train_records"),
        Row("its samples/s", "finetune.samples_per_s"),
        Row("its compute limit, samples/s", "finetune.compute_limit_samples_per_s"),
        Row("its ratio", "finetune.ratio", ">=", "goal_ratio"),
        Row("full fine-tuning (CUDA only), steady samples/s", "full_finetune.steady_samples_per_s", ">=",
            "full_finetune.goal_samples_per_s"),
        Row("full fine-tuning: image size", "full_finetune.image_size"),
        Row("full fine-tuning: skipped because", "full_finetune.skipped"),
        Row("inference, records/s at batch 1", "inference.records_per_s_b1"),
        Row("inference, records/s at batch 64", "inference.records_per_s_b64"),
        Row("inference torch threads", "inference.torch_threads"),
        Row("device", "device"), Row("bf16 autocast", "bf16_autocast"), Row("peak memory, MB", "peak_mem_mb"), Row("peak memory kind", "peak_mem_kind"))),
    "bench-monitor": Figure(f"{SNAPSHOT}/monitor.json", "python -m mmcore.bench monitor", rows=(
        Row("a window of answers: answers", "window.answers"),
        Row("labelled answers (live quality)", "window.labelled_answers"),
        Row("model versions", "window.versions"), Row("bootstrap rounds", "window.n_boot"),
        Row("drift sample (records through the encoders)", "window.drift_sample"),
        Row("the whole window, s", "window_100k_seconds", "<=", "goals.window_100k_seconds.limit"),
        Row("reading the capture log alone, s", "read_only_seconds"),
        Row("capture on vs off: p50 at concurrency 1, relative", "capture_overhead_p50", "<=",
            "goals.capture_overhead_p50.limit"),
        Row("capture on vs off: requests/s at concurrency 32, relative loss", "capture_overhead_rps", "<=",
            "goals.capture_overhead_rps.limit"),
        Row("drift test: windows without shift", "drift.windows_no_shift"),
        Row("drift test: window records", "drift.window"), Row("reference records", "drift.reference"),
        Row("drift test: false-alarm rate (drift that counts)", "false_alarm_rate"),
        Row("its one-sided 95% upper bound", "false_alarm_upper", "<=", "goals.false_alarm_upper.limit"),
        Row("significant tests at any effect, rate", "test_alarm_rate"),
        Row("their 95% upper bound", "test_alarm_upper"),
        Row("detection, 5% of the window from a new hub", "detection_by_share.5%"),
        Row("detection, 10%", "detection_by_share.10%"),
        Row("detection, 20%", "detection_rate", ">=", "goals.detection_rate.limit"),
        Row("detection, 50%", "detection_by_share.50%"),
        Row("windows per share", "drift.windows_per_share"),
        Row("minimum held-out AUC (monitor.min_drift_auc)", "drift.min_drift_auc"))),
    "bench-triggers": Figure(f"{SNAPSHOT}/triggers.json", "python -m mmcore.bench triggers", rows=(
        Row("steady labelling: min_new_labels reached, no retrain within the cooldown", "goals.missed.value",
            "<=", 0),
        Row("steady labelling (15 labels/h): retrains", "steady_labelling.fast.retrains"),
        Row("steady labelling (15 labels/h): longest wait for a retrain, h", "steady_labelling.fast.max_delay_hours"),
        Row("persistent live drop: retrains", "persistent_live_drop.retrains"),
        Row("persistent live drop: most retrains in a day", "goals.max_retrains_per_day.value", "<=", 1),
        Row("no shift: drift retrains per 30 days (mean over replays)", "goals.spurious_per_30_days.value", "<=", 1),
        Row("no shift: the k-of-n rule's spells per 30 days (before labels and cooldown)",
            "no_shift.rule_spells_per_30_days"),
        Row("new hub: replays with a drift retrain", "new_hub.detected"),
        Row("new hub: hours to the drift retrain (median)", "new_hub.hours_to_drift_retrain_median"))),
    "bench-sizes": Figure(f"{SNAPSHOT}/sizes.json",
                          "python -m mmcore.profile.capacity --measure sizes --size-records 400", rows=(
        Row("landing batch, bytes/record", "landing_bytes_per_record"),
        Row("data/raw shards, bytes/record", "raw_shard_bytes_per_record"),
        Row("data/raw profile table, bytes/record", "raw_profile_bytes_per_record"),
        Row("ingest resident memory, bytes/record", "ingest_rss_bytes_per_record"),
        Row("capture, bytes/answer", "capture_bytes_per_answer"),
        Row("embedding cache, bytes/record", "embedding_cache_bytes_per_record"),
        Row("serving replica resident memory, MB", "replica_rss_mb"), Row("its backend", "replica_backend"),
        Row("MLflow store", "mlflow.db"), Row("MLflow rows per run", "mlflow.rows_per_run"),
        Row("MLflow bytes per run (upper bound: the empty schema's pages included)", "mlflow.bytes_per_run"),
        Row("Prefect store", "prefect.db"), Row("Prefect rows per flow run", "prefect.rows_per_flow_run"),
        Row("Prefect bytes per flow run (upper bound, as above)", "prefect.bytes_per_flow_run"))),
    "bench-gate": Figure(f"{SNAPSHOT}/gate.json", "python -m mmcore.bench gate --out reports/bench/gate.json", rows=(
        *(Row(f"{name} challenger: {what}", f"{name}.{key}")
          for name in ("better", "equal", "slightly_worse", "worse_one_hub")
          for what, key in (("true macro-F1 gap (oracle)", "true_gap"), ("promotion rate", "promotion_rate"),
                            ("its 95% interval", "ci95"), ("goal", "goal"), ("goal met", "met"),
                            ("repetitions", "n"))),
        Row("all goals met", "all_goals_met"), Row("seconds", "seconds"), Row("setup", "setup"))),
    "serving-image": Figure(f"{SNAPSHOT}/serving_image.json", "python -m mmcore.serving.image_check --bento "
                            "parcel-condition:v1 --out reports/bench/serving_image.json", rows=(
        Row("serving install: site-packages, MB", "serving.site_packages_mb"),
        Row("serving install: packages", "serving.packages"),
        Row("training environment: site-packages, MB", "today.site_packages_mb"),
        Row("training environment: packages", "today.packages"),
        Row("serving / training size", "ratio_serving_to_today"), Row("install time, s", "install.wall_s"),
        Row("imports in the serving environment (torch and transformers must fail)", "imports"),
        Row("a record served from it: HTTP status", "served.status"), Row("all checks passed", "ok"))),
}


def _quality_table(q: dict[str, Any]) -> list[str]:
    from mmcore.sweep import render

    return render(q).splitlines()


def measured_at(data: dict[str, Any]) -> str:
    at = data.get("measured_at") or data.get("scored") or data.get("date")
    if isinstance(at, dict):
        return ", ".join(f"{part} {t}" for part, t in at.items())
    return at or "not recorded"


def machine_text(data: dict[str, Any]) -> str:
    m = data.get("machine")
    if isinstance(m, dict):
        parts = [f"{m['cpus']} CPUs" if m.get("cpus") else "", m.get("platform", ""),
                 f"Python {m['python']}" if m.get("python") else ""]
        return ", ".join(p for p in parts if p) or "not recorded"
    if data.get("device") or data.get("platform"):
        return ", ".join(str(data[k]) for k in ("device", "platform") if data.get(k))
    return "not recorded in this report"


def command_text(path: Path, data: dict[str, Any], fallback: str) -> str:
    """The command that wrote these very bytes (provenance.json beside it, checked by digest), else what
    the report says of itself, else the command that writes such a report."""
    import hashlib

    prov = path.parent / "provenance.json"
    entry = (json.loads(prov.read_text()) if prov.is_file() else {}).get(path.stem) or {}
    if entry.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest():
        return f"`{entry['command']}` ({entry['wall_s']} s)"
    own = data.get("command") or data.get("commands")
    if own:
        return "; ".join(f"`{c}`" for c in ([own] if isinstance(own, str) else own))
    return f"not recorded (`{fallback}` writes this report)"


def render_figure(name: str, root: Path = ROOT, page: str = "index.md") -> str:
    """A figure table with its source line; a note naming the command when the report is not there."""
    fig = FIGURES[name]
    path = root / fig.report
    if not path.is_file():
        return (f'!!! note "Not measured in this release"\n    `{fig.report}` is not in this release. '
                f"`{fig.produce}` writes it (as `reports/bench/{Path(fig.report).name}` "
                f"for the benchmarks; `python -m mmcore.docs_gen snapshot` then copies it here)."
                if fig.report.startswith(SNAPSHOT) else
                f'!!! note "Not measured in this release"\n    `{fig.report}` is not in this release: '
                f"`{fig.produce}` writes it.")
    data = json.loads(path.read_text(encoding="utf-8"))
    body = fig.render(data) if fig.render else rows_table(fig.rows, data)
    link = fig.report
    if fig.report.startswith("docs/"):   # inside the site: link the JSON itself
        target = posixpath.relpath(fig.report[len("docs/"):], posixpath.dirname(page) or ".")
        link = f"[`{fig.report}`]({target})"
    else:
        link = f"`{fig.report}`"
    source = (f"*Report {link}: measured {measured_at(data)}; machine: {machine_text(data)}; "
              f"command: {command_text(path, data, fig.produce)}.*")
    return "\n".join([source, "", *body])


# --------------------------------------------------------------------------- the configuration reference
def field_comments(source: str) -> dict[str, dict[str, str]]:
    """{class: {field: the comment on its line}} for every dataclass in config.py's source."""
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {stmt.target.id: comments.get(stmt.end_lineno or stmt.lineno, "")
                              for stmt in node.body
                              if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    return out


def field_types(source: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                              if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    return out


def yaml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "see below"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{yaml_value(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "see below" if dataclasses.is_dataclass(value) else f"`{yaml_value(value)}`"
    return "required"


def class_doc(cls: type) -> str:
    """The docstring's first paragraph on one line ("" for a dataclass without one: its generated
    signature is no explanation)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split("\n\n")[0].split())


def section_table(prefix: str, cls: type, raw: dict[str, Any], comments: dict[str, dict[str, str]],
                  types: dict[str, dict[str, str]]) -> list[str]:
    lines = ["| key | type | default | params.yaml | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name == "raw":
            continue
        nested = dataclasses.is_dataclass(getattr(sys.modules[cls.__module__], types[cls.__name__][f.name], None))
        here = "—" if f.name not in raw else "see below" if nested else f"`{yaml_value(raw[f.name])}`"
        lines.append(f"| `{prefix}.{f.name}` | `{cell(types[cls.__name__][f.name])}` | {cell(default_of(f))} | "
                     f"{cell(here)} | {cell(comments[cls.__name__][f.name])} |")
    return lines


def config_reference(params_path: Path = ROOT / "params.yaml", config_path: Path | None = None) -> str:
    """Every section and key of params.yaml: type and default from mmcore/config.py's dataclasses, the
    meaning from the comment on the field, and the value params.yaml sets ("—": the default applies)."""
    from mmcore import config

    source = (config_path or Path(config.__file__)).read_text(encoding="utf-8")
    comments, types = field_comments(source), field_types(source)
    raw = config.load_yaml(params_path.read_text(encoding="utf-8")) or {}   # as load_params reads it
    sections = {f.name: f.type for f in dataclasses.fields(config.Params) if f.name != "raw"}
    classes = {name: getattr(config, t if isinstance(t, str) else t.__name__) for name, t in sections.items()}
    out: list[str] = []
    for name, cls in classes.items():
        out += [f"## `{name}`", "", f"`{cls.__name__}` in `mmcore/config.py`. {class_doc(cls)}".rstrip(), "",
                *section_table(name, cls, raw.get(name) or {}, comments, types), ""]
        for f in dataclasses.fields(cls):
            sub = getattr(config, types[cls.__name__][f.name], None)
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                out += [f"### `{name}.{f.name}`", "", f"`{sub.__name__}` in `mmcore/config.py`. {class_doc(sub)}", "",
                        *section_table(f"{name}.{f.name}", sub, (raw.get(name) or {}).get(f.name) or {},
                                       comments, types), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- pages
def readme_diagram(root: Path = ROOT) -> str:
    """The README's Mermaid block, so the picture is drawn once for the code host and the site."""
    text = (root / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^```mermaid\n.*?^```$", text, re.MULTILINE | re.DOTALL)
    if not found:
        raise ValueError("README.md has no ```mermaid block for the docs' front page")
    return found.group(0)


def render_page(markdown: str, root: Path = ROOT, page: str = "index.md") -> str:
    """Every marker of a page replaced by what it asks for; an unknown marker is an error."""
    def one(m: re.Match[str]) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "figure" and arg in FIGURES:
            return render_figure(arg, root, page)
        if kind == "config-reference":
            return config_reference(root / "params.yaml")
        if kind == "readme-diagram":
            return readme_diagram(root)
        raise ValueError(f"{page}: unknown docs marker {m.group(0)!r}")
    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the page's markers rendered, against the checkout that holds mkdocs.yml."""
    return render_page(markdown, Path(config["config_file_path"]).resolve().parent, page.file.src_uri)


def snapshot(src: Path = ROOT / "reports/bench", dst: Path = ROOT / SNAPSHOT) -> list[str]:
    """A release point: the benchmark reports and their provenance, byte for byte, into the docs."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(src.glob("*.json")):
        shutil.copyfile(path, dst / path.name)
        copied.append(path.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Figures and the config reference for the documentation site.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("snapshot", help="copy reports/bench/*.json into docs/reports/bench/ (a release point)")
    one = sub.add_parser("render", help="print a page as the site builds it")
    one.add_argument("page", type=Path)
    args = ap.parse_args(argv)
    if args.command == "snapshot":
        names = snapshot()
        print(f"docs_gen: {', '.join(names) or 'nothing'} copied to {SNAPSHOT}/" if names else
              "docs_gen: reports/bench/ holds no report: run `make bench` first", file=sys.stderr)
        return 0 if names else 2
    page = args.page.resolve().relative_to(ROOT / "docs").as_posix()
    print(render_page(args.page.read_text(encoding="utf-8"), ROOT, page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
