"""A browsable HTML report of a run folder (and of a grid of runs), for readers without Jupyter.

``render_run(run)`` converts every executed notebook of the run to HTML (nbconvert) and writes
``index.html``: the run's parameters and provenance, the status of each notebook with a link,
the overview tables notebook 05 wrote, and every figure. ``render_grid(grid)`` writes an
``index.html`` opening with the generated answer, then notebook 05's overview tables across
the cells (methods side by side, ceilings, paired differences) and the control figure, with a
link to each cell's report and the grid's summary table.

The HTML copies are for reading, so they are trimmed: long printed outputs keep their head and
tail, progress bars keep their last state, and warning lines are dropped (the executed
``.ipynb`` beside them keeps everything).
"""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path

import nbformat
import pandas as pd

from ecgcmr.evaluate.report import OVERVIEW_RUN, SHARED_RUNS

MAX_STREAM_LINES = 40        # longer printed outputs keep their first and last lines
KEEP_HEAD, KEEP_TAIL = 25, 10
# "…/file.py:12: UserWarning: text" and the source line that Python prints after it
_WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")
# notebook 05's tables, in the order a report shows them after the answer
_OVERVIEW_TABLES = ("05_phenotypes_overview", "05_ceilings_overview", "05_paired_overview",
                    "05_classification_overview", "05_survival_overview",
                    "05_relative_improvement")
_CONTROL_FIGURE = "05_control_dual_phase.png"

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
.failed { color: #b00; font-weight: bold; } .done { color: #070; }
.note { background: #fff8e0; padding: 0.5em 1em; border-left: 4px solid #e0b000; }
"""


# ============================================================================================
# Trimming notebook outputs for reading
# ============================================================================================
def _collapse_progress(text: str) -> str:
    """Keep the last state of each carriage-return-redrawn line (tqdm's progress bars)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _drop_warnings(lines: list[str]) -> list[str]:
    out, skip_next = [], False
    for line in lines:
        if skip_next and line.startswith(" "):      # the source line printed under a warning
            skip_next = False
            continue
        skip_next = bool(_WARNING_LINE.match(line))
        if not skip_next:
            out.append(line)
    return out


def trim_text(text: str) -> str:
    """A printed output as a reader wants it: progress collapsed, warnings dropped, long
    outputs cut to their head and tail with a note of how much was left out."""
    lines = _drop_warnings(_collapse_progress(text).split("\n"))
    if len(lines) > MAX_STREAM_LINES:
        cut = len(lines) - KEEP_HEAD - KEEP_TAIL
        lines = [*lines[:KEEP_HEAD], f"… {cut} lines left out (the .ipynb has them all) …",
                 *lines[-KEEP_TAIL:]]
    return "\n".join(lines)


def trimmed_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose stream outputs are trimmed (see :func:`trim_text`)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = trim_text(out.get("text", ""))
                if not out["text"].strip():
                    continue
            kept.append(out)
        cell["outputs"] = kept
    return nb


# ============================================================================================
# Rendering
# ============================================================================================
def render_notebook(path: Path) -> Path:
    """``<name>.ipynb`` → ``<name>.html`` beside it (trimmed outputs, code shown)."""
    from nbconvert import HTMLExporter

    nb = trimmed_notebook(nbformat.read(path, as_version=4))
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


#: Notebook 05's generated answer paragraph, in a run's tables/.
ANSWER_FILE = "05_answer.txt"


def _page(title: str, body: Iterable[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")


def _table_html(csv_path: Path) -> str:
    return pd.read_csv(csv_path).to_html(index=False, na_rep="", border=0)


def _status(run: Path) -> dict[str, str]:
    path = run / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _answer(run: Path) -> list[str]:
    """The generated answer of notebook 05 (:mod:`ecgcmr.evaluate.answer`), if it ran."""
    path = run / "tables" / ANSWER_FILE
    if not path.is_file() or not path.read_text().strip():
        return []
    return ["<h2>The answer, in numbers</h2>",
            f"<p class='answer'>{html.escape(path.read_text().strip())}</p>"]


def _overview_tables(run: Path, prefix: str = "") -> list[str]:
    """Notebook 05's overview tables of ``run`` (links relative to the page: ``prefix``)."""
    parts = []
    for name in _OVERVIEW_TABLES:
        csv_path = run / "tables" / f"{name}.csv"
        if csv_path.is_file():
            parts += [f"<h2>{html.escape(name)}</h2>", _table_html(csv_path),
                      f"<p><a href='{prefix}tables/{csv_path.name}'>{csv_path.name}</a></p>"]
    return parts


def render_run(run_dir: str | Path) -> Path:
    """Render every executed notebook of a run folder and write its ``index.html``."""
    run = Path(run_dir)
    status = _status(run)
    notebooks = sorted(run.glob("[0-9][0-9]_*.ipynb"))
    parts = [f"<h1>Run {html.escape(run.name)}</h1>",
             "<p class='note'>Results on a <b>synthetic</b> cohort unless this run was given a "
             "real-data manifest (see the parameters): they test the pipeline and compare "
             "methods; they are not the paper's results.</p>",
             *_answer(run), "<h2>Notebooks</h2><ul>"]
    for nb in notebooks:
        page = render_notebook(nb)
        state = status.get(nb.name, "not run")
        parts.append(f"<li><a href='{page.name}'>{html.escape(nb.stem)}</a> "
                     f"<span class='{state}'>{html.escape(state)}</span> "
                     f"(<a href='{nb.name}'>notebook</a>)</li>")
    parts.append("</ul>")
    parts += _overview_tables(run)
    tables = sorted((run / "tables").glob("*.csv")) if (run / "tables").is_dir() else []
    if tables:
        parts.append("<h2>All tables (tidy CSV)</h2><ul>")
        parts += [f"<li><a href='tables/{t.name}'>{t.name}</a></li>" for t in tables]
        parts.append("</ul>")
    figures = sorted((run / "figures").glob("*.png")) if (run / "figures").is_dir() else []
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f"<figure><a href='figures/{f.name}'><img src='figures/{f.name}' "
                  f"alt='{f.stem}'></a><figcaption>{html.escape(f.stem)}</figcaption></figure>"
                  for f in figures]
    for name in ("params.yaml", "provenance.json", "environment.txt"):
        if (run / name).is_file():
            parts.append(f"<h2>{name}</h2><pre>{html.escape((run / name).read_text())}</pre>")
    index = run / "index.html"
    index.write_text(_page(f"ecgcmr run {run.name}", parts), encoding="utf-8")
    return index


def render_grid(grid_dir: str | Path) -> Path:
    """``index.html`` of a grid folder: the answer and overview tables of the overview run
    (notebook 05 over every cell), the control figure, one link per cell's report, and the
    summary table."""
    grid = Path(grid_dir)
    overview = grid / OVERVIEW_RUN
    parts = [f"<h1>Grid {html.escape(grid.name)}</h1>", *_answer(overview)]
    if (overview / "index.html").is_file():
        parts.append(f"<p><a href='{OVERVIEW_RUN}/index.html'>Overview across the grid</a> "
                     "(every table and figure of notebook 05 over all cells)</p>")
    for shared in sorted((grid / SHARED_RUNS).glob("*/index.html")):
        parts.append(f"<p><a href='{shared.relative_to(grid)}'>Data preparation</a> (the "
                     "cohort and the cache, notebooks 00-01, shared by every cell)</p>")
    parts += _overview_tables(overview, prefix=f"{OVERVIEW_RUN}/")
    control = overview / "figures" / _CONTROL_FIGURE
    if control.is_file():
        src = f"{OVERVIEW_RUN}/figures/{control.name}"
        parts += ["<h2>The dual-phase controls</h2>",
                  f"<figure><a href='{src}'><img src='{src}' alt='controls'></a></figure>"]
    parts.append("<h2>Cells</h2><ul>")
    for cell in sorted(p for p in grid.iterdir()
                       if (p / "status.json").is_file() and p.name != OVERVIEW_RUN):
        state = "failed" if "failed" in _status(cell).values() else "done"
        target = f"{cell.name}/index.html" if (cell / "index.html").is_file() else \
            f"{cell.name}.log" if (grid / f"{cell.name}.log").is_file() else None
        label = html.escape(cell.name)
        link = f"<a href='{target}'>{label}</a>" if target else label
        parts.append(f"<li>{link} <span class='{state}'>{state}</span></li>")
    parts.append("</ul>")
    summary = grid / "summary.csv"
    if summary.is_file():
        parts.append("<h2>Summary</h2><p>Every tidy metric, mean ± sd over seeds: "
                     "<a href='summary.csv'>summary.csv</a></p>")
    index = grid / "index.html"
    index.write_text(_page(f"ecgcmr grid {grid.name}", parts), encoding="utf-8")
    return index


def broken_links(page: str | Path) -> list[str]:
    """Local ``href``/``src`` targets of an HTML page that do not exist (external links and
    in-page anchors are not checked)."""
    from html.parser import HTMLParser

    targets: list[str] = []

    class _Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            targets.extend(v for k, v in attrs if k in ("href", "src") and v)

    page = Path(page)
    _Links().feed(page.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"^([a-z]+:|#|//)", t)]
    return [t for t in local if not (page.parent / t.split("#")[0]).exists()]
