"""Paired method comparisons on the same test subjects, and the sample-size table."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from ecgcmr.errors import DataError
from ecgcmr.evaluate.paired import (
    PAIRED_COLUMNS,
    paired_differences,
    paired_overview,
    power_table,
)
from ecgcmr.evaluate.phenotypes import bootstrap_indices, pearson_r, r2_score


def _predictions(methods: dict[str, float], seeds=(0, 1, 2), n: int = 60, targets=("lvef_pct",),
                 model: str = "probe", seed: int = 0) -> pd.DataFrame:
    """Tidy 03_predictions rows: method q predicts q·y + noise (larger q: better)."""
    rng = np.random.default_rng(seed)
    frames = []
    for target in targets:
        y = rng.normal(50, 10, size=n)
        for method, q in methods.items():
            for s in seeds:
                pred = 50 + q * (y - 50) + rng.normal(0, 10 * (1 - q), size=n)
                frames.append(pd.DataFrame({
                    "method": method, "seed": s, "model": model, "target": target,
                    "subject_id": [f"S{i:03d}" for i in range(n)], "y_true": y, "y_pred": pred,
                    "run": f"method-{method}_seed-{s}"}))
    return pd.concat(frames, ignore_index=True)


def test_both_methods_are_scored_on_the_same_resampled_subjects() -> None:
    preds = _predictions({"dual": 0.7}, seeds=(0,), n=50)
    # ed: dual's predictions shifted by a constant: Pearson r equal on every resample
    ed = preds.assign(method="ed", y_pred=preds["y_pred"] + 5.0)
    both = pd.concat([preds, ed], ignore_index=True)
    paired = paired_differences(both, metric="pearson_r", n_boot=200)
    assert (paired["diff"].abs() < 1e-12).all()
    assert (paired["ci_low"].abs() < 1e-12).all() and (paired["ci_high"].abs() < 1e-12).all()
    # resampling the two methods independently would not be degenerate
    y, p = preds["y_true"].to_numpy(), preds["y_pred"].to_numpy()
    order = np.argsort(preds["subject_id"].to_numpy())
    y, p = y[order], p[order]
    i, j = bootstrap_indices(50, 200, 0), bootstrap_indices(50, 200, 1)
    unpaired = pearson_r(y[i], p[i]) - pearson_r(y[j], p[j] + 5.0)
    assert np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5) > 0.01
    # the offset does change R², and the paired R² difference has a real interval
    r2 = paired_differences(both, n_boot=200)
    assert (r2["diff"] > 0).all() and (r2["ci_high"] > r2["ci_low"]).all()


def test_equals_a_direct_computation_on_a_tiny_case() -> None:
    preds = _predictions({"dual": 0.8, "ed": 0.5}, seeds=(0, 1), n=9)
    shuffled = preds.sample(frac=1.0, random_state=3)          # input order does not matter
    out = paired_differences(shuffled, n_boot=40, seed=5)
    assert list(out.columns) == list(PAIRED_COLUMNS)
    assert list(out["seed"].fillna(-1)) == [0, 1, -1]
    idx = bootstrap_indices(9, 40, 5)
    diffs, boots = [], []
    for s in (0, 1):
        rows = {m: preds[(preds["method"] == m) & (preds["seed"] == s)].sort_values("subject_id")
                for m in ("dual", "ed")}
        y = rows["dual"]["y_true"].to_numpy()
        a, b = rows["dual"]["y_pred"].to_numpy(), rows["ed"]["y_pred"].to_numpy()
        value_a, value_b = float(r2_score(y, a)), float(r2_score(y, b))
        boot = np.array([float(r2_score(y[i], a[i]) - r2_score(y[i], b[i])) for i in idx])
        row = out[out["seed"] == s].iloc[0]
        assert row["value_reference"] == pytest.approx(value_a)
        assert row["diff"] == pytest.approx(value_a - value_b)
        assert row["relative_improvement_pct"] == pytest.approx(
            100 * (value_a - value_b) / abs(value_b))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            tuple(np.percentile(boot, [2.5, 97.5])))
        assert row["n_subjects"] == 9 and row["n_seeds"] == 1
        diffs.append(value_a - value_b)
        boots.append(boot)
    # across seeds: seeds drawn with replacement inside each subject resample
    draw = np.random.default_rng((5, 1)).integers(0, 2, size=(40, 2))
    pooled = np.array([np.mean([boots[k][b] for k in draw[b]]) for b in range(40)])
    combined = out[out["seed"].isna()].iloc[0]
    assert combined["n_seeds"] == 2
    assert combined["diff"] == pytest.approx(np.mean(diffs))
    assert combined["sd_seed"] == pytest.approx(np.std(diffs, ddof=1))
    assert (combined["ci_low"], combined["ci_high"]) == pytest.approx(
        tuple(np.percentile(pooled, [2.5, 97.5])))


def test_every_interval_holds_its_difference() -> None:
    preds = _predictions({"dual": 0.7, "ed": 0.6, "es": 0.5, "random": 0.1}, n=120,
                         targets=("lvedv_ml", "lvesv_ml", "lvef_pct"))
    out = paired_differences(preds, n_boot=300)
    assert len(out) == 3 * 3 * 4                         # targets × others × (3 seeds + 1)
    assert (out["ci_low"] <= out["diff"]).all() and (out["diff"] <= out["ci_high"]).all()
    versus_random = out[(out["versus"] == "random") & out["seed"].isna()]
    assert (versus_random["ci_low"] > 0).all()           # a clear difference excludes 0
    table = paired_overview(out)
    # every cell has 3 seeds: said once, not in each cell
    assert table.loc["lvef_pct", "random"].endswith("]*")
    assert table.attrs["note"] == "n = 3 seeds in every cell"
    # cells of different seed counts say theirs
    uneven = paired_overview(pd.concat([out, out[out["versus"] == "ed"].assign(
        n_seeds=2, versus="ecg_only")]))
    assert uneven.loc["lvef_pct", "random"].endswith("]* (3)")
    assert uneven.loc["lvef_pct", "ecg_only"].endswith(" (2)") and "note" not in uneven.attrs


def test_one_seed_gives_the_bootstrap_interval_not_a_fake_zero() -> None:
    preds = _predictions({"dual": 0.7, "ed": 0.6}, seeds=(4,), n=80)
    out = paired_differences(preds, n_boot=200)
    per_seed, combined = out.iloc[0], out.iloc[1]
    assert per_seed["seed"] == 4 and pd.isna(combined["seed"]) and combined["n_seeds"] == 1
    assert (combined["ci_low"], combined["ci_high"]) == (per_seed["ci_low"], per_seed["ci_high"])
    assert combined["ci_high"] - combined["ci_low"] > 0.01
    assert math.isnan(combined["sd_seed"])


def test_subjects_are_joined_and_grid_copies_kept_once() -> None:
    preds = _predictions({"dual": 0.7, "ed": 0.6, "classical": 0.4}, seeds=(0, 1), n=30)
    # ed lacks two subjects and has one missing prediction: 27 subjects in common
    ed = preds["method"] == "ed"
    preds = preds[~(ed & preds["subject_id"].isin(["S000", "S001"]))].copy()
    preds.loc[ed & (preds["subject_id"] == "S002"), "y_pred"] = np.nan
    # every run of a grid recomputes the classical baseline: same rows, other run name
    copies = preds[preds["method"] == "classical"].assign(run="method-ed_seed-x")
    out = paired_differences(pd.concat([preds, copies]), n_boot=50)
    assert set(out.loc[out["versus"] == "ed", "n_subjects"]) == {27}
    assert set(out.loc[out["versus"] == "classical", "n_subjects"]) == {30}
    assert out.loc[out["seed"].isna() & (out["versus"] == "classical"), "n_seeds"].item() == 2
    # a setting the table does not name (notch_hz) makes the pairing ambiguous
    other_setting = copies.assign(y_pred=copies["y_pred"] + 1.0)
    with pytest.raises(DataError, match="setting other than method and seed"):
        paired_differences(pd.concat([preds, other_setting]), n_boot=50)
    wrong_truth = preds.copy()
    wrong_truth.loc[wrong_truth["method"] == "ed", "y_true"] += 1.0
    with pytest.raises(DataError, match="disagree on y_true"):
        paired_differences(wrong_truth, n_boot=50)


def test_bad_arguments_and_an_absent_reference() -> None:
    preds = _predictions({"ed": 0.6, "es": 0.5}, seeds=(0,), n=20)
    assert paired_differences(preds, n_boot=20).empty
    with pytest.raises(ValueError, match="metric"):
        paired_differences(preds, metric="mae")
    with pytest.raises(DataError, match="lacks columns"):
        paired_differences(preds.drop(columns="y_true"))


def test_power_table_shrinks_with_delta_and_follows_its_formula() -> None:
    preds = _predictions({"dual": 0.7, "ed": 0.65, "es": 0.6}, n=100)
    power = power_table(paired_differences(preds, n_boot=200), deltas=(0.01, 0.03, 0.05))
    assert len(power) == 2 * 3
    for _, rows in power.groupby("versus"):
        assert rows["seeds_needed"].is_monotonic_decreasing
        assert rows["subjects_needed"].is_monotonic_decreasing
        assert rows["detectable_delta"].nunique() == 1
    # by hand: S0 = 3, N0 = 100, σ²_seed = 5e-4, σ²_boot = 4e-4, σ²_mean = 2e-4
    row = pd.DataFrame([{"model": "probe", "target": "t", "versus": "ed", "seed": pd.NA,
                         "n_seeds": 3, "n_subjects": 100, "sd_seed": math.sqrt(5e-4),
                         "sd_boot": math.sqrt(4e-4), "sd_boot_mean": math.sqrt(2e-4)}])
    got = power_table(row, deltas=(0.05,)).iloc[0]
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    c = (3 * 2e-4 - 4e-4) / 2                        # common test-subject variance: 1e-4
    v_u = 5e-4 - (4e-4 - c)                          # seed variance beyond test noise: 2e-4
    budget = (0.05 / z) ** 2
    assert got["seeds_needed"] == math.ceil((v_u + 4e-4 - c) / (budget - c))
    assert got["subjects_needed"] == math.ceil(100 * (c + (4e-4 - c) / 3) / (budget - v_u / 3))
    assert got["detectable_delta"] == pytest.approx(z * math.sqrt(v_u / 3 + c + (4e-4 - c) / 3))
    # a common test term larger than the budget: no number of seeds is enough
    assert power_table(row, deltas=(0.02,)).iloc[0]["seeds_needed"] == math.inf
    one = power_table(paired_differences(_predictions({"dual": 0.7, "ed": 0.6}, seeds=(0,)),
                                         n_boot=100))
    assert one["seeds_needed"].isna().all() and one["note"].str.contains("one seed").all()


def test_outcomes_are_paired_by_auroc_on_the_same_subjects() -> None:
    """04_predictions rows (0/1 truth, a score): the paired AUROC difference equals a direct
    computation with sklearn on each shared resample, and a resample without a case is left
    out rather than scored 0."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    n = 40
    y = (rng.random(n) < 0.25).astype(float)
    ids = [f"S{i:03d}" for i in range(n)]
    scores = {"dual": y + rng.normal(0, 0.8, n), "ed": y + rng.normal(0, 1.5, n)}
    preds = pd.concat([pd.DataFrame({"method": m, "seed": 0, "model": "mlp", "target": "af",
                                     "subject_id": ids, "y_true": y, "y_pred": s})
                       for m, s in scores.items()], ignore_index=True)
    out = paired_differences(preds, metric="auroc", n_boot=60, seed=1)
    row = out[out["seed"] == 0].iloc[0]
    direct = roc_auc_score(y, scores["dual"]) - roc_auc_score(y, scores["ed"])
    assert row["metric"] == "auroc" and row["diff"] == pytest.approx(direct)
    boot = [roc_auc_score(y[i], scores["dual"][i]) - roc_auc_score(y[i], scores["ed"][i])
            for i in bootstrap_indices(n, 60, 1) if 0 < y[i].sum() < n]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        tuple(np.percentile(boot, [2.5, 97.5])))


def test_batched_auroc_matches_sklearn_and_marks_one_class_rows() -> None:
    from sklearn.metrics import roc_auc_score

    from ecgcmr.evaluate.outcomes import auroc

    rng = np.random.default_rng(0)
    y = (rng.random((5, 30)) < 0.3).astype(float)
    s = np.round(rng.normal(size=(5, 30)), 1)              # ties: counted one half
    y[4] = 0.0                                             # no case: undefined
    got = auroc(y, s)
    assert got.shape == (5,) and math.isnan(got[4])
    assert got[:4] == pytest.approx([roc_auc_score(y[k], s[k]) for k in range(4)])
    assert isinstance(auroc(y[0], s[0]), float)
