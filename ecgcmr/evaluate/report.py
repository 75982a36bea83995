"""Tables across run folders, for notebook 05: nothing is retrained, everything is read.

A *results folder* is either one run folder or a grid folder holding one run folder per cell
(``ecgcmr reproduce --set seed=0,1,2 --set method=dual,ed,...``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ecgcmr.errors import DataError

#: A grid's own run folder, where notebook 05 gathers every cell (not a cell itself).
OVERVIEW_RUN = "overview"
#: A grid's folder of the runs every cell shares (its data preparation), not cells either.
SHARED_RUNS = "shared"


def run_folders(results: str | Path) -> list[Path]:
    """The run folders under ``results`` (a grid folder's cells), or ``results`` itself if it
    is a single run folder."""
    root = Path(results)
    runs = sorted(p for p in root.iterdir() if (p / "tables").is_dir()
                  and p.name != OVERVIEW_RUN) if root.is_dir() else []
    if not runs and (root / "tables").is_dir():
        return [root]
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
    return once_per_seed(pd.concat(frames, ignore_index=True))


#: Columns of a tidy table that hold a measurement rather than say what was measured.
VALUE_COLUMNS: tuple[str, ...] = ("value", "ci_low", "ci_high", "n", "n_cases", "n_controls",
                                  "n_events", "note", "run")


def once_per_seed(tidy: pd.DataFrame) -> pd.DataFrame:
    """A tidy metric table with each measurement once: a baseline that every run of a grid
    recomputes identically (the classical ECG measurements: same cache, same seed) would
    otherwise count once per method and shrink its sd. Only rows equal in every column but
    ``run`` are merged, so runs that differ in a setting the table does not name (e.g. a grid
    over ``notch_hz``) keep all their rows. Tables without ``metric``/``value`` are returned
    as they are."""
    if not {"metric", "value"} <= set(tidy.columns):
        return tidy
    return tidy.drop_duplicates(subset=[c for c in tidy.columns if c != "run"]
                                ).reset_index(drop=True)


#: What a table of single runs says once, instead of "± 0.000 (1)" in every cell.
ONE_RUN_NOTE = "n = 1: one run per cell, so no spread between seeds"


def mean_over_resamplings(tidy: pd.DataFrame) -> pd.DataFrame:
    """A tidy table with its ``value`` averaged over ``sampling_seed`` (notebook 04's balanced
    resamplings of one run), one row per everything else it names: the repeats are one
    estimate, so they must not count as seeds. Tables without ``sampling_seed`` are returned
    as they are."""
    if "sampling_seed" not in tidy.columns:
        return tidy
    keys = [c for c in tidy.columns if c not in ("sampling_seed", *VALUE_COLUMNS)]
    return tidy.groupby(keys, as_index=False, dropna=False)["value"].mean()


def balanced_mean(classification: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's ``auroc_balanced`` rows, one per run (:func:`mean_over_resamplings`)."""
    return mean_over_resamplings(classification[classification["metric"] == "auroc_balanced"])


def mean_sd(tidy: pd.DataFrame, rows: list[str], columns: list[str],
            digits: int = 3) -> pd.DataFrame:
    """A table over seeds, one cell per (rows × columns) combination some run made.

    A cell is ``"mean ± sd (n)"`` over n ≥ 2 runs, the value alone when every cell holds one
    run (the table's ``attrs["note"]`` is then :data:`ONE_RUN_NOTE`, to be said once), ``"mean
    (1)"`` for a single run among cells of several, ``"— (0)"`` when the runs could not measure
    it (e.g. too few cases of a condition) and ``"not run"`` where a combination exists for
    other rows but no run made it. Rows and columns no run made are left out.
    """
    stats = tidy.groupby(rows + columns, dropna=False)["value"].agg(["mean", "std", "count"])
    single = bool((stats["count"] <= 1).all() and (stats["count"] == 1).any())
    text = stats.apply(_mean_sd_text, axis=1, digits=digits, single=single)
    table = text.unstack(columns) if columns else text.to_frame(
        "value" if single else "mean ± sd (n)")
    table = table.dropna(how="all").dropna(axis=1, how="all").fillna("not run")
    if single:
        table.attrs["note"] = ONE_RUN_NOTE
    return table


def _mean_sd_text(r: pd.Series, digits: int, single: bool) -> str:
    if r["count"] == 0:     # no run could measure it (e.g. too few cases of a condition)
        return "— (0)"
    if single:
        return f"{r['mean']:.{digits}f}"
    if r["count"] == 1:
        return f"{r['mean']:.{digits}f} (1)"
    return f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f} ({int(r['count'])})"


def has_table(results: str | Path, table: str) -> bool:
    """Whether any run under ``results`` has written ``tables/<table>.csv``."""
    return any((run / "tables" / f"{table}.csv").is_file() for run in run_folders(results))


def example_subjects(manifest_path: str | Path, *, n: int = 3, split: str = "test",
                     by: str = "lvef_pct") -> list[dict[str, object]]:
    """A few subjects of ``split`` for a figure of ECG + ED/ES CMR pairs, read from their
    files: the lowest, the median and the highest ``by`` (spread evenly for other ``n``).

    Each dict has ``subject_id``, ``ecg`` (12, 5000) mV, ``ed``/``es`` canonical volumes,
    ``ed_labels``/``es_labels`` when the manifest has label maps, and a ``caption`` with the
    LV phenotypes the manifest records.
    """
    import numpy as np

    from ecgcmr.data.cmr import load_cmr_canonical, load_labels_canonical
    from ecgcmr.data.ecg import load_ecg
    from ecgcmr.data.manifest import read_manifest

    df = read_manifest(manifest_path)
    pool = df[df["split"] == split]
    if by in pool.columns and pool[by].notna().any():
        pool = pool[pool[by].notna()].sort_values(by)
    if pool.empty:
        raise DataError(f"no {split} subject in the manifest", path=manifest_path)
    picks = pool.iloc[np.unique(np.rint(np.linspace(0, len(pool) - 1, n)).astype(int))]
    out = []
    for _, row in picks.iterrows():
        sid = str(row["subject_id"])
        example: dict[str, object] = {
            "subject_id": sid,
            "ecg": load_ecg(row["ecg_path"], subject=sid),
            "ed": load_cmr_canonical(row["cmr_ed_path"], subject=sid).array,
            "es": load_cmr_canonical(row["cmr_es_path"], subject=sid).array,
        }
        for phase in ("ed", "es"):
            seg = row.get(f"cmr_{phase}_seg_path")
            if isinstance(seg, str) and seg:
                example[f"{phase}_labels"] = load_labels_canonical(seg, subject=sid).array
        parts = [f"{label} {row[col]:.0f}{unit}" for col, label, unit in (
            ("lvedv_ml", "LVEDV", " mL"), ("lvesv_ml", "LVESV", " mL"), ("lvef_pct", "LVEF", " %"))
            if col in row and pd.notna(row[col])]
        example["caption"] = ", ".join(parts)
        out.append(example)
    return out


def showcase_figures(results: str | Path, *, method: str = "dual",
                     patterns: tuple[str, ...] = ("02_embedding_map_*.png",
                                                  "03_scatter_bland_altman_*.png",
                                                  "04_kaplan_meier*.png")) -> list[Path]:
    """The per-run figures (embedding map, predicted-vs-measured, Kaplan–Meier) of one run of
    ``method`` under ``results``: the first such run by name (e.g. the lowest seed of a
    grid), or the only run. A run's method is the ``method`` of its ``params.yaml`` (the
    notebooks' default, ``dual``, when it was not set)."""
    runs = run_folders(results)
    chosen = next((r for r in runs if _method_of(r) == method),
                  runs[0] if len(runs) == 1 else None)
    if chosen is None:
        return []
    return [p for pattern in patterns for p in sorted((chosen / "figures").glob(pattern))]


def _method_of(run: Path) -> str:
    import yaml

    params_file = run / "params.yaml"
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    return str((params or {}).get("method", "dual"))


#: The tables of a run that summaries are made from (what :func:`export_tables` keeps).
SUMMARY_TABLES: tuple[str, ...] = ("02_alignment_epochs", "02_retrieval", "03_phenotype_metrics",
                                   "03_predictions", "03_ceilings", "04_classification_metrics",
                                   "04_predictions", "04_survival_metrics")


def export_tables(results: str | Path, out: str | Path,
                  tables: Sequence[str] = SUMMARY_TABLES, *, model: str = "probe",
                  digits: int = 5) -> Path:
    """Copy what summaries need from every run under ``results`` into ``out/<run>/``: its
    ``params.yaml``, ``provenance.json`` and ``tables/<table>.csv`` for each of ``tables`` it
    has. ``03_predictions`` keeps only ``model``'s rows, rounded to ``digits`` significant
    digits (per-subject predictions of every head would be megabytes per run). Small enough to
    commit, so a result can be re-analysed (notebook 05 with ``results=out``) without the
    training runs; returns ``out``."""
    out = Path(out)
    for run in run_folders(results):
        target = out / run.name
        (target / "tables").mkdir(parents=True, exist_ok=True)
        for name in ("params.yaml", "provenance.json"):
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        for table in tables:
            source = run / "tables" / f"{table}.csv"
            if not source.is_file():
                continue
            frame = pd.read_csv(source)
            if table == "03_predictions":
                frame = frame[frame["model"] == model]
            frame.to_csv(target / "tables" / f"{table}.csv", index=False,
                         float_format=f"%.{digits}g")
    return out
