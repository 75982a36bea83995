"""Outcome evaluation: concordance against an independent Harrell's C, Cox recovery of a known
log-hazard ratio, leakage traps, balanced sampling, AUROC/AUPRC against sklearn, KM/log-rank,
and graceful NaN for rare conditions. Synthetic data from a known proportional-hazards model
with censoring and tied (gridded) times.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ecgcmr.evaluate.outcomes import (
    BALANCED_COLUMNS,
    KM_COLUMNS,
    NATURAL_COLUMNS,
    SURVIVAL_COLUMNS,
    HeadSettings,
    auroc,
    average_precision,
    balanced_classification,
    balanced_sample,
    c_index,
    classification_metrics,
    cox_survival,
    horizon_labels,
    natural_prevalence_metrics,
)

TIE_STEP_YEARS = 0.25     # event/censoring times are rounded up to this grid: many ties
BASE_HAZARD = 0.08        # per year, exponential baseline
N_NOISE = 4               # noise feature columns next to the informative one


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # tiny MLP heads: a second intra-op thread only adds synchronisation and stalls badly
    # when the two cores are busy (13 s instead of 0.4 s per fit); restore the session's
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ============================================================================================
# Synthetic data
# ============================================================================================
def _reference_harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C by the O(n²) definition: pair (i, j) comparable when i had the event and
    t_i < t_j, or t_i == t_j with j censored; concordant if risk_i > risk_j, ½ if equal."""
    num = den = 0.0
    for i in range(len(time)):
        if event[i] != 1:
            continue
        for j in range(len(time)):
            if j == i:
                continue
            if time[i] < time[j] or (time[i] == time[j] and event[j] == 0):
                den += 1.0
                if risk[i] > risk[j]:
                    num += 1.0
                elif risk[i] == risk[j]:
                    num += 0.5
    return num / den


def _cohort(n: int, beta: float, seed: int, *, condition: str = "hf",
            signal_in_features: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """features (e000 informative when ``signal_in_features``, e001.. noise) and an outcome
    table from h(t) = BASE_HAZARD·exp(beta·x), x ~ N(0, 1), uniform 1–10 y censoring,
    times rounded up to TIE_STEP_YEARS. Splits 60/20/20 at random."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)                                       # true risk factor, SD 1
    t_event = rng.exponential(1.0 / (BASE_HAZARD * np.exp(beta * x)))
    t_cens = rng.uniform(1.0, 10.0, n)
    time = np.ceil(np.minimum(t_event, t_cens) / TIE_STEP_YEARS) * TIE_STEP_YEARS
    event = (t_event <= t_cens).astype(float)
    split = np.array(["train"] * n, dtype=object)
    perm = rng.permutation(n)
    split[perm[int(0.6 * n):int(0.8 * n)]] = "val"
    split[perm[int(0.8 * n):]] = "test"
    ids = [f"S{i:05d}" for i in range(n)]
    noise = rng.standard_normal((n, N_NOISE))
    first = x if signal_in_features else rng.standard_normal(n)
    features = pd.DataFrame({"subject_id": ids, "split": split, "e000": first})
    for k in range(N_NOISE):
        features[f"e{k + 1:03d}"] = noise[:, k]
    table = pd.DataFrame({
        "subject_id": ids,
        f"{condition}_ever": event,
        f"{condition}_event": event,
        f"{condition}_time_years": time,
        "age_years": rng.normal(60, 8, n),
        "sex": rng.integers(0, 2, n).astype(float),
    })
    return features, table


@pytest.fixture(scope="module")
def strong() -> tuple[pd.DataFrame, pd.DataFrame, object]:
    """A cohort with a strong true log-HR (1.0 per SD) and its default Cox analysis."""
    features, table = _cohort(1500, beta=1.0, seed=1)
    return features, table, cox_survival(features, table, "hf", n_components=5, n_boot=100)


# ============================================================================================
# Concordance
# ============================================================================================
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_index_equals_independent_harrell_with_ties_and_censoring(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    time = rng.integers(1, 12, n).astype(float)           # heavy ties in time
    event = (rng.random(n) < 0.5).astype(float)            # ~half censored
    risk = np.round(rng.standard_normal(n) - 0.1 * time, 1)  # ties in risk, some signal
    assert len(np.unique(risk)) < n and len(np.unique(time)) < n
    assert abs(c_index(time, event, risk) - _reference_harrell_c(time, event, risk)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_c_index_counts_as_lifelines_does(seed: int, monkeypatch) -> None:
    """The same C as lifelines' concordance_index (fed the negated risk) on tied times,
    tied risks, censoring and a bootstrap resample's repeated subjects, across chunks."""
    from lifelines.utils import concordance_index

    import ecgcmr.evaluate.outcomes as outcomes

    monkeypatch.setattr(outcomes, "C_INDEX_CHUNK", 7)
    rng = np.random.default_rng(seed)
    n = 200
    time = rng.integers(1, 15, n).astype(float)
    event = (rng.random(n) < 0.4).astype(float)
    risk = np.round(rng.standard_normal(n) - 0.1 * time, 1)
    for rows in (np.arange(n), rng.integers(0, n, n)):
        expected = concordance_index(time[rows], -risk[rows], event[rows])
        assert c_index(time[rows], event[rows], risk[rows]) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(c_index(time, np.zeros(n), risk))


def test_cox_c_index_and_its_bootstrap_are_harrell_on_the_test_split(strong) -> None:
    _, _, res = strong
    p = res.predictions
    t, e, r = (p[c].to_numpy(dtype=float) for c in ("time_years", "event", "risk"))
    assert len(np.unique(t)) < len(t) and 0 < e.sum() < len(e)   # ties and censoring present
    row = res.metrics.set_index("metric").loc["c_index"]
    assert abs(row["value"] - _reference_harrell_c(t, e, r)) < 1e-9
    # the saved bootstrap rows reproduce the CI exactly
    boot = [c_index(t[i], e[i], r[i]) for i in res.indices]
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    assert row["ci_low"] == pytest.approx(low, abs=1e-12)
    assert row["ci_high"] == pytest.approx(high, abs=1e-12)
    assert row["ci_low"] < row["value"] < row["ci_high"]
    assert row["n"] == len(p) and row["n_events"] == int(e.sum())


# ============================================================================================
# Cox model
# ============================================================================================
def test_cox_recovers_known_log_hazard_ratio_of_a_covariate() -> None:
    beta_per_year = 0.05
    features, table = _cohort(1500, beta=0.0, seed=3)
    rng = np.random.default_rng(4)
    # re-draw the event times so that age (not e000) carries the known hazard ratio
    age = table["age_years"].to_numpy()
    t_event = rng.exponential(1.0 / (BASE_HAZARD * np.exp(beta_per_year * (age - 60))))
    t_cens = rng.uniform(1.0, 10.0, len(age))
    table["hf_time_years"] = np.ceil(np.minimum(t_event, t_cens) / TIE_STEP_YEARS) * TIE_STEP_YEARS
    table["hf_event"] = (t_event <= t_cens).astype(float)
    res = cox_survival(features, table, "hf", n_components=0, covariates=("age_years",),
                       penalizer=0.0, n_boot=20)
    coef = res.coefficients.set_index("covariate").loc["age_years"]
    # the design standardises age with the training SD: the coefficient is per training SD
    train_ids = features.loc[features["split"] == "train", "subject_id"]
    sd_train = table.set_index("subject_id").loc[train_ids, "age_years"].std(ddof=0)
    truth = beta_per_year * sd_train
    assert coef["coef"] > 0
    assert abs(coef["coef"] - truth) < 3.5 * coef["se"]


def test_hr_per_sd_of_risk_score_matches_the_true_hazard_ratio(strong) -> None:
    # the fitted risk score is ~ the true x (SD 1, log-HR 1.0) plus small noise-feature terms
    _, _, res = strong
    row = res.metrics.set_index("metric").loc["hr_per_sd"]
    se = (math.log(row["ci_high"]) - math.log(row["ci_low"])) / (2 * 1.959964)
    assert abs(math.log(row["value"]) - 1.0) < 3 * se
    assert row["ci_low"] > 1.0


def test_c_index_is_near_half_on_noise_features() -> None:
    features, table = _cohort(1500, beta=1.0, seed=5, signal_in_features=False)
    res = cox_survival(features, table, "hf", n_components=5, n_boot=100)
    row = res.metrics.set_index("metric").loc["c_index"]
    assert abs(row["value"] - 0.5) < 0.06
    assert row["ci_low"] < 0.5 < row["ci_high"]


def test_pca_and_scaling_never_see_test_val_or_prevalent_rows() -> None:
    features, table = _cohort(600, beta=1.0, seed=6)
    ecg_cols = [c for c in features.columns if c.startswith("e")]
    trapped = features.copy()
    trapped_table = table.copy()
    wild = features["split"] != "train"
    trapped.loc[wild, ecg_cols] = trapped.loc[wild, ecg_cols] * 1000.0 + 1e6
    trapped_table.loc[wild, "age_years"] = 1e5
    # prevalent training subjects (event NaN) are outside the incident cohort: also trapped
    prevalent = (features["split"] == "train") & (np.arange(len(features)) % 10 == 0)
    trapped.loc[prevalent, ecg_cols] = -1e6
    trapped_table.loc[prevalent, ["hf_event", "hf_time_years"]] = np.nan
    clean_table = table.copy()
    clean_table.loc[prevalent, ["hf_event", "hf_time_years"]] = np.nan

    kw = {"n_components": 3, "covariates": ("age_years",), "n_boot": 10}
    a = cox_survival(features, clean_table, "hf", **kw)
    b = cox_survival(trapped, trapped_table, "hf", **kw)
    # the fitted transform and the Cox fit depend on training rows only
    pd.testing.assert_frame_equal(a.coefficients, b.coefficients)
    pd.testing.assert_frame_equal(a.ph_check, b.ph_check)
    probe = features.loc[features["split"] == "train"].merge(table, on="subject_id")
    np.testing.assert_array_equal(a.design.transform(probe), b.design.transform(probe))
    # ... and its scaling statistics are those of the incident training rows, computed here
    cohort = (features["split"] == "train") & ~prevalent
    scaler = b.design.named_transformers_["ecg"]["scale"]
    np.testing.assert_allclose(scaler.mean_, features.loc[cohort, ecg_cols].mean().to_numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(scaler.scale_, features.loc[cohort, ecg_cols].std(ddof=0),
                               rtol=1e-12)
    age_scaler = b.design.named_transformers_["cov"][-1]
    assert age_scaler.mean_[0] == pytest.approx(
        table.loc[cohort, "age_years"].mean(), abs=1e-9)


# ============================================================================================
# Balanced sampling and classification
# ============================================================================================
def _labels(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    # train: 20 cases / 200 controls; val: 6 / 50; test: 30 cases / 12 controls (cases major)
    for split, n1, n0 in (("train", 20, 200), ("val", 6, 50), ("test", 30, 12)):
        rows += [(split, 1)] * n1 + [(split, 0)] * n0
    frame = pd.DataFrame(rows, columns=["split", "y"])
    frame.insert(0, "subject_id", [f"P{i:04d}" for i in rng.permutation(len(frame))])
    return frame


def test_balanced_sample_is_one_to_one_per_split_and_seed_dependent() -> None:
    frame = _labels()
    expected = {"train": 20, "val": 6, "test": 12}
    samples = {seed: balanced_sample(frame, seed) for seed in (0, 1)}
    for sample in samples.values():
        counts = sample.groupby(["split", "y"]).size()
        for split, k in expected.items():
            assert counts[(split, 1)] == k and counts[(split, 0)] == k
        assert sample["subject_id"].is_unique
    # all minority-class subjects are kept; the majority sample depends on the seed
    train_cases = set(frame.loc[(frame["split"] == "train") & (frame["y"] == 1), "subject_id"])
    assert train_cases <= set(samples[0]["subject_id"])
    controls = [set(s.loc[(s["split"] == "train") & (s["y"] == 0), "subject_id"])
                for s in samples.values()]
    assert controls[0] != controls[1]
    # same seed, shuffled input rows: the same sample
    again = balanced_sample(frame.sample(frac=1.0, random_state=3), 0)
    assert set(again["subject_id"]) == set(samples[0]["subject_id"])


@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_balanced_classification_learns_a_real_signal(head: str) -> None:
    features, table = _cohort(900, beta=1.5, seed=7)
    settings = HeadSettings(epochs=40, patience=8)
    out = balanced_classification(features, table, "hf", seeds=(0, 1), head=head,
                                  settings=settings)
    assert list(out.columns) == list(BALANCED_COLUMNS)
    assert list(out["seed"]) == [0, 1] and (out["metric"] == "auroc_balanced").all()
    assert (out["n_cases"] == out["n_controls"]).all() and (out["note"] == "").all()
    assert (out["value"] > 0.7).all()
    # deterministic for a seed
    again = balanced_classification(features, table, "hf", seeds=(0,), head=head,
                                    settings=settings)
    assert again["value"].iloc[0] == out["value"].iloc[0]


def test_classification_metrics_match_sklearn_and_bootstrap_reproduces_ci() -> None:
    rng = np.random.default_rng(8)
    y = (rng.random(120) < 0.2).astype(int)
    score = np.round(y * 0.8 + rng.standard_normal(120), 1)         # ties in scores
    assert auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score),
                                                        abs=1e-12)
    metrics, idx = classification_metrics(y, score, n_boot=200, seed=3)
    m = metrics.set_index("metric")
    assert m.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert m.loc["prevalence", "value"] == pytest.approx(y.mean())
    assert idx.shape == (200, 120)
    for name, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        stats = [fn(y[i], score[i]) if 0 < y[i].sum() < len(i) else np.nan for i in idx]
        low, high = np.nanpercentile(stats, [2.5, 97.5])
        assert m.loc[name, "ci_low"] == pytest.approx(low, abs=1e-12)
        assert m.loc[name, "ci_high"] == pytest.approx(high, abs=1e-12)


def test_natural_prevalence_scores_the_whole_test_split() -> None:
    features, table = _cohort(600, beta=1.5, seed=9)
    res = natural_prevalence_metrics(features, table, "hf", head="logistic", n_boot=50)
    assert list(res.metrics.columns) == list(NATURAL_COLUMNS)
    n_test = int((features["split"] == "test").sum())
    assert len(res.predictions) == n_test and res.indices.shape == (50, n_test)
    m = res.metrics.set_index("metric")
    p = res.predictions
    assert m.loc["auroc", "value"] == pytest.approx(roc_auc_score(p["y_true"], p["y_score"]))
    assert m.loc["auprc", "value"] == pytest.approx(
        average_precision_score(p["y_true"], p["y_score"]))
    assert m.loc["auroc", "value"] > 0.7


# ============================================================================================
# Horizon AUROC, Kaplan–Meier, log-rank, PH check
# ============================================================================================
def test_horizon_labels_definition() -> None:
    t = np.array([1.0, 5.0, 5.0, 2.0, 7.0, 7.0])
    e = np.array([1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(horizon_labels(t, e, 5.0),
                                  [1.0, 1.0, np.nan, np.nan, 0.0, 0.0])


def test_horizon_auroc_matches_sklearn_on_the_known_status(strong) -> None:
    _, _, res = strong
    p = res.predictions
    h = 5.0
    case = (p["event"] == 1) & (p["time_years"] <= h)
    known = case | (p["time_years"] > h)
    row = res.metrics.set_index("metric").loc["auroc_5y"]
    assert row["value"] == pytest.approx(roc_auc_score(case[known], p["risk"][known]),
                                         abs=1e-12)
    assert row["n"] == int(known.sum()) and row["n_events"] == int(case.sum())


def test_km_by_quartile_and_logrank_separate_true_risk(strong) -> None:
    _, _, res = strong
    km = res.km
    assert list(km.columns) == list(KM_COLUMNS)
    assert sorted(km["quartile"].unique()) == [1, 2, 3, 4]
    n_test = len(res.predictions)
    for _, g in km.groupby("quartile"):
        assert g["time_years"].iloc[0] == 0 and g["survival"].iloc[0] == 1.0
        assert np.all(np.diff(g["survival"]) <= 1e-12)                # non-increasing
        assert abs(g["at_risk"].iloc[0] - n_test / 4) <= 1            # equal groups
        assert (g["ci_low"] <= g["survival"] + 1e-12).all()
        assert (g["survival"] <= g["ci_high"] + 1e-12).all()
    last = km.groupby("quartile")["survival"].last()
    assert last[4] < last[1]                                          # highest risk dies first
    m = res.metrics.set_index("metric")
    assert m.loc["logrank_p", "value"] < 1e-6
    ph = res.ph_check
    assert set(ph["covariate"]) == set(res.coefficients["covariate"])
    assert ph["p"].between(0, 1).all()


# ============================================================================================
# Rare conditions: NaN with a note, never a crash
# ============================================================================================
def test_zero_test_events_give_nan_metrics_with_a_note() -> None:
    features, table = _cohort(600, beta=1.0, seed=10)
    test_ids = features.loc[features["split"] == "test", "subject_id"]
    is_test = table["subject_id"].isin(test_ids)
    table.loc[is_test, "hf_event"] = 0.0
    table.loc[is_test, "hf_ever"] = 0.0
    res = cox_survival(features, table, "hf", n_components=3, n_boot=10)
    assert list(res.metrics.columns) == list(SURVIVAL_COLUMNS)
    m = res.metrics.set_index("metric")
    for metric in ("c_index", "auroc_5y", "hr_per_sd", "logrank_p"):
        assert math.isnan(m.loc[metric, "value"]) and "test events" in m.loc[metric, "note"]
    assert math.isfinite(m.loc["c_index_train", "value"])
    assert res.indices is None and len(res.coefficients) == 3

    # no training events at all: nothing is fitted
    table.loc[:, "hf_event"] = 0.0
    res = cox_survival(features, table, "hf", n_components=3, n_boot=10)
    assert res.metrics["value"].isna().all() and res.km.empty and res.design is None

    # balanced classification with no test case: NaN rows with a note
    out = balanced_classification(features, table, "hf", seeds=(0, 1), head="logistic")
    assert out["value"].isna().all() and out["note"].str.contains("test").all()
    assert (out["n_cases"] == 0).all()
    nat = natural_prevalence_metrics(features, table, "hf", head="logistic")
    assert nat.metrics["value"].isna().all() and nat.indices is None
