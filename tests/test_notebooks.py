"""Smoke run of the notebook series with papermill on the tiny profile."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ecgcmr.runs import notebook_series, run_series


def test_notebook_series_runs_on_the_tiny_profile(tmp_path: Path) -> None:
    run = tmp_path / "run"
    params = {"profile": "tiny", "n_subjects": 24, "workers": 1, "n_boot": 50,
              "mlp_epochs": 20, "finetune_encoder": True, "finetune_epochs": 2,
              "data_dir": str(tmp_path / "data")}
    result = run_series(run, params, progress=False)
    assert result and set(result.values()) == {"done"}, result
    for nb in notebook_series():
        executed = nbformat.read(run / nb.name, as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (nb.name, errors)
    assert (run / "figures" / "00_ecg_12lead.png").stat().st_size > 10_000
    assert (run / "figures" / "00_cmr_ed_es.png").is_file()
    assert (run / "tables" / "01_qc_report.csv").is_file()
    assert (run / "cache.json").is_file()      # the cache 01 built: what 02-04 of the run read
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["00_cohort.ipynb"]["packages"]["torch"].startswith("2.13")
    assert "profile: tiny" in (run / "params.yaml").read_text()
    assert (run / "embeddings" / "ecg.parquet").is_file()
    metrics = pd.read_csv(run / "tables" / "03_phenotype_metrics.csv")
    assert {"method", "seed", "model", "target", "metric", "value", "ci_low", "ci_high",
            "n"} <= set(metrics.columns)
    assert {"dual", "classical"} == set(metrics["method"])
    assert {"probe", "mlp", "mlp+covariates", "mlp-finetuned"} <= set(metrics["model"])
    assert (run / "figures" / "05_example_pairs.png").stat().st_size > 10_000
    assert (run / "tables" / "05_classification_overview.csv").is_file()
    for table in ("04_classification_metrics", "04_survival_metrics"):
        outcomes = pd.read_csv(run / "tables" / f"{table}.csv")   # the baseline beside dual
        assert set(outcomes["method"]) == {"dual", "classical"}, table
    overview = pd.read_csv(run / "tables" / "05_phenotypes_overview.csv")
    assert "dual" in overview.columns and "classical" in overview.columns
    assert (run / "figures" / "05_label_efficiency.pdf").is_file()
    assert (run / "figures" / "02_training_curves.png").is_file()
    # the HTML report: every notebook rendered, every link and image of the index resolves
    from ecgcmr.html_report import broken_links

    assert broken_links(run / "index.html") == []
    assert all((run / f"{nb.stem}.html").is_file() for nb in notebook_series())
    # a finished run folder is never re-executed or overwritten
    assert set(run_series(run, params, progress=False).values()) == {"skipped"}
    # a batch rerun of one notebook with other parameters gets its own folder and embeddings
    # (no notebook 01 in that folder: 02 reads the cache of the default settings)
    pretraining = [nb for nb in notebook_series() if nb.name.startswith("02_")]
    other = tmp_path / "es_seed3"
    assert run_series(other, {**params, "method": "es", "seed": 3}, pretraining,
                      progress=False) == {"02_pretraining.ipynb": "done"}
    a = pd.read_parquet(run / "embeddings" / "ecg.parquet")
    b = pd.read_parquet(other / "embeddings" / "ecg.parquet")
    assert list(a["subject_id"]) == list(b["subject_id"])
    assert not a.filter(regex="^e").equals(b.filter(regex="^e"))
    assert "method: es" in (other / "params.yaml").read_text()
    # what a grid ends with: notebook 05 over every run of the folder, into overview/
    from ecgcmr.runs import _overview

    _overview(tmp_path, params, keys=[])
    overview = tmp_path / "overview"
    assert json.loads((overview / "status.json").read_text()) == {"05_figures.ipynb": "done"}
    table = pd.read_csv(overview / "tables" / "05_phenotypes_overview.csv")
    assert {"dual", "classical"} <= set(table.columns)
    assert broken_links(overview / "index.html") == []


def test_notebooks_declare_parameters_and_are_clean() -> None:
    import papermill as pm

    seen: dict[str, tuple[str, str, str]] = {}
    for nb in notebook_series():
        declared = pm.inspect_notebook(str(nb))
        assert {"profile", "manifest", "run_dir", "data_dir"} <= set(declared), nb.name
        content = nbformat.read(nb, as_version=4)
        assert content.cells[1].metadata.get("tags") == ["parameters"], nb.name
        # every line `name: type = value  # help`, parsed by papermill (--help-notebook)
        lines = [line for line in content.cells[1].source.splitlines()
                 if line.strip() and not line.startswith(("#", "from ", "import "))]
        assert len(lines) == len(declared), f"{nb.name}: a parameter line papermill skips"
        for name, info in declared.items():
            kind = info["inferred_type_name"].removeprefix("Optional[").removesuffix("]")
            assert kind in ("str", "int", "float", "bool"), (nb.name, name, info)
            assert info["help"], (nb.name, name)
            # one parameter, one meaning: the same type and default in every notebook
            typed = (info["inferred_type_name"], info["default"], nb.name)
            assert seen.setdefault(name, typed)[0] == typed[0], (name, seen[name], typed)
            # known exceptions: device ("auto" in 02, "cpu" for 03's fine-tuning) and n_boot
            # (1000 in 03, 200 in 04); one --set still sets both
            if name not in ("device", "n_boot"):
                assert seen[name][1] == typed[1], (name, seen[name], typed)
        assert all(not c.get("outputs") for c in content.cells if c.cell_type == "code"), \
            f"{nb.name}: commit notebooks with outputs cleared"


def test_unknown_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such_parameter"):
        run_series(tmp_path, {"no_such_parameter": 1})


def test_a_grid_reuses_the_cohort_skips_finished_cells_and_survives_a_failing_one(
        tmp_path: Path) -> None:
    from ecgcmr.runs import run_grid

    data = tmp_path / "data"
    # notch 300 Hz is above the Nyquist frequency: those cells fail in notebook 01
    params = {"profile": "tiny", "n_subjects": 12, "workers": 1, "data_dir": str(data),
              "seed": [1, 2], "notch_hz": [50.0, 300.0]}
    first = run_grid(tmp_path / "grid", params, jobs=2, until="01")
    assert first == {"seed-1_notch_hz-50.0": "done", "seed-1_notch_hz-300.0": "failed",
                     "seed-2_notch_hz-50.0": "done", "seed-2_notch_hz-300.0": "failed"}
    assert len(list((data / "synthetic").iterdir())) == 1           # one cohort for all cells
    failed = nbformat.read(tmp_path / "grid" / "seed-1_notch_hz-300.0" /
                           "01_preprocessing.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in failed.cells
               for o in c.get("outputs", []))                          # the error is kept
    second = run_grid(tmp_path / "grid", params, jobs=2, until="01")
    assert second["seed-1_notch_hz-50.0"] == "skipped"
    assert second["seed-2_notch_hz-50.0"] == "skipped"
    assert (tmp_path / "grid" / "summary.csv").is_file()
    # the grid's report links every cell's report (a failed cell's too: its error is shown)
    from ecgcmr.html_report import broken_links

    assert broken_links(tmp_path / "grid" / "index.html") == []
    assert "seed-2_notch_hz-300.0/index.html" in (tmp_path / "grid" / "index.html").read_text()


def test_notebook_05_reanalyses_the_committed_comparison_and_a_run_without_alignment(
        tmp_path: Path) -> None:
    """What export_tables keeps is enough for notebook 05 (no label-efficiency tables), and a
    run of a method that aligned nothing (random) has no retrieval to show, not an error."""
    from ecgcmr.files import project_root

    comparison = project_root() / "results" / "comparison"
    figures = [nb for nb in notebook_series() if nb.name.startswith("05_")]
    for name, results in (("all", comparison), ("random", comparison / "method-random_seed-0")):
        run = tmp_path / name
        assert run_series(run, {"profile": "teaching", "results": str(results),
                                "n_examples": 0}, figures, progress=False) == {
            "05_figures.ipynb": "done"}, name
        answer = (run / "tables" / "05_answer.txt").read_text()
        assert answer.startswith("Best method per phenotype (probe R²")
    assert "dual − ed (paired" in (tmp_path / "all" / "tables" / "05_answer.txt").read_text()
    paired = pd.read_csv(tmp_path / "all" / "tables" / "05_paired_overview.csv")
    assert {"ed", "es", "random"} <= set(paired.columns)


def _notebook(folder: Path, name: str, *sources: str) -> Path:
    """A notebook of ``sources`` (after a parameters cell) in ``folder/notebooks``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("run_dir = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / "notebooks" / name
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)
    return path


def _leaky_series(folder: Path) -> tuple[Path, Path]:
    """Two notebooks: the first leaves a name and a figure behind and prints its process id;
    the second prints its process id and fails if it finds what the first left."""
    first = _notebook(folder, "00_first.ipynb", "import os, sys\nleft_behind = 1",
                      "import matplotlib.pyplot as plt\nfig = plt.figure()",
                      "pid = os.getpid()\nprint(pid)",
                      "assert os.environ['MALLOC_TRIM_THRESHOLD_'] == str(4 << 30)")
    second = _notebook(folder, "01_second.ipynb", "import os, sys\nprint(os.getpid())",
                       "assert 'left_behind' not in globals() and 'fig' not in globals()",
                       "import matplotlib.pyplot as plt\nassert not plt.get_fignums()")
    return first, second


def _printed_pids(run: Path, notebooks: list[Path]) -> list[str]:
    """The process ids the notebooks printed, checking that each counts its cells from 1."""
    pids = []
    for path in notebooks:
        executed = nbformat.read(run / path.name, as_version=4)
        code = [c for c in executed.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
        pids += [o["text"].strip() for c in code for o in c.outputs if o.get("name") == "stdout"]
    return pids


def test_a_series_shares_one_kernel_but_no_variable_between_notebooks(tmp_path: Path) -> None:
    """The notebooks of a series run in one kernel (the libraries stay imported) and still
    each start empty: a name the first defines is gone in the second, the first's figures
    are closed, and each counts its cells from 1."""
    first, second = _leaky_series(tmp_path)
    run = tmp_path / "run"
    assert run_series(run, {}, [first, second], progress=False) == {
        first.name: "done", second.name: "done"}
    pids = _printed_pids(run, [first, second])
    assert len(pids) == 2 and pids[0] == pids[1]     # one kernel process for the series


def test_a_grid_worker_runs_its_cells_in_one_kernel_each_starting_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A grid worker keeps one kernel for all its cells (:func:`ecgcmr.runs._run_cells`):
    the second cell's first notebook does not see what the first cell's last one left (it
    would fail if it did), and a cell whose kernel dies fails alone: the next gets a new one."""
    from ecgcmr.runs import _run_cells

    first, second = _leaky_series(tmp_path)
    crash = _notebook(tmp_path, "00_crash.ipynb", "import os\nos._exit(1)")
    cells = [(tmp_path / "grid" / "a", {}, [first, second]),
             (tmp_path / "grid" / "b", {}, [second, first]),   # first's leftovers, then second's
             (tmp_path / "grid" / "c", {}, [crash]),
             (tmp_path / "grid" / "d", {}, [first])]
    (tmp_path / "grid").mkdir()
    with capsys.disabled():   # a grid worker prints to the process's own stdout, not pytest's
        states = _run_cells(iter(cells), tmp_path / "grid" / "kernels.log")
    assert states == {"a": "done", "b": "done", "c": "failed", "d": "done"}
    pids = (_printed_pids(tmp_path / "grid" / "a", [first, second])
            + _printed_pids(tmp_path / "grid" / "b", [second, first]))
    assert len(pids) == 4 and len(set(pids)) == 1        # one kernel for cells a and b
    assert _printed_pids(tmp_path / "grid" / "d", [first]) != pids[:1]   # a new one after c
    # each cell's own output in its log, the kernel's start-up output in kernels.log
    assert "run folder:" in (tmp_path / "grid" / "a.log").read_text()
    assert "run folder:" not in (tmp_path / "grid" / "kernels.log").read_text()
