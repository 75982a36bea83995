"""Run folders: the cache a run's notebook 01 built, and grids of runs (in-process, no CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ecgcmr.config import get_profile
from ecgcmr.data.cache import build_cache, read_spec
from ecgcmr.data.manifest import read_manifest
from ecgcmr.errors import DataError
from ecgcmr.runs import (
    cache_dir_for,
    classical_baseline_once,
    expand_grid,
    locate_cache,
    record_cache,
    run_grid,
)


def test_later_notebooks_read_the_cache_notebook_01_built_in_their_run(
        tiny_cohort: Path, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    run.mkdir()
    profile = get_profile("tiny")
    spec = profile.cache_spec(notch_hz=60.0)          # not the default settings
    folder = cache_dir_for(tiny_cohort, spec.to_json(), data)
    build_cache(read_manifest(tiny_cohort), folder, spec, workers=1)
    record_cache(run, tiny_cohort, folder)            # what notebook 01 does
    # notebooks 02-04 pass the default settings and the run: they get 01's cache
    cache = locate_cache(tiny_cohort, profile.cache_spec(), data, run_dir=run)
    assert cache.root == folder and read_spec(cache.root).ecg.notch_hz == 60.0
    # without the record, the default settings' cache, which was never built
    for run_dir in (None, tmp_path / "other_run"):
        with pytest.raises(DataError, match="cache is missing"):
            locate_cache(tiny_cohort, profile.cache_spec(), data, run_dir=run_dir)


def _notebook(path: Path, parameter: str = "x",
              body: str = 'assert x != 2, "this cell fails"\nprint("x is", x)') -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell(f'{parameter}: int = 0  # a number\n'
                                       'run_dir: str = "runs/x"  # the run folder')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a notebook"), params,
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_a_grid_runs_its_cells_in_process_with_a_log_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    _notebook(home / "notebooks" / "00_only.ipynb")
    monkeypatch.setenv("ECGCMR_HOME", str(home))      # the pool's processes inherit it
    grid = tmp_path / "grid"
    with pytest.raises(ValueError, match="no_such_parameter"):   # refused before any cell
        run_grid(grid, {"x": [1, 2], "no_such_parameter": 1})
    assert not grid.exists()
    assert run_grid(grid, {"x": [1, 2, 3]}, jobs=2) == {"x-1": "done", "x-2": "failed",
                                                        "x-3": "done"}
    assert "00_only.ipynb: done" in (grid / "x-1.log").read_text()
    assert "00_only.ipynb: failed" in (grid / "x-2.log").read_text()
    executed = nbformat.read(grid / "x-2" / "00_only.ipynb", as_version=4)
    assert any(o.get("ename") == "AssertionError" for c in executed.cells
               for o in c.get("outputs", []))                      # the error is kept
    assert json.loads((grid / "grid.json").read_text())["cells"]["x-3"] == "done"
    # finished cells are skipped; the failed one runs again
    assert run_grid(grid, {"x": [1, 2, 3]}, jobs=2) == {"x-1": "skipped", "x-2": "failed",
                                                        "x-3": "skipped"}
    # cells named by every key set, not only the varying ones: a later call with another
    # single value makes cells of its own beside the earlier ones
    assert run_grid(grid, {"x": 4}, name_keys=["x"]) == {"x-4": "done"}


def test_a_grid_prepares_the_data_once_when_no_cell_differs_in_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebooks 00-01 run once, in grid/shared/, when no grid parameter is theirs; each
    cell gets the cache record 01 wrote there and runs the rest. A grid over one of their
    parameters runs them in every cell."""
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    record = ("from pathlib import Path\nimport os\n"
              "Path(run_dir, 'cache.json').write_text(f'cache of n={n}, pid {os.getpid()}')")
    _notebook(home / "notebooks" / "00_cohort.ipynb", "n", "print(n)")
    _notebook(home / "notebooks" / "01_cache.ipynb", "n", record)
    _notebook(home / "notebooks" / "02_cell.ipynb", "x",
              "from pathlib import Path\nprint(Path(run_dir, 'cache.json').read_text())")
    monkeypatch.setenv("ECGCMR_HOME", str(home))
    grid = tmp_path / "grid"
    assert run_grid(grid, {"x": [1, 2], "n": 3}, jobs=2) == {"x-1": "done", "x-2": "done"}
    shared = list((grid / "shared").iterdir())
    assert len(shared) == 1 and (shared[0] / "01_cache.ipynb").is_file()
    written = (shared[0] / "cache.json").read_text()
    for cell in ("x-1", "x-2"):
        assert sorted(p.name for p in (grid / cell).glob("*.ipynb")) == ["02_cell.ipynb"]
        assert (grid / cell / "cache.json").read_text() == written == \
            f"cache of n=3, pid {written.split('pid ')[1]}"
    assert "shared/" in (grid / "index.html").read_text()
    # other data settings into the same grid: a shared run of their own
    assert run_grid(grid, {"x": 3, "n": 4}, name_keys=["x"]) == {"x-3": "done"}
    assert len(list((grid / "shared").iterdir())) == 2
    assert (grid / "x-3" / "cache.json").read_text().startswith("cache of n=4")
    # a grid over a data parameter: every cell prepares its own
    other = tmp_path / "other"
    assert run_grid(other, {"x": 1, "n": [5, 6]}, jobs=2) == {"n-5": "done", "n-6": "done"}
    assert not (other / "shared").exists()
    assert (other / "n-6" / "cache.json").read_text().startswith("cache of n=6")


def test_a_grid_over_methods_evaluates_the_classical_baseline_once_per_seed() -> None:
    cells = expand_grid({"method": ["ed", "dual", "random"], "seed": [0, 1], "profile": "tiny"})
    once = classical_baseline_once(cells, ["method", "seed"])
    assert [(c["method"], c["seed"]) for c in once if c["classical_baseline"]] == [("ed", 0),
                                                                                  ("ed", 1)]
    assert [{k: v for k, v in c.items() if k != "classical_baseline"} for c in once] == cells
    # turned off by the caller: off everywhere; no grid over methods: every cell as it was
    off = [{**c, "classical_baseline": False} for c in cells]
    assert not any(c["classical_baseline"] for c in classical_baseline_once(off, ["method"]))
    seeds = expand_grid({"method": "dual", "seed": [0, 1]})
    assert classical_baseline_once(seeds, ["seed"]) == seeds


def test_the_grid_summary_counts_seeds_not_balanced_resamplings(tmp_path: Path) -> None:
    import pandas as pd

    from ecgcmr.runs import summarise_grid

    for seed in (0, 1):
        tables = tmp_path / f"seed-{seed}" / "tables"
        tables.mkdir(parents=True)
        pd.DataFrame({"method": "dual", "seed": seed, "condition": "cad", "model": "mlp",
                      "sampling_seed": [0, 1, 2], "metric": "auroc_balanced",
                      "value": [0.6 + seed / 10, 0.7 + seed / 10, 0.8 + seed / 10]}
                     ).to_csv(tables / "04_classification_metrics.csv", index=False)
    row = summarise_grid(tmp_path).iloc[0]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(0.75)
    assert row["sd"] == pytest.approx(0.1 / 2 ** 0.5)      # the two seeds' means 0.7 and 0.8
