"""Cross-run tables: collecting tidy tables, mean ± sd over seeds, relative improvement."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecgcmr.errors import DataError
from ecgcmr.evaluate.report import collect, mean_sd, run_folders
from ecgcmr.evaluate.study import relative_to


def _grid(tmp_path: Path) -> Path:
    for method, base in (("dual", 0.5), ("ecg_only", 0.4)):
        for seed in (0, 1):
            tables = tmp_path / f"method-{method}_seed-{seed}" / "tables"
            tables.mkdir(parents=True)
            pd.DataFrame({"method": method, "seed": seed, "model": "probe",
                          "target": ["lvedv_ml", "lvef_pct"], "metric": "r2",
                          "value": [base + 0.02 * seed, base / 2]}).to_csv(
                tables / "03_phenotype_metrics.csv", index=False)
    return tmp_path


def test_collect_concatenates_every_run(tmp_path: Path) -> None:
    grid = _grid(tmp_path)
    assert len(run_folders(grid)) == 4
    tidy = collect(grid, "03_phenotype_metrics")
    assert len(tidy) == 8 and tidy["run"].nunique() == 4
    with pytest.raises(DataError, match="04_outcomes"):
        collect(grid, "04_outcomes")


def test_mean_sd_over_seeds(tmp_path: Path) -> None:
    table = mean_sd(collect(_grid(tmp_path), "03_phenotype_metrics"), ["target"], ["method"])
    assert table.loc["lvedv_ml", "dual"] == "0.510 ± 0.014 (2)"
    assert table.loc["lvef_pct", "ecg_only"] == "0.200 ± 0.000 (2)"


def test_relative_improvement_is_the_papers_percentage(tmp_path: Path) -> None:
    out = relative_to(collect(_grid(tmp_path), "03_phenotype_metrics"), "dual").set_index("target")
    assert out.loc["lvedv_ml", "relative_improvement_pct"] == pytest.approx(
        100 * (0.51 - 0.41) / 0.41)
    assert out.loc["lvef_pct", "versus"] == "ecg_only"


def test_example_subjects_span_the_lvef_range_of_the_test_split(tiny_cohort: Path) -> None:
    import numpy as np

    from ecgcmr.data.manifest import read_manifest
    from ecgcmr.evaluate.report import example_subjects
    from ecgcmr.plots import plot_ecg_cmr_pairs

    manifest = read_manifest(tiny_cohort)
    test = manifest[manifest["split"] == "test"]
    examples = example_subjects(tiny_cohort, n=3)
    ids = [e["subject_id"] for e in examples]
    assert ids[0] == test.loc[test["lvef_pct"].idxmin(), "subject_id"]
    assert ids[-1] == test.loc[test["lvef_pct"].idxmax(), "subject_id"]
    first = examples[0]
    assert first["ecg"].shape == (12, 5000)
    assert first["ed"].shape == first["es"].shape == first["ed_labels"].shape
    # ES has less LV blood pool than ED (the pair is what the figure is meant to show)
    assert (first["es_labels"] == 1).sum() < (first["ed_labels"] == 1).sum()
    assert "LVEF" in first["caption"]
    fig = plot_ecg_cmr_pairs(examples)
    assert len(fig.axes) == 3 * len(examples)
    with pytest.raises(DataError, match="unknown lead"):
        plot_ecg_cmr_pairs(examples, leads=("X",))
    assert np.isfinite(first["ecg"]).all()


def test_a_baseline_every_run_recomputes_counts_once_per_seed(tmp_path: Path) -> None:
    from ecgcmr.evaluate.report import once_per_seed

    rows = []
    for method in ("dual", "ed"):
        for seed in (0, 1):
            rows += [{"method": method, "seed": seed, "metric": "r2", "value": 0.1 * seed + 0.3,
                      "run": f"{method}-{seed}"},
                     {"method": "classical", "seed": seed, "metric": "r2", "value": 0.5 + seed,
                      "run": f"{method}-{seed}"}]
    # another setting (not a column) gives other values: those rows are all kept
    rows.append({"method": "classical", "seed": 0, "metric": "r2", "value": 0.9, "run": "x"})
    tidy = once_per_seed(pd.DataFrame(rows))
    counts = tidy.groupby("method").size()
    assert counts["classical"] == 3 and counts["dual"] == 2 and counts["ed"] == 2
    table = mean_sd(tidy[tidy["method"] == "classical"], ["metric"], ["method"])
    assert "(3)" in table.iloc[0, 0]


def test_mean_sd_of_a_metric_no_run_could_measure_says_so() -> None:
    tidy = pd.DataFrame({"method": ["dual", "dual"], "condition": ["mi", "mi"],
                         "value": [float("nan"), float("nan")]})
    assert mean_sd(tidy, ["condition"], ["method"]).loc["mi", "dual"] == "— (0)"


def test_single_runs_print_their_value_and_say_n_1_once() -> None:
    from ecgcmr.evaluate.report import ONE_RUN_NOTE

    one = pd.DataFrame({"method": ["dual", "ed"], "target": ["lvef_pct", "lvef_pct"],
                        "value": [0.25, 0.2]})
    table = mean_sd(one, ["target"], ["method"])
    assert table.loc["lvef_pct", "dual"] == "0.250" and table.attrs["note"] == ONE_RUN_NOTE
    assert "±" not in table.to_string()
    # several runs in one cell, one in another: no fake spread for the single run
    mixed = pd.concat([one, one.iloc[[0]].assign(value=0.27)], ignore_index=True)
    table = mean_sd(mixed, ["target"], ["method"])
    assert table.loc["lvef_pct", "ed"] == "0.200 (1)" and "note" not in table.attrs
    assert table.loc["lvef_pct", "dual"] == "0.260 ± 0.014 (2)"


def test_combinations_no_run_made_are_left_out_or_named() -> None:
    tidy = pd.DataFrame({"method": ["dual", "dual", "ed", "ed"],
                         "target": ["lvef_pct", "lvef_pct", "lvef_pct", "lvedv_ml"],
                         "value": [0.25, 0.27, 0.2, 0.5]})
    table = mean_sd(tidy, ["target"], ["method"])
    assert table.loc["lvedv_ml", "dual"] == "not run"       # a target ed has, dual has not
    assert set(table.columns) == {"dual", "ed"} and not table.isna().any().any()
