"""Paired comparisons of pretraining methods on the same test subjects, and how many seeds
and test subjects a difference of a given size needs.

The paper's claim is comparative ("dual-phase alignment improves R² by 9.2 %"). Two methods
scored on the same test split share every subject, so their difference is measured far more
precisely than two separate confidence intervals suggest: each bootstrap resample here draws
one set of test subjects and scores **both** methods on it (a paired bootstrap).

Input is a tidy per-subject table (``method, seed, model, target, subject_id, y_true,
y_pred``): notebook 03's ``tables/03_predictions.csv`` (phenotypes, compared by R²) and
notebook 04's ``tables/04_predictions.csv`` (outcomes: the natural-prevalence score of each
"ever" condition, compared by AUROC), usually gathered over the runs of a grid by
:func:`ecgcmr.evaluate.report.collect` (which adds ``run``). The outcome comparison uses the
natural-prevalence test split, not the paper's 1:1 balanced draws: AUROC does not change in
expectation when controls are subsampled at random, and the full split keeps every test
subject, so both methods are scored on one fixed set of people.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

from ecgcmr.errors import DataError
from ecgcmr.evaluate.outcomes import auroc
from ecgcmr.evaluate.phenotypes import (
    bootstrap_indices,
    pearson_r,
    percentile_ci,
    r2_score,
    relative_improvement,
)

#: Metrics a paired difference is computed for (higher is better; work along the last axis).
PAIRED_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray | float]] = {
    "r2": r2_score, "pearson_r": pearson_r, "auroc": auroc,
}
#: Columns :func:`paired_differences` needs in its input.
INPUT_COLUMNS: tuple[str, ...] = ("method", "seed", "model", "target", "subject_id",
                                  "y_true", "y_pred")
#: Columns of :func:`paired_differences`' result.
PAIRED_COLUMNS: tuple[str, ...] = (
    "model", "target", "reference", "versus", "seed", "n_seeds", "n_subjects", "metric",
    "value_reference", "value_versus", "diff", "relative_improvement_pct", "ci_low", "ci_high",
    "sd_boot", "sd_boot_mean", "sd_seed")
#: Columns of :func:`power_table`' result.
POWER_COLUMNS: tuple[str, ...] = (
    "model", "target", "versus", "n_seeds", "n_subjects", "sd_seed", "sd_boot", "sd_boot_mean",
    "delta", "detectable_delta", "seeds_needed", "subjects_needed", "note")


# ============================================================================================
# Paired differences
# ============================================================================================
def paired_differences(predictions: pd.DataFrame, *, reference: str = "dual",
                       metric: str = "r2", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``metric`` of ``reference`` minus that of every other method, paired by test subject.

    For each model × target × other method (every method present besides ``reference``):

    - **subjects**: the inner join on ``subject_id`` of both methods over every seed both
      have, keeping subjects whose ``y_true``/``y_pred`` are finite in all of them
      (``n_subjects``); both methods must have the same ``y_true`` per subject.
    - **one row per common seed** (``seed``, ``n_seeds = 1``): ``value_reference`` and
      ``value_versus`` (the metric of each method on those subjects), ``diff`` = reference −
      other, ``relative_improvement_pct`` = 100·diff/|other| (NaN where other is 0), and a
      95 % percentile CI of ``diff`` from ``n_boot`` paired resamples: resample ``b`` takes
      the subjects ``bootstrap_indices(n_subjects, n_boot, seed)[b]`` and scores **both**
      methods on them (the same rows for every seed, too). ``sd_boot``: sd of the resampled
      differences (``sd_boot_mean`` the same); ``sd_seed`` NaN.
    - **one row across seeds** (``seed`` = <NA>, ``n_seeds`` = S): the seed means of the
      values and of ``diff``, the relative improvement of the seed-mean values (as
      :func:`ecgcmr.evaluate.study.relative_to`), ``sd_seed`` = sd of the S per-seed
      differences (NaN for one seed), ``sd_boot`` = root of the mean per-seed bootstrap
      variance, ``sd_boot_mean`` = sd of the seed-mean difference over the subject resamples
      (every seed on the same resample; :func:`power_table` uses the three sds), and a CI
      from a two-level bootstrap: resample ``b`` draws S seeds with replacement
      (``numpy.random.default_rng((seed, 1))``) and averages their differences on subject
      resample ``b``; the 2.5th/97.5th percentiles of those means. With one seed this is
      exactly the per-seed bootstrap CI.

    Why the two-level bootstrap: every seed is scored on the same test split, so a t-interval
    over 2–3 seeds leaves out the test-subject uncertainty entirely (and has 1–2 degrees of
    freedom), while averaging the bootstrap differences alone leaves out how much retraining
    moves the result. Resampling seeds inside each subject resample keeps both. With few
    seeds it still understates the seed spread somewhat (a plug-in bootstrap over S values
    has variance (S−1)/S of the unbiased one): read ``sd_seed`` beside the CI.

    Rows that are exact copies except for ``run`` (the classical baseline, recomputed by every
    run of a grid) are kept once.

    Args:
        predictions: the columns of :data:`INPUT_COLUMNS` (others are ignored).
        reference: the method compared against all others.
        metric: ``"r2"``, ``"pearson_r"`` (phenotypes) or ``"auroc"`` (0/1 outcomes; a
            resample without a case or a control is left out of the percentiles).
        n_boot: bootstrap resamples.
        seed: bootstrap seed (not a training seed).

    Returns:
        Columns :data:`PAIRED_COLUMNS`; per model × target × other, the per-seed rows then
        the across-seed row. Empty when ``reference`` is absent.

    Raises:
        DataError: a column is missing; a method × seed × model × target has two different
            predictions for one subject (runs that differ in a setting other than method and
            seed, e.g. a grid over ``notch_hz``: pass one setting's runs); the two methods
            disagree on a subject's ``y_true``.
    """
    if metric not in PAIRED_METRICS:
        raise ValueError(f"metric must be one of {sorted(PAIRED_METRICS)}, got {metric!r}")
    preds = _unique_predictions(predictions)
    rows: list[dict[str, object]] = []
    for (model, target), group in preds.groupby(["model", "target"], sort=False):
        methods = list(pd.unique(group["method"]))
        if reference not in methods:
            continue
        for other in (m for m in methods if m != reference):
            paired = _paired_arrays(group, reference, other)
            if paired is None:
                continue
            labels = {"model": model, "target": target, "reference": reference,
                      "versus": other, "metric": metric}
            rows += _compare(*paired, PAIRED_METRICS[metric], n_boot, seed, labels)
    out = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
    out["seed"] = out["seed"].astype("Int64")
    return out


def _unique_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """The input columns, each prediction once; a key predicted twice differently is an error."""
    missing = [c for c in INPUT_COLUMNS if c not in predictions.columns]
    if missing:
        raise DataError("prediction table lacks columns", expected=", ".join(INPUT_COLUMNS),
                        found=", ".join(map(str, predictions.columns)))
    preds = predictions[list(INPUT_COLUMNS)].drop_duplicates()
    key = ["method", "seed", "model", "target", "subject_id"]
    clash = preds[preds.duplicated(key, keep=False)]
    if len(clash):
        first = clash.iloc[0]
        raise DataError("two different predictions for one subject, method, seed, model and "
                        "target: the runs differ in a setting other than method and seed",
                        subject=str(first["subject_id"]),
                        expected="one run per method and seed (select one setting's runs)",
                        found=f"{first['method']} seed {first['seed']} {first['model']} "
                              f"{first['target']}")
    return preds


def _paired_arrays(group: pd.DataFrame, reference: str, other: str
                   ) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """(seeds, y_true (n,), y_pred (2, S, n)) on the subjects both methods scored in every
    common seed, sorted by subject; None without a common seed or subject."""
    seeds = sorted(set(group.loc[group["method"] == reference, "seed"])
                   & set(group.loc[group["method"] == other, "seed"]))
    if not seeds:
        return None
    part = group[group["method"].isin([reference, other]) & group["seed"].isin(seeds)]
    wide = part.pivot(index="subject_id", columns=["method", "seed"],
                      values=["y_true", "y_pred"])
    wide = wide[np.isfinite(wide.to_numpy(dtype=float)).all(axis=1)]   # inner join, finite
    if wide.empty:
        return None
    columns = [(m, s) for m in (reference, other) for s in seeds]
    truth = wide["y_true"][columns].to_numpy(dtype=float)               # (n, 2S)
    if not np.allclose(truth, truth[:, :1]):
        bad = wide.index[~np.isclose(truth, truth[:, :1]).all(axis=1)][0]
        raise DataError(f"{reference} and {other} disagree on y_true", subject=str(bad),
                        expected="runs of the same cohort and test split")
    pred = wide["y_pred"][columns].to_numpy(dtype=float).T.reshape(2, len(seeds), -1)
    return seeds, truth[:, 0], pred


def _compare(seeds: list[int], y: np.ndarray, pred: np.ndarray,
             fn: Callable[[np.ndarray, np.ndarray], np.ndarray | float], n_boot: int,
             seed: int, labels: dict[str, object]) -> list[dict[str, object]]:
    """Per-seed rows and the across-seed row of one comparison (see
    :func:`paired_differences`)."""
    n, n_seeds = y.size, len(seeds)
    idx = bootstrap_indices(n, n_boot, seed)                            # (B, n), shared
    y_boot = y[idx]
    value = np.array([[fn(y, p) for p in method] for method in pred])   # (2, S)
    boot = np.array([[fn(y_boot, p[idx]) for p in method] for method in pred])  # (2, S, B)
    diff, diff_boot = value[0] - value[1], boot[0] - boot[1]            # (S,), (S, B)
    var_boot = np.nanvar(diff_boot, axis=1, ddof=1)
    rows = [{**labels, "seed": s, "n_seeds": 1, "n_subjects": n,
             "value_reference": value[0, i], "value_versus": value[1, i], "diff": diff[i],
             "relative_improvement_pct": _relative(value[0, i], value[1, i]),
             **_ci(diff_boot[i]), "sd_boot": math.sqrt(var_boot[i]),
             "sd_boot_mean": math.sqrt(var_boot[i]), "sd_seed": math.nan}
            for i, s in enumerate(seeds)]
    draw = np.random.default_rng((seed, 1)).integers(0, n_seeds, size=(n_boot, n_seeds))
    pooled = diff_boot[draw, np.arange(n_boot)[:, None]].mean(axis=1)   # (B,)
    mean = value.mean(axis=1)
    rows.append({**labels, "seed": None, "n_seeds": n_seeds, "n_subjects": n,
                 "value_reference": mean[0], "value_versus": mean[1], "diff": diff.mean(),
                 "relative_improvement_pct": _relative(mean[0], mean[1]), **_ci(pooled),
                 "sd_boot": math.sqrt(var_boot.mean()),
                 "sd_boot_mean": float(np.nanstd(diff_boot.mean(axis=0), ddof=1)),
                 "sd_seed": float(np.std(diff, ddof=1)) if n_seeds > 1 else math.nan})
    return rows


def _ci(stats: np.ndarray) -> dict[str, float]:
    low, high = percentile_ci(stats)
    return {"ci_low": low, "ci_high": high}


def _relative(a: float, b: float) -> float:
    try:
        return relative_improvement(float(a), float(b))
    except ValueError:                      # baseline 0 or NaN: no relative change
        return math.nan


def paired_overview(paired: pd.DataFrame, *, model: str = "probe",
                    digits: int = 3) -> pd.DataFrame:
    """Target × versus table of the across-seed rows of ``model``: ``"diff [ci_low, ci_high]
    (S)"`` with ``*`` where the CI excludes 0 (S: seeds). When every cell has the same number
    of seeds it is said once, in the table's ``attrs["note"]``, instead of in each cell."""
    rows = paired[paired["seed"].isna() & (paired["model"] == model)]
    if rows.empty:
        return pd.DataFrame()
    seeds = rows["n_seeds"].astype(int)
    same = seeds.nunique() == 1

    def text(r: pd.Series) -> str:
        star = "*" if r["ci_low"] > 0 or r["ci_high"] < 0 else ""
        return (f"{r['diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, "
                f"{r['ci_high']:+.{digits}f}]{star}" + ("" if same else f" ({int(r['n_seeds'])})"))

    table = rows.assign(cell=rows.apply(text, axis=1)).pivot(index="target", columns="versus",
                                                              values="cell")
    if same:
        n = int(seeds.iloc[0])
        table.attrs["note"] = f"n = {n} seed{'s' * (n > 1)} in every cell"
    return table


# ============================================================================================
# Sample size
# ============================================================================================
def power_table(paired: pd.DataFrame, deltas: Sequence[float] = (0.01, 0.03, 0.05), *,
                alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Seeds and test subjects needed to detect a difference ``delta`` (normal approximation).

    Read from each across-seed row of :func:`paired_differences`: S0 = ``n_seeds``, N0 =
    ``n_subjects``, σ²_seed = ``sd_seed``², σ²_boot = ``sd_boot``² (one seed's difference,
    test subjects resampled) and σ²_mean = ``sd_boot_mean``² (the seed-mean difference, the
    same subjects resampled for every seed). Every seed is scored on the same test split, so
    part of the test-subject noise is common to all seeds and never averages out. The
    variance of the seed-mean difference with S seeds and N test subjects is modelled as

        V(S, N) = σ²_u/S + (N0/N)·(c + (σ²_boot − c)/S)

    with c = (S0·σ²_mean − σ²_boot)/(S0 − 1) (the covariance of two seeds' bootstrap
    differences, clipped to [0, σ²_boot]) and σ²_u = max(0, σ²_seed − (σ²_boot − c)) (the
    seed spread beyond its test-subject part, which σ²_seed, measured on one test split,
    already holds). With c = 0 and σ²_u = σ²_seed this is ``σ²_seed/S + σ²_boot·(N0/N)/S``,
    the formula for a fresh test split per seed, which is optimistic here.

    A two-sided test at level ``alpha`` detects ``delta`` with probability ``power`` when
    ``(z_{1−α/2} + z_{power})·√V ≤ delta``. Columns: ``detectable_delta`` = that bound at
    (S0, N0); ``seeds_needed`` = the smallest S with N = N0 (``inf`` when the common
    test-subject term c alone is too large: more seeds cannot help, more subjects can);
    ``subjects_needed`` = the smallest N with S = S0 (``inf`` when the seed term alone is too
    large). With one seed nothing separates the terms: c = σ²_boot, σ²_u = 0, so
    ``subjects_needed`` and ``detectable_delta`` are lower bounds and ``seeds_needed`` is NaN
    (said in ``note``).

    Returns:
        Columns :data:`POWER_COLUMNS`, one row per across-seed row × ``delta``.
    """
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    rows = []
    for _, r in paired[paired["seed"].isna()].iterrows():
        s0, n0 = int(r["n_seeds"]), int(r["n_subjects"])
        v_u, c, v_boot = _components(r)
        v_now = v_u / s0 + c + (v_boot - c) / s0
        note = "one seed: seed variance unknown (lower bounds)" if s0 == 1 else ""
        for delta in deltas:
            budget = (delta / z) ** 2                       # the largest V that detects delta
            seeds = (math.nan if s0 == 1
                     else _smallest(v_u + v_boot - c, budget - c))
            subjects = _smallest(n0 * (c + (v_boot - c) / s0), budget - v_u / s0)
            rows.append({"model": r["model"], "target": r["target"], "versus": r["versus"],
                         "n_seeds": s0, "n_subjects": n0, "sd_seed": r["sd_seed"],
                         "sd_boot": r["sd_boot"], "sd_boot_mean": r["sd_boot_mean"],
                         "delta": delta, "detectable_delta": z * math.sqrt(v_now),
                         "seeds_needed": seeds, "subjects_needed": subjects, "note": note})
    return pd.DataFrame(rows, columns=list(POWER_COLUMNS))


def _components(row: pd.Series) -> tuple[float, float, float]:
    """(σ²_u, c, σ²_boot) of one across-seed row (see :func:`power_table`)."""
    s0, v_boot = int(row["n_seeds"]), float(row["sd_boot"]) ** 2
    if s0 == 1:
        return 0.0, v_boot, v_boot
    c = (s0 * float(row["sd_boot_mean"]) ** 2 - v_boot) / (s0 - 1)
    c = min(max(c, 0.0), v_boot)
    return max(0.0, float(row["sd_seed"]) ** 2 - (v_boot - c)), c, v_boot


def _smallest(numerator: float, room: float) -> float:
    """The smallest integer k ≥ 1 with numerator / k ≤ room; inf when none is."""
    if numerator <= 0:
        return 1.0 if room >= 0 else math.inf
    if room <= 0:
        return math.inf
    return float(max(1, math.ceil(numerator / room - 1e-9)))


__all__ = ["INPUT_COLUMNS", "PAIRED_COLUMNS", "PAIRED_METRICS", "POWER_COLUMNS",
           "paired_differences", "paired_overview", "power_table"]
