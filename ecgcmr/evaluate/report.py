"""Tables across run folders, for notebook 05: nothing is retrained, everything is read.

A *results folder* is either one run folder or a grid folder holding one run folder per cell
(``ecgcmr reproduce --set seed=0,1,2 --set method=dual,ed,...``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ecgcmr.errors import DataError


def run_folders(results: str | Path) -> list[Path]:
    """The run folders under ``results`` (itself, if it is a run folder)."""
    root = Path(results)
    if (root / "tables").is_dir():
        return [root]
    runs = sorted(p for p in root.iterdir() if (p / "tables").is_dir()) if root.is_dir() else []
    if not runs:
        raise DataError("no run folders found (a run folder has a tables/ folder)", path=root)
    return runs


def collect(results: str | Path, table: str) -> pd.DataFrame:
    """One tidy table (e.g. ``03_phenotype_metrics``) from every run, concatenated, with a
    ``run`` column. Runs that lack it are skipped; none having it is an error."""
    frames = [pd.read_csv(run / "tables" / f"{table}.csv").assign(run=run.name)
              for run in run_folders(results) if (run / "tables" / f"{table}.csv").is_file()]
    if not frames:
        raise DataError(f"no run has tables/{table}.csv yet; run the notebook that writes it",
                        path=results)
    return pd.concat(frames, ignore_index=True)


def mean_sd(tidy: pd.DataFrame, rows: list[str], columns: list[str],
            digits: int = 3) -> pd.DataFrame:
    """A "mean ± sd (n)" table over seeds: one cell per (rows × columns) combination."""
    stats = tidy.groupby(rows + columns, dropna=False)["value"].agg(["mean", "std", "count"])
    text = stats.apply(lambda r: f"{r['mean']:.{digits}f} ± {0 if pd.isna(r['std']) else r['std']:.{digits}f}"
                       f" ({int(r['count'])})", axis=1)
    return text.unstack(columns) if columns else text.to_frame("mean ± sd (n)")


def has_table(results: str | Path, table: str) -> bool:
    """Whether any run under ``results`` has written ``tables/<table>.csv``."""
    return any((run / "tables" / f"{table}.csv").is_file() for run in run_folders(results))
