"""The answer to the paper's question, in a few sentences generated from a run's or a grid's
tables: which method predicts each phenotype best, whether dual-phase alignment beats each
single phase by more than resampling noise, and how much of the ECG-side ceiling each method
reaches. Notebook 05 writes it (``tables/05_answer.txt``) and a run's ``index.html`` opens
with it, so no number in it is typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ecgcmr.constants import PAPER_PHENOTYPES

LABELS = {"lvedv_ml": "LVEDV", "lvesv_ml": "LVESV", "lvsv_ml": "LVSV", "lvef_pct": "LVEF",
          "lvm_g": "LVM", "rvedv_ml": "RVEDV", "rvesv_ml": "RVESV", "rvsv_ml": "RVSV",
          "rvef_pct": "RVEF"}


def answer(phenotypes: pd.DataFrame, paired: pd.DataFrame | None = None,
           ceilings: pd.DataFrame | None = None, *, model: str = "probe",
           targets: Sequence[str] = PAPER_PHENOTYPES, reference: str = "dual") -> str:
    """A short paragraph (plain text) from notebook 03's ``phenotype_metrics`` (``method, seed,
    model, target, metric, value``), notebook 05's paired differences
    (:func:`ecgcmr.evaluate.paired.paired_differences`, its across-seed rows) and notebook 03's
    ``ceilings`` (:func:`ecgcmr.synth.ceilings.fraction_of_ceiling`), for ``model``'s R² on
    ``targets``. A part whose table is missing or empty is left out."""
    r2 = phenotypes[(phenotypes["metric"] == "r2") & (phenotypes["model"] == model)
                    & phenotypes["target"].isin(targets)]
    if r2.empty:
        return ""
    targets = [t for t in targets if t in set(r2["target"])]
    sentences = [_best(r2, targets, model)]
    if paired is not None:
        sentences += _versus(paired, targets, model, reference)
    if ceilings is not None and not ceilings.empty:
        sentences.append(_reached(ceilings, targets, model))
    return " ".join(s for s in sentences if s)


def _best(r2: pd.DataFrame, targets: list[str], model: str) -> str:
    mean = r2.groupby(["target", "method"])["value"].mean()
    seeds = r2.groupby("method")["seed"].nunique()
    parts = []
    for target in targets:
        row = mean.loc[target]
        parts.append(f"{LABELS.get(target, target)} {row.idxmax()} ({row.max():.2f})")
    n = (f"{int(seeds.min())} seed" + ("s" if seeds.min() > 1 else "")
         if seeds.min() == seeds.max() else f"{int(seeds.min())}–{int(seeds.max())} seeds")
    return (f"Best method per phenotype ({model} R² on the test split, mean over {n}): "
            + ", ".join(parts) + ".")


def _versus(paired: pd.DataFrame, targets: list[str], model: str, reference: str
            ) -> list[str]:
    rows = paired[paired["seed"].isna() & (paired["model"] == model)
                  & (paired["metric"] == "r2") & (paired["reference"] == reference)
                  & paired["target"].isin(targets)]
    out = []
    for versus in ("ed", "es"):
        part = rows[rows["versus"] == versus].set_index("target")
        if part.empty:
            continue
        cells, excludes = [], []
        for target in (t for t in targets if t in part.index):
            r = part.loc[target]
            cells.append(f"{LABELS.get(target, target)} {r['diff']:+.3f} "
                         f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
            if r["ci_low"] > 0 or r["ci_high"] < 0:
                excludes.append(f"{LABELS.get(target, target)} "
                                f"({'higher' if r['ci_low'] > 0 else 'lower'})")
        seeds = int(part["n_seeds"].max())
        verdict = (f"the interval excludes 0 for {', '.join(excludes)}" if excludes
                   else "no interval excludes 0")
        out.append(f"{reference} − {versus} (paired, 95 % CI over test subjects and {seeds} "
                   f"seed{'s' * (seeds > 1)}): {', '.join(cells)}; {verdict}.")
    return out


def _reached(ceilings: pd.DataFrame, targets: list[str], model: str) -> str:
    rows = ceilings[(ceilings["model"] == model) & ceilings["target"].isin(targets)]
    share = rows.groupby(["method", "target"])["fraction_of_ecg_estimate"].mean().unstack()
    if share.empty:
        return ""
    order = [t for t in targets if t in share.columns]
    labels = " / ".join(LABELS.get(t, t) for t in order)
    parts = [f"{method} " + " / ".join(f"{100 * share.loc[method, t]:.0f}" for t in order)
             for method in share.index]
    return (f"Share of the ECG-side ceiling reached ({labels}, %): " + "; ".join(parts) + ".")


__all__ = ["answer"]
