"""The control knob of the dual-phase claim: at systolic coupling 0 the ECG carries nothing of
the subject's systolic function (LVEF, so ES anatomy) beyond ED anatomy and the other state
variables; at 1 the world is the default one, bit for bit; above 1 the systolic signal grows.

On the generator before the knob existed, LVEF moved the heart rate (the partial F test below
gives p < 1e-6) and the T waves, so the first two tests failed there.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from ecgcmr.synth.cohort import CohortSpec
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import ARCHETYPES, sample_state

N_STATES = 4000


def states(coupling: float, n: int = N_STATES, seed: int = 3) -> pd.DataFrame:
    return pd.DataFrame([sample_state(np.random.default_rng([seed, i]), f"S{i}",
                                      systolic_coupling=coupling) for i in range(n)])


def partial_f_pvalue(df: pd.DataFrame) -> float:
    """p of the F test that LVEF terms add nothing to log heart rate once ED anatomy and the
    other state variables are in the model (all of log HR's inputs enter linearly)."""
    base = pd.DataFrame({
        "log_lvedv": np.log(df["lvedv_ml"]), "log_lvm": np.log(df["lvm_g"]),
        "log_rvedv": np.log(df["rvedv_ml"]), "age": df["age_years"], "sex": df["sex"],
        "bmi": df["bmi"], "log_bsa": np.log(df["bsa_m2"]), "sbp": df["sbp_mmhg"],
        "smoker": (df["smoking"] == 2).astype(float), "in_af": df["in_af"].astype(float),
        "sex_x_bmi": df["sex"] * df["bmi"],
        **{f"arch_{a}": (df["archetype"] == a).astype(float) for a in ARCHETYPES[1:]},
    })
    ef = pd.DataFrame({"log_ef": np.log(df["lvef"]),
                       "ef_below_50": np.maximum(0.0, 0.5 - df["lvef"])})
    y = np.log(df["heart_rate_bpm"])
    # states at the heart-rate bounds are clipped: leave them out of a linear test
    keep = (df["heart_rate_bpm"] > 38.5) & (df["heart_rate_bpm"] < 149.5)
    small = sm.OLS(y[keep], sm.add_constant(base[keep])).fit()
    full = sm.OLS(y[keep], sm.add_constant(pd.concat([base, ef], axis=1)[keep])).fit()
    return float(full.compare_f_test(small)[1])


def test_at_zero_lvef_does_not_move_the_heart_rate_given_ed_anatomy() -> None:
    assert partial_f_pvalue(states(0.0)) > 0.01
    assert partial_f_pvalue(states(1.0)) < 1e-6     # the default world: it does


def test_at_zero_the_ecg_is_the_same_whatever_the_lvef() -> None:
    changed = 0
    for i in range(40):
        for coupling in (0.0, 1.0):
            state = sample_state(np.random.default_rng([5, i]), f"S{i}",
                                 systolic_coupling=coupling)
            other = {**state, "lvef": 0.2 if state["lvef"] > 0.3 else 0.6}
            a, b = (simulate_ecg(s, np.random.default_rng([6, i]), systolic_coupling=coupling)
                    for s in (state, other))
            if coupling == 0.0:
                np.testing.assert_array_equal(a, b)
            else:
                changed += not np.array_equal(a, b)
    assert changed == 40                               # at 1 the T waves follow low EF


def test_coupling_one_is_the_default_world_bit_for_bit() -> None:
    for i in range(20):
        default = sample_state(np.random.default_rng([8, i]), f"S{i}")
        explicit = sample_state(np.random.default_rng([8, i]), f"S{i}", systolic_coupling=1.0)
        assert default == explicit
        np.testing.assert_array_equal(simulate_ecg(default, np.random.default_rng(i)),
                                      simulate_ecg(default, np.random.default_rng(i),
                                                   systolic_coupling=1.0))
    assert "systolic_coupling" not in CohortSpec(n_subjects=2).to_json()   # cohort.json as before
    assert CohortSpec(n_subjects=2, systolic_coupling=0.0).to_json()["systolic_coupling"] == 0.0


def test_a_stronger_coupling_ties_heart_rate_closer_to_lvef() -> None:
    def r2(coupling: float) -> float:
        df = states(coupling, n=2000)
        x = sm.add_constant(np.column_stack([np.log(df["lvef"]), np.log(df["lvedv_ml"])]))
        return float(sm.OLS(np.log(df["heart_rate_bpm"]), x).fit().rsquared)

    assert r2(0.0) < r2(1.0) < r2(3.0)


def test_the_other_draws_do_not_depend_on_the_coupling() -> None:
    a = sample_state(np.random.default_rng(1), "S", systolic_coupling=0.0)
    b = sample_state(np.random.default_rng(1), "S", systolic_coupling=3.0)
    assert {k: v for k, v in a.items() if k != "heart_rate_bpm" and not k.endswith("_ms")} == \
        {k: v for k, v in b.items() if k != "heart_rate_bpm" and not k.endswith("_ms")}


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan])
def test_a_negative_or_non_finite_coupling_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="systolic_coupling"):
        CohortSpec(n_subjects=2, systolic_coupling=bad)


def test_at_zero_the_archetypes_leave_ef_alone() -> None:
    """The ECG shows the archetypes, so an archetype that set the EF would carry systolic
    information to the ECG around ED anatomy: at 0, EF does not depend on the archetype."""
    def archetype_pvalue(df: pd.DataFrame, column: str) -> float:
        dummies = pd.DataFrame({f"arch_{a}": (df["archetype"] == a).astype(float)
                                for a in ARCHETYPES[1:]})
        base = sm.add_constant(df[["sex"]].astype(float))
        full = sm.add_constant(pd.concat([df[["sex"]].astype(float), dummies], axis=1))
        return float(sm.OLS(df[column], full).fit().compare_f_test(
            sm.OLS(df[column], base).fit())[1])

    zero, one = states(0.0), states(1.0)
    for column in ("lvef", "rvef"):
        assert archetype_pvalue(zero, column) > 0.01
        assert archetype_pvalue(one, column) < 1e-6
