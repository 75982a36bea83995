"""The per-run HTML report: trimmed outputs, and an index whose every link resolves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ecgcmr.html_report import broken_links, render_grid, render_run, trim_text  # noqa: E402

WARNING = "/x/site-packages/lib.py:12: FutureWarning: this will change\n  value = old_api()\n"


def test_trim_text_collapses_progress_drops_warnings_and_cuts_long_outputs() -> None:
    assert trim_text("epoch 1:  10%\repoch 1:  50%\repoch 1: 100%\ndone") == "epoch 1: 100%\ndone"
    assert trim_text(f"before\n{WARNING}after") == "before\nafter"
    long = "\n".join(f"line {i}" for i in range(200))
    trimmed = trim_text(long).split("\n")
    assert trimmed[0] == "line 0" and trimmed[-1] == "line 199"
    assert any("165 lines left out" in t for t in trimmed)
    assert len(trimmed) < 50


def _executed_notebook(path: Path, error: bool = False) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('x')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text="\n".join(f"row {i}" for i in range(300))),
                    nbformat.v4.new_output("stream", name="stderr", text=WARNING)]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="ValueError",
                                                   evalue="bad input", traceback=["boom"]))
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook"), cell]
    nbformat.write(nb, path)


def _run_folder(run: Path, *, failed: bool = False) -> Path:
    (run / "tables").mkdir(parents=True)
    (run / "figures").mkdir()
    _executed_notebook(run / "00_cohort.ipynb")
    _executed_notebook(run / "01_preprocessing.ipynb", error=failed)
    (run / "status.json").write_text(json.dumps(
        {"00_cohort.ipynb": "done", "01_preprocessing.ipynb": "failed" if failed else "done"}))
    pd.DataFrame({"target": ["lvef_pct"], "dual": ["0.5 ± 0.1 (3)"]}).to_csv(
        run / "tables" / "05_phenotypes_overview.csv", index=False)
    pd.DataFrame({"metric": ["r2"], "value": [0.5]}).to_csv(
        run / "tables" / "03_phenotype_metrics.csv", index=False)
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [0, 1])
    fig.savefig(run / "figures" / "05_label_efficiency.png")
    (run / "params.yaml").write_text("profile: tiny\nmethod: dual\n")
    return run


def test_run_report_links_resolve_and_outputs_are_trimmed(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", failed=True)
    index = render_run(run)
    assert broken_links(index) == []
    text = index.read_text()
    for expected in ("00_cohort.html", "figures/05_label_efficiency.png",
                     "tables/03_phenotype_metrics.csv", "0.5 ± 0.1 (3)", "failed", "synthetic"):
        assert expected in text, expected
    page = (run / "00_cohort.html").read_text()
    assert "FutureWarning" not in page and "lines left out" in page
    assert "row 299" in page and "row 150" not in page
    # a failed notebook's error stays visible in its page
    assert "boom" in (run / "01_preprocessing.html").read_text()
    # the checker does find a dangling link
    (run / "figures" / "05_label_efficiency.png").unlink()
    assert broken_links(index) == ["figures/05_label_efficiency.png"] * 2


def test_grid_report_links_every_cell_and_the_overview(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    for name in ("seed-0_method-dual", "seed-1_method-dual"):
        render_run(_run_folder(grid / name))
    render_run(_run_folder(grid / "overview"))
    pd.DataFrame({"metric": ["r2"], "mean": [0.5]}).to_csv(grid / "summary.csv", index=False)
    index = render_grid(grid)
    assert broken_links(index) == []
    text = index.read_text()
    assert "seed-1_method-dual/index.html" in text and "overview/index.html" in text
    assert text.count("<li>") == 2          # the overview is not listed as a cell


def test_a_run_and_its_grid_open_with_the_generated_answer(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    overview = _run_folder(grid / "overview")
    assert "The answer" not in render_run(overview).read_text()    # notebook 05 not run yet
    (overview / "tables" / "05_answer.txt").write_text("Best method per phenotype: <dual>.\n")
    run_page, grid_page = render_run(overview).read_text(), render_grid(grid).read_text()
    for page in (run_page, grid_page):
        assert "Best method per phenotype: &lt;dual&gt;." in page           # escaped
        assert page.index("<h2>The answer") == page.index("<h2>")          # it opens the page


def test_a_grid_page_shows_the_overview_tables_and_the_control_figure(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    render_run(_run_folder(grid / "method-dual_seed-0"))
    overview = _run_folder(grid / "overview")
    pd.DataFrame({"target": ["lvef_pct"], "dual": ["+0.010 [-0.01, +0.03] (3)"]}).to_csv(
        overview / "tables" / "05_paired_overview.csv", index=False)
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(overview / "figures" / "05_control_dual_phase.png")
    render_run(overview)
    index = render_grid(grid)
    assert broken_links(index) == []
    text = index.read_text()
    assert "0.5 ± 0.1 (3)" in text and "+0.010 [-0.01, +0.03] (3)" in text
    assert "overview/tables/05_paired_overview.csv" in text
    assert "overview/figures/05_control_dual_phase.png" in text
    # methods side by side come before the paired differences
    assert text.index("05_phenotypes_overview") < text.index("05_paired_overview")
