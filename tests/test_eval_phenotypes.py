"""Downstream phenotype regression on synthetic features with known structure.

Every cohort here is built in the test: Gaussian "embeddings", targets that are a known
linear or nonlinear function of them plus noise, splits assigned at random. Expected values
come from independent formulas (sklearn / scipy metrics, a hand-written K-fold search, the
normal-theory width of a mean's CI), never from numbers read off the implementation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from ecgcmr.ecg_measurements import FEATURE_NAMES, measure_many
from ecgcmr.errors import DataError
from ecgcmr.evaluate import (
    DEFAULT_ALPHAS,
    LABEL_EFFICIENCY_COLUMNS,
    METRIC_COLUMNS,
    bootstrap_ci,
    classical_features,
    evaluate_predictions,
    label_efficiency,
    linear_probe,
    mlp_head,
    nested_subsets,
    r2_score,
    regression_metrics,
    relative_improvement,
)

SPLIT_P = (0.6, 0.2, 0.2)
FAST_MLP = {"epochs": 150, "patience": 15, "lr": 1e-2}  # converges in < 1 s on these sizes


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # tiny MLPs: a second intra-op thread only adds synchronisation (and stalls when the
    # two cores are busy with other jobs); restore whatever the session had
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cohort(n: int = 600, d: int = 16, seed: int = 0,
                split_p: tuple[float, float, float] = SPLIT_P) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, table): ``e000..`` ~ N(0, 1); targets with known structure.

    ``lin`` = X·w + noise (R² ≈ 0.96 attainable); ``half`` = X·w + noise (R² ≈ 0.5);
    ``noise`` independent of X; ``nl`` = x0² + |x1| + noise (no linear signal);
    ``offset`` = 1000 + 10·x2 + noise (a large mean: standardisation must be right).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    split = rng.choice(["train", "val", "test"], size=n, p=split_p)
    ids = [f"S{i:05d}" for i in range(n)]
    features = pd.DataFrame(x, columns=[f"e{i:03d}" for i in range(d)])
    features.insert(0, "split", split)
    features.insert(0, "subject_id", ids)
    w = rng.normal(size=d) / math.sqrt(d)                # Var(X·w) ≈ 1
    signal = x @ w
    table = pd.DataFrame({
        "subject_id": ids,
        "lin": signal + 0.2 * rng.normal(size=n),
        "half": signal + rng.normal(size=n) * signal.std(),
        "noise": rng.normal(size=n),
        "nl": x[:, 0] ** 2 + np.abs(x[:, 1]) + 0.3 * rng.normal(size=n),
        "offset": 1000.0 + 10.0 * x[:, 2] + 2.0 * rng.normal(size=n),
    })
    return features, table


def feats(features: pd.DataFrame) -> list[str]:
    return [c for c in features.columns if c.startswith("e")]


def r2_of(pred: pd.DataFrame) -> float:
    return skm.r2_score(pred["y_true"], pred["y_pred"])


# ============================================================================ linear probe
def test_probe_recovers_linear_relation_and_nothing_from_noise() -> None:
    features, table = make_cohort()
    lin = linear_probe(features, table, "lin")
    assert r2_of(lin.predictions) > 0.9
    assert list(lin.predictions.columns) == ["subject_id", "y_true", "y_pred"]
    test_ids = set(features.loc[features["split"] == "test", "subject_id"])
    assert set(lin.predictions["subject_id"]) == test_ids
    noise = linear_probe(features, table, "noise")
    assert abs(r2_of(noise.predictions)) < 0.1
    assert noise.alpha > lin.alpha  # pure noise: the search shrinks harder


def test_probe_penalty_is_kfold_cv_on_training_rows() -> None:
    """An independent K-fold search over the same grid picks the same penalty."""
    features, table = make_cohort(n=300, seed=3)
    res = linear_probe(features, table, "half", seed=5)
    train = features.merge(table, on="subject_id")
    train = train[train["split"] == "train"]
    x = train[feats(features)].to_numpy()
    x = (x - x.mean(0)) / x.std(0)
    y = train["half"].to_numpy()
    folds = list(KFold(5, shuffle=True, random_state=5).split(x))
    cv_mse = [np.mean([np.mean((Ridge(alpha=a).fit(x[tr], y[tr]).predict(x[te]) - y[te]) ** 2)
                       for tr, te in folds]) for a in DEFAULT_ALPHAS]
    assert res.alpha == pytest.approx(DEFAULT_ALPHAS[int(np.argmin(cv_mse))])


@pytest.mark.parametrize(("n", "p", "seed"), [(200, 10, 0), (40, 60, 1), (12, 5, 2), (3, 4, 3)])
def test_penalty_search_is_what_sklearn_ridgecv_chooses(n: int, p: int, seed: int) -> None:
    """The one-SVD-per-fold search picks sklearn's RidgeCV penalty (the same folds, the
    same MSE scoring), with more features than rows and with folds of one row too."""
    from sklearn.linear_model import RidgeCV

    from ecgcmr.evaluate.phenotypes import kfold_ridge_alpha

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = x[:, 0] * rng.normal() + rng.normal(scale=rng.uniform(0.1, 3.0), size=n)
    alphas = np.logspace(-3, 4, 15)
    folds = KFold(min(5, n), shuffle=True, random_state=seed)
    expected = RidgeCV(alphas=alphas, cv=folds, scoring="neg_mean_squared_error").fit(x, y)
    assert kfold_ridge_alpha(x, y, alphas, folds) == expected.alpha_


def test_probe_leaked_label_trap() -> None:
    """A column equal to the target on TEST rows only (noise elsewhere) must not help."""
    # a large test split arms the trap: any fit that sees test rows finds the leak
    features, table = make_cohort(n=2000, seed=1, split_p=(0.45, 0.10, 0.45))
    clean = r2_of(linear_probe(features, table, "half").predictions)
    y = features[["subject_id"]].merge(table, on="subject_id")["half"].to_numpy()
    rng = np.random.default_rng(11)
    is_test = (features["split"] == "test").to_numpy()
    trapped = features.assign(leak=np.where(is_test, y, rng.normal(y.mean(), y.std(), len(y))))
    trap = r2_of(linear_probe(trapped, table, "half").predictions)
    assert 0.3 < clean < 0.7
    assert trap == pytest.approx(clean, abs=0.05)
    # the trap is armed: the same kind of model fitted on all rows scores far higher
    everyone = trapped.merge(table, on="subject_id")
    cols = [*feats(features), "leak"]
    leaky = Ridge(alpha=1.0).fit(everyone[cols], everyone["half"])
    leaky_r2 = skm.r2_score(everyone.loc[is_test, "half"],
                            leaky.predict(everyone.loc[is_test, cols]))
    assert leaky_r2 > clean + 0.15


def test_probe_statistics_come_from_training_rows_only() -> None:
    features, table = make_cohort(n=400, seed=2)
    cols = feats(features)
    rng = np.random.default_rng(0)
    with_nan = features.copy()
    with_nan[cols] = with_nan[cols].mask(rng.random((len(features), len(cols))) < 0.1)
    base = linear_probe(with_nan, table, "lin")

    # make every val row and half of the test rows extreme (huge values, NaN): a pipeline
    # fitted on train rows alone gives bit-identical predictions for the other test rows
    test_ids = with_nan.loc[with_nan["split"] == "test", "subject_id"].to_numpy()
    touched = set(test_ids[::2])
    extreme = with_nan.copy()
    hit = (extreme["split"] == "val") | extreme["subject_id"].isin(touched)
    block = rng.normal(1e6, 1e5, size=(int(hit.sum()), len(cols)))
    block[rng.random(block.shape) < 0.3] = np.nan
    extreme.loc[hit, cols] = block
    moved = linear_probe(extreme, table, "lin")
    keep_a = base.predictions[~base.predictions["subject_id"].isin(touched)]
    keep_b = moved.predictions[~moved.predictions["subject_id"].isin(touched)]
    np.testing.assert_array_equal(keep_a["y_pred"].to_numpy(), keep_b["y_pred"].to_numpy())
    assert moved.alpha == base.alpha

    # and the fitted statistics are the training rows' (medians ignore NaN; means after
    # imputation), computed here with numpy
    train = with_nan.merge(table, on="subject_id")
    train = train[(train["split"] == "train") & train["lin"].notna()][cols].to_numpy()
    med = np.nanmedian(train, axis=0)
    imputed = np.where(np.isnan(train), med, train)
    imputer, scaler = moved.model[0], moved.model[1]
    np.testing.assert_allclose(imputer.statistics_, med)
    np.testing.assert_allclose(scaler.mean_, imputed.mean(0))
    np.testing.assert_allclose(scaler.scale_, imputed.std(0))


def test_probe_drops_nan_targets_and_rejects_bad_input() -> None:
    features, table = make_cohort(n=300, seed=4)
    table = table.copy()
    table.loc[::3, "lin"] = np.nan
    pred = linear_probe(features, table, "lin").predictions
    missing = set(table.loc[table["lin"].isna(), "subject_id"])
    assert not missing & set(pred["subject_id"])
    assert pred["y_true"].notna().all() and np.isfinite(pred["y_pred"]).all()
    with pytest.raises(DataError, match="lvef_pct"):
        linear_probe(features, table, "lvef_pct")
    with pytest.raises(DataError, match="split"):
        linear_probe(features.assign(split="training"), table, "lin")
    with pytest.raises(DataError, match="duplicate"):
        linear_probe(pd.concat([features, features.iloc[:1]]), table, "lin")


# ============================================================================ MLP head
def test_mlp_learns_nonlinear_target_the_probe_cannot() -> None:
    features, table = make_cohort(n=600, d=32, seed=5)
    probe_r2 = r2_of(linear_probe(features, table, "nl").predictions)
    res = mlp_head(features, table, ["nl", "lin"], seed=0, **FAST_MLP)
    pred = res.predictions
    assert list(pred.columns) == ["subject_id", "target", "y_true", "y_pred"]
    nl = pred[pred["target"] == "nl"]
    # the mean predictor has R² ≈ 0 (exactly 0 with the test mean)
    assert r2_of(nl) > 0.4 and r2_of(nl) > probe_r2 + 0.3
    assert r2_of(pred[pred["target"] == "lin"]) > 0.8


def test_mlp_is_deterministic_and_blind_to_test_rows() -> None:
    features, table = make_cohort(n=400, seed=6)
    kw = {**FAST_MLP, "epochs": 40}
    state = torch.get_rng_state()
    a = mlp_head(features, table, ["lin", "nl"], seed=3, **kw).predictions
    assert torch.equal(torch.get_rng_state(), state)  # global torch RNG left alone

    # same seed, test targets scrambled and half of the test features made extreme:
    # the untouched test subjects get bit-identical predictions
    test_ids = features.loc[features["split"] == "test", "subject_id"].to_numpy()
    touched = set(test_ids[::2])
    f2, t2 = features.copy(), table.copy()
    f2.loc[f2["subject_id"].isin(touched), feats(features)] = 1e4
    is_test = t2["subject_id"].isin(test_ids)
    t2.loc[is_test, ["lin", "nl"]] = -t2.loc[is_test, ["lin", "nl"]].to_numpy() * 50
    b = mlp_head(f2, t2, ["lin", "nl"], seed=3, **kw).predictions
    keep_a = a[~a["subject_id"].isin(touched)].reset_index(drop=True)
    keep_b = b[~b["subject_id"].isin(touched)].reset_index(drop=True)
    np.testing.assert_array_equal(keep_a["y_pred"].to_numpy(), keep_b["y_pred"].to_numpy())

    c = mlp_head(features, table, ["lin", "nl"], seed=4, **kw).predictions
    assert not np.allclose(a["y_pred"], c["y_pred"])


def test_mlp_early_stops_on_val_and_restores_best_epoch() -> None:
    """The test split is a copy of the val split (new ids): the restored model's test loss
    must equal the minimum of the recorded validation losses."""
    features, table = make_cohort(n=500, seed=7)
    val_f = features[features["split"] == "val"]
    copy_f = val_f.assign(split="test", subject_id="copy_" + val_f["subject_id"])
    copy_t = table[table["subject_id"].isin(val_f["subject_id"])].copy()
    copy_t["subject_id"] = "copy_" + copy_t["subject_id"]
    f = pd.concat([features[features["split"] != "test"], copy_f], ignore_index=True)
    t = pd.concat([table, copy_t], ignore_index=True)
    targets = ["lin", "nl"]
    # a large lr overfits quickly, so the val loss turns up and patience ends the run
    res = mlp_head(f, t, targets, epochs=300, patience=5, lr=3e-2, seed=0)
    hist = res.history
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss"]
    assert res.best_epoch == int(hist["val_loss"].idxmin())
    assert len(hist) == res.best_epoch + 5 + 1 < 300  # stopped by patience

    # standardised MSE of the returned test predictions, with train statistics from numpy
    train = f[f["split"] == "train"][["subject_id"]].merge(t, on="subject_id")
    pred = res.predictions.pivot(index="subject_id", columns="target")
    z_err = [((pred["y_pred"][k] - pred["y_true"][k]) / train[k].std(ddof=0)) ** 2
             for k in targets]
    assert np.mean(np.concatenate(z_err)) == pytest.approx(hist["val_loss"].min(), rel=1e-4)
    assert hist["val_loss"].iloc[-1] > hist["val_loss"].min()


def test_mlp_masks_nan_targets() -> None:
    features, table = make_cohort(n=600, seed=8)
    table = table.copy()
    rng = np.random.default_rng(1)
    table.loc[rng.random(len(table)) < 0.5, "offset"] = np.nan   # half missing, everywhere
    table.loc[rng.random(len(table)) < 0.2, "lin"] = np.nan
    table.loc[table.index[:30], ["offset", "lin"]] = np.nan       # some subjects have neither
    res = mlp_head(features, table, ["offset", "lin"], seed=0, **FAST_MLP)
    assert np.isfinite(res.history[["train_loss", "val_loss"]].to_numpy()).all()
    pred = res.predictions
    assert pred["y_true"].notna().all() and np.isfinite(pred["y_pred"]).all()
    n_obs = table.merge(features[features["split"] == "test"][["subject_id"]])
    assert (pred["target"] == "offset").sum() == n_obs["offset"].notna().sum()
    off = pred[pred["target"] == "offset"]
    # offset = 1000 + 10·x2: only right if the NaN-aware standardisation and the mask hold
    assert r2_of(off) > 0.8
    assert r2_of(pred[pred["target"] == "lin"]) > 0.8


def test_mlp_covariate_fusion_uses_the_covariate() -> None:
    features, table = make_cohort(n=600, seed=9)
    rng = np.random.default_rng(2)
    age = rng.uniform(45, 80, len(table))
    table = table.assign(age_years=age, sex=rng.integers(0, 2, len(table)).astype(float),
                         aged=0.5 * table["lin"] + (age - 62) / 8)
    alone = mlp_head(features, table, ["aged"], seed=0, **FAST_MLP).predictions
    fused = mlp_head(features, table, ["aged"], covariates=("age_years", "sex"), seed=0,
                     **FAST_MLP).predictions
    assert r2_of(fused) > 0.9 > r2_of(alone) + 0.3
    with pytest.raises(DataError, match="bmi"):
        mlp_head(features, table, ["aged"], covariates=("bmi",), epochs=1)


# ============================================================================ metrics
def test_regression_metrics_match_independent_formulas() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(60, 8, 200)
    p = y + rng.normal(0, 4, 200)
    p[[3, 7]] = np.nan
    got = regression_metrics(y, p)
    keep = np.isfinite(p)
    assert got["n"] == 198
    assert got["r2"] == pytest.approx(skm.r2_score(y[keep], p[keep]), rel=1e-12)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y[keep], p[keep]), rel=1e-12)
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(y[keep], p[keep])[0], rel=1e-12)
    assert math.isnan(regression_metrics(np.ones(5), np.arange(5.0))["pearson_r"])


def test_bootstrap_ci_contains_estimate_is_reproducible_and_shrinks() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.normal(size=n)
        return y, 0.8 * y + 0.6 * rng.normal(size=n)

    y, p = sample(100)
    low, high, idx = bootstrap_ci(y, p, skm.r2_score, n_boot=400, seed=3)
    assert idx.shape == (400, 100) and np.issubdtype(idx.dtype, np.integer)
    assert low < skm.r2_score(y, p) < high
    boot = [skm.r2_score(y[i], p[i]) for i in idx]
    assert (low, high) == tuple(np.percentile(boot, [2.5, 97.5]))   # exactly, from indices
    again = bootstrap_ci(y, p, skm.r2_score, n_boot=400, seed=3)
    assert again[:2] == (low, high) and np.array_equal(again[2], idx)

    y_big, p_big = sample(1600)
    low_b, high_b, _ = bootstrap_ci(y_big, p_big, skm.r2_score, n_boot=400, seed=3)
    assert (high_b - low_b) < 0.5 * (high - low)     # ∝ 1/√n: 1/4 expected

    # percentile CI of a mean error ≈ normal theory, ± 1.96 σ/√n
    e = rng.normal(size=400)
    low_m, high_m, _ = bootstrap_ci(e, np.zeros(400), lambda a, b: float(np.mean(a - b)),
                                    n_boot=2000, seed=0)
    assert high_m - low_m == pytest.approx(2 * 1.96 * e.std() / math.sqrt(400), rel=0.12)


def test_evaluate_predictions_is_tidy_and_matches_bootstrap_ci() -> None:
    rng = np.random.default_rng(2)
    rows = []
    for target, n, scale in (("lvedv_ml", 120, 20.0), ("lvef_pct", 90, 5.0)):
        y = rng.normal(100, scale, n)
        rows.append(pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(n)],
                                  "target": target, "y_true": y,
                                  "y_pred": y + rng.normal(0, scale / 2, n)}))
    pred = pd.concat(rows, ignore_index=True)
    pred.loc[5, "y_true"] = np.nan
    out = evaluate_predictions(pred, n_boot=300, seed=4)
    assert list(out.columns) == list(METRIC_COLUMNS)
    assert list(out["target"]) == ["lvedv_ml"] * 3 + ["lvef_pct"] * 3
    assert list(out["metric"]) == ["r2", "mae", "pearson_r"] * 2
    assert list(out["n"]) == [119] * 3 + [90] * 3
    for target, group in pred.groupby("target"):
        g = group.dropna().sort_values("subject_id")
        for metric, fn in (("r2", skm.r2_score), ("mae", skm.mean_absolute_error),
                           ("pearson_r", lambda a, b: stats.pearsonr(a, b)[0])):
            row = out[(out["target"] == target) & (out["metric"] == metric)].iloc[0]
            assert row["value"] == pytest.approx(fn(g["y_true"], g["y_pred"]), rel=1e-10)
            low, high, _ = bootstrap_ci(g["y_true"], g["y_pred"], fn, n_boot=300, seed=4)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-9)
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
    shuffled = evaluate_predictions(pred.sample(frac=1.0, random_state=0), n_boot=300, seed=4)
    pd.testing.assert_frame_equal(shuffled, out)
    assert math.isnan(r2_score(np.ones(4), np.arange(4.0)))  # constant truth: undefined


# ============================================================================ label efficiency
def test_nested_subsets_are_nested_and_sized() -> None:
    ids = [f"S{i:04d}" for i in range(1000)]
    fractions = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    subsets = nested_subsets(ids, fractions, seed=1, min_size=12)
    sizes = {f: len(s) for f, s in subsets.items()}
    assert sizes == {0.01: 12, 0.05: 50, 0.1: 100, 0.25: 250, 0.5: 500, 1.0: 1000}
    ordered = [set(subsets[f]) for f in fractions]
    assert all(a <= b for a, b in zip(ordered, ordered[1:], strict=False))
    assert ordered[-1] == set(ids)
    reordered = nested_subsets(ids[::-1], fractions, seed=1, min_size=12)
    assert all(np.array_equal(reordered[f], subsets[f]) for f in fractions)
    other = nested_subsets(ids, fractions, seed=2, min_size=12)
    assert set(other[0.1]) != set(subsets[0.1])
    assert len(nested_subsets(ids[:7], (0.1,), min_size=10)[0.1]) == 7   # capped at n


def test_label_efficiency_tidy_and_improving() -> None:
    features, table = make_cohort(n=800, d=16, seed=10)
    fractions = (0.02, 0.1, 1.0)
    out = label_efficiency(features, table, ["lin", "noise"], fractions, seed=0, n_boot=50)
    assert list(out.columns) == list(LABEL_EFFICIENCY_COLUMNS)
    assert len(out) == len(fractions) * 2 * 3
    n_train = int((features["split"] == "train").sum())
    expected = {f: min(n_train, max(10, math.ceil(f * n_train))) for f in fractions}
    assert dict(zip(out["fraction"], out["n_train"], strict=True)) == expected
    n_test = int((features["split"] == "test").sum())
    assert (out["n"] == n_test).all()
    r2 = out[(out["target"] == "lin") & (out["metric"] == "r2")].set_index("fraction")["value"]
    assert r2[1.0] > 0.9 and r2[1.0] > r2[0.02]

    mlp = label_efficiency(features, table, ["lin"], (0.5, 1.0), model="mlp", n_boot=20,
                           epochs=5, patience=2)
    assert list(mlp.columns) == list(LABEL_EFFICIENCY_COLUMNS) and len(mlp) == 6


# ============================================================================ small helpers
def test_relative_improvement() -> None:
    assert relative_improvement(0.50, 0.40) == pytest.approx(25.0)
    assert relative_improvement(-0.1, -0.2) == pytest.approx(50.0)    # |b|: still "better"
    assert relative_improvement(8.0, 10.0, higher_is_better=False) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        relative_improvement(1.0, 0.0)


def test_classical_features_frame() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(5000) / 500.0
    beat = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01 ** 2))       # 75 bpm spikes
    ecgs = np.stack([np.outer(rng.uniform(0.5, 1.5, 12), beat)
                     + 0.01 * rng.normal(size=(12, 5000)) for _ in range(3)])
    subjects = pd.DataFrame({"subject_id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    out = classical_features(ecgs, subjects)
    assert list(out.columns) == ["subject_id", "split", *FEATURE_NAMES]
    pd.testing.assert_frame_equal(out[list(FEATURE_NAMES)], measure_many(ecgs))
    assert out["hr_bpm"].to_numpy() == pytest.approx(75.0, rel=0.01)
    with pytest.raises(DataError):
        classical_features(ecgs[:2], subjects)


# --------------------------------------------------------------------------- fine-tuning
class _LinearEncoder(torch.nn.Module):
    """A tiny stand-in ECG encoder: (B, 12, T) -> (B, out_dim)."""

    def __init__(self, t: int, out_dim: int = 4) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.proj = torch.nn.Linear(12 * t, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def _ecg_cohort(n: int = 600, t: int = 8, seed: int = 0
                ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """ECG-like arrays whose target is the mean of lead I over its first half (+ noise)."""
    rng = np.random.default_rng(seed)
    ecg = rng.normal(size=(n, 12, t)).astype(np.float32)
    y = 5.0 * ecg[:, 0, : t // 2].mean(axis=1) + rng.normal(0, 0.1, n)
    split = rng.choice(["train", "val", "test"], size=n, p=SPLIT_P)
    ids = [f"s{i:04d}" for i in range(n)]
    # rows in the array deliberately not in subject order: the frame's ``row`` must be used
    perm = rng.permutation(n)
    subjects = pd.DataFrame({"subject_id": ids, "split": split, "row": perm})
    table = pd.DataFrame({"subject_id": ids, "amp": y, "age_years": rng.normal(60, 8, n)})
    return ecg[np.argsort(perm)], subjects, table


def test_finetune_head_learns_what_a_frozen_random_encoder_cannot() -> None:
    from ecgcmr.evaluate import finetune_head

    ecg, subjects, table = _ecg_cohort()
    torch.manual_seed(0)
    encoder = _LinearEncoder(ecg.shape[-1])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    kw = {"epochs": 60, "patience": 10, "lr": 1e-2, "batch_size": 32, "seed": 0}
    tuned = finetune_head(encoder, ecg, subjects, table, ["amp"], encoder_lr=1e-2, **kw)
    frozen = finetune_head(encoder, ecg, subjects, table, ["amp"], encoder_lr=0.0, **kw)
    r2 = {name: float(r2_score(res.predictions["y_true"].to_numpy(),
                               res.predictions["y_pred"].to_numpy()))
          for name, res in (("tuned", tuned), ("frozen", frozen))}
    # a random 4-d projection of 240 inputs keeps little of the one direction that matters
    assert r2["tuned"] > 0.8 > r2["frozen"] + 0.3, r2
    # the caller's encoder is untouched; only test subjects are predicted
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())
    test_ids = set(subjects.loc[subjects["split"] == "test", "subject_id"])
    assert set(tuned.predictions["subject_id"]) == test_ids


def test_finetune_head_never_fits_on_test_labels_and_is_deterministic() -> None:
    from ecgcmr.evaluate import finetune_head

    ecg, subjects, table = _ecg_cohort(n=200)
    torch.manual_seed(1)
    encoder = _LinearEncoder(ecg.shape[-1])
    kw = {"epochs": 5, "patience": 5, "lr": 1e-2, "batch_size": 16, "seed": 3,
          "covariates": ("age_years",)}
    a = finetune_head(encoder, ecg, subjects, table, ["amp"], **kw)
    b = finetune_head(encoder, ecg, subjects, table, ["amp"], **kw)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    # scrambling the test split's targets changes y_true only, never what was predicted
    is_test = table["subject_id"].isin(subjects.loc[subjects["split"] == "test", "subject_id"])
    scrambled = table.assign(amp=np.where(is_test, 1e6, table["amp"]))
    c = finetune_head(encoder, ecg, subjects, scrambled, ["amp"], **kw)
    np.testing.assert_array_equal(a.predictions["y_pred"], c.predictions["y_pred"])
    assert (c.predictions["y_true"] == 1e6).all()
