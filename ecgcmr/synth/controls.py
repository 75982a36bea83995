"""The dual-phase controls: the paper's comparison repeated in worlds where the answer is known.

The paper's claim is that aligning the ECG with CMR at both ED and ES extracts more of the
functional phenotypes (LVEF, LVESV) than aligning with ED alone. That can only happen if the
ECG carries systolic information beyond what ED anatomy implies. The synthetic generator's
*systolic coupling* (:data:`ecgcmr.constants.DEFAULT_SYSTOLIC_COUPLING`) sets how much:

* at 0 (the **negative control**) the ECG is independent of LVEF given ED anatomy and the
  other state variables, so a correct pipeline finds no dual-phase gain on LVEF or LVESV
  (a paired interval that covers 0);
* at a strong setting (the **positive control**) there is systolic information for ES
  alignment to find, and the ceilings (:mod:`ecgcmr.synth.ceilings`) say how much.

One command runs them (the README's "Controls"): a grid over ``systolic_coupling`` × method ×
seed, e.g. ``ecgcmr reproduce --set systolic_coupling=0.0,3.0 --set method=ed,dual,es
--set seed=0,1,2``; notebook 05 then calls :func:`control_differences` and
:func:`plot_control` on the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from ecgcmr.errors import DataError
from ecgcmr.evaluate.paired import paired_differences
from ecgcmr.evaluate.report import collect, run_folders

#: The targets the claim is about (functional: LVEF, LVESV) and one it is not (LVEDV).
CONTROL_TARGETS: tuple[str, ...] = ("lvef_pct", "lvesv_ml", "lvedv_ml")
COUPLING = "systolic_coupling"


def run_parameters(results: str | Path, keys: Sequence[str] = (COUPLING, "method", "seed")
                   ) -> pd.DataFrame:
    """One row per run folder under ``results``: ``run`` and the notebook parameters ``keys``
    as the run recorded them in ``params.yaml`` (a parameter the run never set is NaN)."""
    rows = []
    for run in run_folders(results):
        file = run / "params.yaml"
        params = yaml.safe_load(file.read_text()) if file.is_file() else {}
        rows.append({"run": run.name, **{k: params.get(k, np.nan) for k in keys}})
    return pd.DataFrame(rows, columns=["run", *keys])


def control_differences(results: str | Path, *, reference: str = "dual",
                        versus: Sequence[str] = ("ed", "es"),
                        targets: Sequence[str] = CONTROL_TARGETS, model: str = "probe",
                        n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``reference`` minus each of ``versus`` (R², paired by test subject, across seeds) in
    every world of the grid: :func:`ecgcmr.evaluate.paired.paired_differences` run once per
    ``systolic_coupling`` value, its across-seed rows kept, with a ``systolic_coupling``
    column. Runs that did not record a coupling are the default world (1.0)."""
    predictions = collect(results, "03_predictions")
    worlds = run_parameters(results)[["run", COUPLING]].fillna({COUPLING: 1.0})
    predictions = predictions.merge(worlds, on="run", how="left")
    keep = predictions["target"].isin(targets) & (predictions["model"] == model) & \
        predictions["method"].isin([reference, *versus])
    parts = []
    for coupling, world in predictions[keep].groupby(COUPLING):
        paired = paired_differences(world.drop(columns=[COUPLING]), reference=reference,
                                    metric="r2", n_boot=n_boot, seed=seed)
        across = paired[paired["seed"].isna()]
        if len(across):
            parts.append(across.assign(**{COUPLING: float(coupling)}))
    if not parts:
        raise DataError(f"no {model} predictions of {reference} and {list(versus)} for "
                        f"{list(targets)}: run the control grid through notebook 03",
                        path=results)
    out = pd.concat(parts, ignore_index=True)
    return out[[COUPLING, *[c for c in out.columns if c != COUPLING]]]


def plot_control(differences: pd.DataFrame, ceilings: pd.DataFrame | None = None) -> Figure:
    """One panel per target: the learned ``reference − other`` R² difference with its 95 %
    paired interval at each coupling (filled markers), and, where ``ceilings`` is given (rows
    ``systolic_coupling`` × ``target`` with ``readout_ed``, ``readout_es``, ``readout_dual``),
    the idealised readouts' difference beside it (open markers): what alignment with both
    phases could add at best in that world."""
    present = list(dict.fromkeys(differences["target"]))
    targets = [t for t in CONTROL_TARGETS if t in present] + \
        [t for t in present if t not in CONTROL_TARGETS]
    couplings = sorted(differences[COUPLING].unique())
    others = list(dict.fromkeys(differences["versus"]))
    fig = Figure(figsize=(4.0 * len(targets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    width = 0.8 / max(1, len(others))
    for ax, target in zip(axes, targets, strict=True):
        for k, other in enumerate(others):
            rows = differences[(differences["target"] == target)
                               & (differences["versus"] == other)].set_index(COUPLING)
            x = np.arange(len(couplings)) + (k - (len(others) - 1) / 2) * width
            found = [c in rows.index for c in couplings]
            sub = rows.reindex(couplings)
            ax.errorbar(x[found], sub["diff"][found],
                        yerr=[(sub["diff"] - sub["ci_low"])[found],
                              (sub["ci_high"] - sub["diff"])[found]],
                        fmt="o", capsize=3, color=f"C{k}", label=f"learned: dual − {other}")
            if ceilings is not None:
                ideal = _readout_gain(ceilings, target, other).reindex(couplings)
                ax.plot(x + width / 3, ideal.to_numpy(), "D", mfc="none", color=f"C{k}",
                        label=f"ceiling: readout dual − {other}")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xticks(np.arange(len(couplings)), [f"{c:g}" for c in couplings])
        ax.set_xlabel("systolic coupling (0: negative control)")
        ax.set_title(target)
    axes[0].set_ylabel("R² difference (test split)")
    axes[-1].legend(fontsize=7, loc="best")
    return fig


def _readout_gain(ceilings: pd.DataFrame, target: str, other: str) -> pd.Series:
    rows = ceilings[ceilings["target"] == target].set_index(COUPLING)
    return rows["readout_dual"] - rows[f"readout_{other}"]
