"""The control analysis pairs runs within each world of a grid, never across worlds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ecgcmr.errors import DataError
from ecgcmr.synth.controls import control_differences, plot_control, run_parameters

N = 60


def write_run(grid: Path, coupling: float, method: str, seed: int, noise: float) -> None:
    run = grid / f"systolic_coupling-{coupling}_method-{method}_seed-{seed}"
    (run / "tables").mkdir(parents=True)
    (run / "params.yaml").write_text(yaml.safe_dump(
        {"systolic_coupling": coupling, "method": method, "seed": seed}))
    rng = np.random.default_rng([int(coupling * 10), seed, len(method)])
    y = np.linspace(20, 70, N)                        # the same test subjects in every run
    rows = [{"method": method, "seed": seed, "model": "probe", "target": t,
             "subject_id": f"S{i:03d}", "split": "test", "y_true": y[i],
             "y_pred": y[i] + noise * rng.standard_normal()}
            for t in ("lvef_pct", "lvedv_ml") for i in range(N)]
    pd.DataFrame(rows).to_csv(run / "tables" / "03_predictions.csv", index=False)


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    # world 0: dual and ed equally good; world 3: dual clearly better
    for seed in (0, 1):
        write_run(tmp_path, 0.0, "dual", seed, noise=8.0)
        write_run(tmp_path, 0.0, "ed", seed, noise=8.0)
        write_run(tmp_path, 3.0, "dual", seed, noise=3.0)
        write_run(tmp_path, 3.0, "ed", seed, noise=12.0)
    return tmp_path


def test_differences_are_computed_within_each_world(grid: Path) -> None:
    table = control_differences(grid, versus=("ed",), targets=("lvef_pct",), n_boot=300)
    assert list(table["systolic_coupling"]) == [0.0, 3.0]
    assert (table["n_seeds"] == 2).all() and (table["n_subjects"] == N).all()
    null, strong = table.iloc[0], table.iloc[1]
    assert strong["ci_low"] > 0.05                      # a real gain is found
    assert abs(null["diff"]) < strong["diff"]
    assert null["ci_low"] <= null["diff"] <= null["ci_high"]


def test_run_parameters_and_a_grid_without_predictions(grid: Path, tmp_path: Path) -> None:
    params = run_parameters(grid)
    assert len(params) == 8 and set(params["systolic_coupling"]) == {0.0, 3.0}
    with pytest.raises(DataError, match="no probe predictions"):
        control_differences(grid, versus=("es",))


def test_the_figure_draws_learned_differences_and_ceilings(grid: Path) -> None:
    table = control_differences(grid, versus=("ed",), n_boot=100)
    ceilings = pd.DataFrame({"systolic_coupling": [0.0, 3.0, 0.0, 3.0],
                             "target": ["lvef_pct", "lvef_pct", "lvedv_ml", "lvedv_ml"],
                             "readout_ed": [0.2, 0.2, 0.6, 0.6], "readout_es": 0.3,
                             "readout_dual": [0.2, 0.5, 0.6, 0.6]})
    fig = plot_control(table, ceilings)
    assert len(fig.axes) == 2
    assert {ax.get_title() for ax in fig.axes} == {"lvef_pct", "lvedv_ml"}


def test_exported_tables_give_the_same_control_analysis(grid: Path, tmp_path_factory
                                                        ) -> None:  # noqa: ANN001
    from ecgcmr.evaluate.report import export_tables

    out = export_tables(grid, tmp_path_factory.mktemp("exported"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in grid.iterdir())
    a = control_differences(grid, versus=("ed",), n_boot=200)
    b = control_differences(out, versus=("ed",), n_boot=200)
    pd.testing.assert_frame_equal(a, b, rtol=1e-3, atol=1e-3)
