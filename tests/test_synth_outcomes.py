"""Tests of the outcome generator: schema, logic, prevalences, monotone hazards, censoring."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ecgcmr.constants import CONDITIONS
from ecgcmr.synth.outcomes import (
    gompertz_death_time,
    linear_predictor,
    risk_features,
    sample_outcomes,
    weibull_event_time,
)
from ecgcmr.synth.physiology import sample_state

N_COHORT = 10_000
SEED = 99
HORIZON_YEARS = 9.0          # imaging 2014-2020, records to ~2023
MIN_ADMIN_FOLLOW_UP = 3.0

# Plausible "ever diagnosed" prevalence bands in the UK Biobank imaging cohort.
EVER_BANDS = {
    "cad": (0.05, 0.09),
    "af": (0.03, 0.065),
    "hf": (0.005, 0.016),
    "cardiomyopathy": (0.002, 0.008),
    "mi": (0.014, 0.032),
    "cardiac_arrest": (0.0008, 0.005),
}


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng_state = np.random.default_rng(SEED)
    rng_out = np.random.default_rng(SEED + 1)
    states = [sample_state(rng_state, f"T{i:05d}") for i in range(N_COHORT)]
    outcomes = [sample_outcomes(s, rng_out) for s in states]
    return pd.concat([pd.DataFrame(states), pd.DataFrame(outcomes)], axis=1)


def _state(**overrides: object) -> dict[str, object]:
    state = sample_state(np.random.default_rng(0), "FIXED")
    state.update(overrides)
    return state


# ------------------------------------------------------------------------------------------
# Schema and determinism
# ------------------------------------------------------------------------------------------
def test_keys_and_types():
    out = sample_outcomes(_state(), np.random.default_rng(1))
    expected = {c + s for c in CONDITIONS for s in ("_ever", "_event", "_time_years")}
    assert set(out) == expected
    for c in CONDITIONS:
        assert type(out[f"{c}_ever"]) is int and out[f"{c}_ever"] in (0, 1)
        assert isinstance(out[f"{c}_event"], float)
        assert isinstance(out[f"{c}_time_years"], float)


def test_deterministic_for_a_seed():
    state = _state()
    a = sample_outcomes(state, np.random.default_rng(5))
    b = sample_outcomes(state, np.random.default_rng(5))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]) or (math.isnan(a[k]) and math.isnan(b[k])), k
    others = [sample_outcomes(state, np.random.default_rng(s)) for s in range(6, 12)]
    assert any(o["cad_time_years"] != a["cad_time_years"] for o in others)


# ------------------------------------------------------------------------------------------
# Logic of the labels
# ------------------------------------------------------------------------------------------
def test_ever_event_and_time_are_consistent(cohort):
    for c in CONDITIONS:
        ever, event, time = cohort[f"{c}_ever"], cohort[f"{c}_event"], cohort[f"{c}_time_years"]
        prevalent = event.isna()
        assert (time.isna() == prevalent).all(), c
        assert (ever[prevalent] == 1).all(), c                 # prevalent -> ever
        assert (ever[~prevalent] == event[~prevalent]).all(), c  # otherwise ever == incident
        assert set(event.dropna().unique()) <= {0.0, 1.0}


def test_follow_up_times_within_horizon(cohort):
    for c in CONDITIONS:
        t = cohort[f"{c}_time_years"].dropna()
        assert (t > 0).all() and (t <= HORIZON_YEARS).all(), c
        censored = cohort.loc[cohort[f"{c}_event"] == 0, f"{c}_time_years"]
        # administrative censoring starts at 3 years; earlier only for deaths (a few %)
        assert (censored < MIN_ADMIN_FOLLOW_UP).mean() < 0.08, c
        assert censored.max() > 8.5 and censored.median() > 4.5, c


def test_mi_implies_cad(cohort):
    assert (cohort.loc[cohort.mi_ever == 1, "cad_ever"] == 1).all()
    # an MI present at imaging means CAD was present at imaging
    assert cohort.loc[cohort.mi_event.isna(), "cad_event"].isna().all()
    # an incident MI in someone without CAD at imaging is an incident CAD by the same time
    inc = cohort[(cohort.mi_event == 1) & cohort.cad_event.notna()]
    assert len(inc) > 10
    assert (inc["cad_event"] == 1).all()
    assert (inc["cad_time_years"] <= inc["mi_time_years"] + 1e-12).all()


def test_in_af_implies_prevalent_af(cohort):
    in_af = cohort[cohort.in_af]
    assert len(in_af) > 20
    assert (in_af["af_ever"] == 1).all() and in_af["af_event"].isna().all()


# ------------------------------------------------------------------------------------------
# Prevalences and hazards
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
def test_ever_prevalence_in_plausible_band(cohort, condition):
    lo, hi = EVER_BANDS[condition]
    assert lo <= cohort[f"{condition}_ever"].mean() <= hi
    # both prevalent cases and incident events occur
    assert cohort[f"{condition}_event"].isna().sum() > 0
    assert (cohort[f"{condition}_event"] == 1).sum() > 0


def _rate(df: pd.DataFrame, c: str) -> float:
    """Incident events per person-year among those at risk at imaging."""
    at_risk = df[df[f"{c}_event"].notna()]
    return at_risk[f"{c}_event"].sum() / at_risk[f"{c}_time_years"].sum()


def test_heart_failure_rate_rises_as_ef_falls(cohort):
    low = _rate(cohort[cohort.lvef < 0.45], "hf")
    mid = _rate(cohort[(cohort.lvef >= 0.45) & (cohort.lvef < 0.55)], "hf")
    high = _rate(cohort[cohort.lvef >= 0.55], "hf")
    assert low > 3 * high and low > mid
    assert mid > high


def test_rates_rise_with_age_and_are_higher_in_men(cohort):
    old, young = cohort[cohort.age_years >= 70], cohort[cohort.age_years < 60]
    assert _rate(old, "af") > 2 * _rate(young, "af")
    assert _rate(old, "cad") > 1.5 * _rate(young, "cad")
    men, women = cohort[cohort.sex == 1], cohort[cohort.sex == 0]
    assert _rate(men, "mi") > 1.5 * _rate(women, "mi")
    assert men["cad_ever"].mean() > women["cad_ever"].mean()


def test_cardiomyopathy_concentrated_in_abnormal_hearts(cohort):
    by = cohort.groupby("archetype")["cardiomyopathy_ever"].mean()
    assert by["dilated"] > 20 * by["normal"]
    assert by["hypertrophic"] > 5 * by["normal"]
    assert cohort.groupby("archetype")["hf_ever"].mean()["dilated"] > 5 * by.get("normal", 0)


def test_hazard_monotone_in_single_features():
    """Same subject, one risk factor made worse: the log-hazard rises."""
    base = _state(age_years=65.0, sex=0, smoking=0, sbp_mmhg=130.0, bmi=26.0, alcohol=3,
                  archetype="normal", in_af=False, lvef=0.60, lvm_g=80.0, bsa_m2=1.8,
                  qrs_ms=90.0)
    none = {c: False for c in CONDITIONS}

    def lp(state: dict, c: str) -> float:
        return linear_predictor(c, risk_features(state), none)

    worse = {
        "age_years": 75.0, "sex": 1, "smoking": 2, "sbp_mmhg": 170.0, "bmi": 34.0,
        "lvef": 0.35, "lvm_g": 130.0, "qrs_ms": 140.0,
    }
    for key, value in worse.items():
        for c in ("hf", "cardiac_arrest"):
            assert lp({**base, key: value}, c) > lp(base, c), (key, c)
    for key in ("age_years", "sex", "smoking", "sbp_mmhg", "bmi"):
        for c in ("cad", "mi", "af"):
            assert lp({**base, key: worse[key]}, c) > lp(base, c), (key, c)
    assert lp({**base, "in_af": True}, "hf") > lp(base, "hf")
    for arch in ("dilated", "hypertrophic"):
        assert lp({**base, "archetype": arch}, "cardiomyopathy") > lp(base, "cardiomyopathy") + 2
    # prevalent disease raises the risk of what follows from it
    assert (linear_predictor("hf", risk_features(base), {**none, "mi": True})
            > linear_predictor("hf", risk_features(base), none))


def test_simulated_event_fractions_follow_the_hazard():
    """Many draws for one subject: low EF gives more HF, older age more AF."""
    base = _state(age_years=65.0, sex=1, smoking=0, sbp_mmhg=130.0, bmi=26.0,
                  archetype="normal", in_af=False, lvef=0.60, qrs_ms=95.0)

    def incident(state: dict, c: str, n: int = 2500) -> float:
        rng = np.random.default_rng(123)
        outs = [sample_outcomes(state, rng) for _ in range(n)]
        return float(np.nanmean([o[f"{c}_event"] for o in outs]))

    assert incident({**base, "lvef": 0.30}, "hf") > 5 * incident(base, "hf")
    assert incident({**base, "age_years": 78.0}, "af") > 1.5 * incident(base, "af")


# ------------------------------------------------------------------------------------------
# The time samplers against scipy's distributions
# ------------------------------------------------------------------------------------------
def test_weibull_event_time_matches_scipy():
    scale, shape, log_hr = 0.02, 1.2, 0.7
    draws = np.random.default_rng(3).standard_exponential(20_000)
    times = np.array([weibull_event_time(e, scale, shape, log_hr) for e in draws])
    # H(t) = scale * e^lp * t^shape  <=>  Weibull with c = shape, scale = (scale e^lp)^(-1/c)
    dist = stats.weibull_min(c=shape, scale=(scale * math.exp(log_hr)) ** (-1 / shape))
    assert stats.kstest(times, dist.cdf).pvalue > 0.01


def test_gompertz_death_time_matches_scipy():
    rate, gompertz = 0.01, math.log(2) / 8
    draws = np.random.default_rng(4).standard_exponential(20_000)
    times = np.array([gompertz_death_time(e, rate, gompertz) for e in draws])
    # hazard rate*e^(g t): survival exp(-(rate/g)(e^(g t) - 1)) = scipy gompertz(c=rate/g, scale=1/g)
    dist = stats.gompertz(c=rate / gompertz, scale=1 / gompertz)
    assert stats.kstest(times, dist.cdf).pvalue > 0.01
