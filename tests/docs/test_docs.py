"""The documentation: the site builds strictly, the configuration reference covers params.yaml, every
figure names its report, and the README stays a front page whose links work."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmcore import config
from mmcore.docs_gen import FIGURES, MARKER, config_reference, render_figure, render_page
from tests.conftest import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav or a bad marker fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    built = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "gate.min_macro_f1" in built and "<!-- docs:" not in built


def test_the_config_reference_lists_every_key_of_params_yaml_with_a_meaning() -> None:
    reference = config_reference(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = [f"{section}.{key}" for section, body in raw.items() for key in (body or {})]
    keys += [f"synth.shift.{key}" for key in raw["synth"]["shift"]]
    assert keys and [k for k in keys if f"| `{k}` |" not in reference] == []
    rows = [line.split(" | ") for line in reference.splitlines() if line.startswith("| `")]
    assert [r[0] for r in rows if not r[-1].strip(" |")] == [], "a key without a meaning: comment its field"
    sections = {f.name: getattr(config, f.type) for f in dataclasses.fields(config.Params) if f.name != "raw"}
    fields = [f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)]
    assert [k for k in fields if f"| `{k}` |" not in reference] == []


def test_a_new_key_documents_itself_from_its_comment(tmp_path: Path) -> None:
    """The meaning is read from the comment on the field's line: nothing is written twice."""
    from mmcore.docs_gen import field_comments, field_types

    source = "class GateConfig:\n    min_recall: float = 0.3   # floor: the worst class's recall\n"
    assert field_comments(source) == {"GateConfig": {"min_recall": "floor: the worst class's recall"}}
    assert field_types(source) == {"GateConfig": {"min_recall": "float"}}


def test_every_marker_on_a_page_is_known_and_every_figure_is_shown() -> None:
    used = {m.group(2) for page in PAGES for m in MARKER.finditer(page.read_text()) if m.group(1) == "figure"}
    assert used == set(FIGURES), "a figure no page shows, or a page asking for an unknown figure"
    with pytest.raises(ValueError, match="unknown docs marker"):
        render_page("<!-- docs: figure no-such-figure -->", ROOT, "x.md")


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_names_its_report_with_date_machine_and_command(name: str) -> None:
    text = render_figure(name, ROOT, "benchmarks.md")
    report = FIGURES[name].report
    assert f"`{report}`" in text
    if (ROOT / report).is_file():
        source = text.splitlines()[0]
        assert re.search(r"measured \S", source) and "machine: " in source and "command: " in source, source
        assert "|" in text     # a table follows
    else:
        assert "Not measured in this release" in text and FIGURES[name].produce in text


def test_no_measured_figure_is_typed_into_a_page() -> None:
    """A guard against the common slips (a speed or a latency percentile typed into prose); the tables come
    from markers. capacity.md is itself generated from the reports (mmcore/profile/capacity.py)."""
    for page in PAGES:
        if page.name == "capacity.md":
            continue
        text = page.read_text()
        assert not re.search(r"\d ?(records/s|samples/s|rows/s|requests/s|ms per record)\b", text), page.name
        assert not re.search(r"\bp(50|95|99)\b[^.\n]{0,20}\b\d+(\.\d+)? ?ms\b", text), page.name


def test_the_readme_is_a_front_page_with_working_links() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "```mermaid" in readme
    for needed in ("make run", "make test", "reports/runs/", "mlflow ui", "prefect server start",
                   "gx/uncommitted/data_docs", "mkdocs serve"):
        assert needed in readme, needed
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local and [link for link in local if not (ROOT / link).exists()] == []
    assert {f"docs/{page.name}" for page in PAGES} <= set(local), "a documentation page the README does not link"
