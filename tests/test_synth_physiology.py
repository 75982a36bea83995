"""Tests of the latent-state generator against the schema, published numbers and physiology.

The cohort-level checks use ~5000 seeded subjects; reference numbers are typed in here from the
papers (not read back from the implementation), so a wrong sex mapping or a unit slip fails.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecgcmr.constants import PHENOTYPES
from ecgcmr.synth.physiology import REFERENCE_RANGES, sample_state

# The schema (state_schema.md), written out independently of the module's STATE_KEYS.
SCHEMA_KEYS = {
    "subject_id", "sex", "age_years", "height_cm", "weight_kg", "bmi", "bsa_m2",
    "sbp_mmhg", "smoking", "alcohol", "archetype",
    "lvedv_ml", "lvef", "lvm_g", "rvedv_ml", "rvef",
    "heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms",
    "heart_azimuth_deg", "heart_elevation_deg", "in_af",
}
FLOAT_KEYS = SCHEMA_KEYS - {"subject_id", "sex", "smoking", "alcohol", "archetype", "in_af"}
N_COHORT = 5000
SEED = 2024


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    df = pd.DataFrame([sample_state(rng, f"T{i:05d}") for i in range(N_COHORT)])
    # derived phenotypes, by their definitions (EF in %)
    df["lvesv_ml"] = df["lvedv_ml"] * (1 - df["lvef"])
    df["lvsv_ml"] = df["lvedv_ml"] * df["lvef"]
    df["lvef_pct"] = 100 * df["lvef"]
    df["rvesv_ml"] = df["rvedv_ml"] * (1 - df["rvef"])
    df["rvsv_ml"] = df["rvedv_ml"] * df["rvef"]
    df["rvef_pct"] = 100 * df["rvef"]
    return df


def _corr(a: pd.Series, b: pd.Series) -> float:
    return float(np.corrcoef(a.to_numpy(float), b.to_numpy(float))[0, 1])


# ------------------------------------------------------------------------------------------
# Schema, types, determinism, speed
# ------------------------------------------------------------------------------------------
def test_keys_and_types_follow_the_schema():
    state = sample_state(np.random.default_rng(0), "SUBJ1")
    assert set(state) == SCHEMA_KEYS
    assert state["subject_id"] == "SUBJ1"
    assert type(state["sex"]) is int and state["sex"] in (0, 1)
    assert type(state["smoking"]) is int and state["smoking"] in (0, 1, 2)
    assert type(state["alcohol"]) is int and state["alcohol"] in range(1, 7)
    assert type(state["in_af"]) is bool
    assert state["archetype"] in ("normal", "dilated", "hypertrophic", "conduction")
    for key in FLOAT_KEYS:
        assert type(state[key]) is float and math.isfinite(state[key]), key


def test_same_seed_same_state_and_different_seed_different_state():
    a = [sample_state(np.random.default_rng(7), f"S{i}") for i in range(3)]
    b = [sample_state(np.random.default_rng(7), f"S{i}") for i in range(3)]
    assert a == b
    c = sample_state(np.random.default_rng(8), "S0")
    assert c != a[0]


def test_covariate_distributions(cohort):
    assert 0.45 < cohort["sex"].mean() < 0.51                       # ~48 % men
    assert cohort["age_years"].between(45, 82).all()
    assert 62 < cohort["age_years"].mean() < 66                     # mean ~64 at imaging
    assert 25.5 < cohort["bmi"].mean() < 27.5
    assert 132 < cohort["sbp_mmhg"].mean() < 145                    # UKB mean 138.7 mmHg
    men, women = cohort[cohort.sex == 1], cohort[cohort.sex == 0]
    assert men["height_cm"].mean() - women["height_cm"].mean() > 10
    assert men["sbp_mmhg"].mean() > women["sbp_mmhg"].mean()
    assert (cohort["smoking"] == 2).mean() < 0.10                   # few current smokers
    assert (cohort["smoking"] == 0).mean() > 0.5
    # men drink more often (Fry 2017: 28 % vs 18 % daily at 55-64)
    assert (men["alcohol"] == 1).mean() > (women["alcohol"] == 1).mean() + 0.05
    assert _corr(cohort["age_years"], cohort["sbp_mmhg"]) > 0.1


def test_body_size_is_internally_consistent(cohort):
    h_m = cohort["height_cm"] / 100
    np.testing.assert_allclose(cohort["bmi"], cohort["weight_kg"] / h_m**2, rtol=1e-9)
    # Mosteller 1987, written out here
    np.testing.assert_allclose(cohort["bsa_m2"],
                               np.sqrt(cohort["height_cm"] * cohort["weight_kg"] / 3600),
                               rtol=1e-9)


# ------------------------------------------------------------------------------------------
# Reference ranges
# ------------------------------------------------------------------------------------------
# Numbers typed in from Petersen SE et al., JCMR 2017;19:18 (Abstract; Table 12 SV) — the
# values the generator must reproduce in a healthy subset.
PUBLISHED = {
    ("lvef_pct", 0): 61.0, ("lvef_pct", 1): 58.0,     # Abstract
    ("lvsv_ml", 0): 75.0, ("lvsv_ml", 1): 96.0,       # Table 12
}


def test_reference_table_is_complete_and_cited():
    ref = REFERENCE_RANGES
    assert {"phenotype", "sex", "mean", "sd", "source"} <= set(ref.columns)
    assert set(zip(ref["phenotype"], ref["sex"], strict=True)) == {
        (p, s) for p in PHENOTYPES for s in (0, 1)}
    assert (ref["sd"] > 0).all() and (ref["mean"] > 0).all()
    assert ref["source"].str.len().min() > 10
    for (pheno, sex), value in PUBLISHED.items():
        row = ref[(ref.phenotype == pheno) & (ref.sex == sex)].iloc[0]
        assert row["mean"] == pytest.approx(value)


def test_reference_table_obeys_volume_identities():
    """SV = EDV - ESV and EF = SV / EDV, for both ventricles and sexes."""
    ref = REFERENCE_RANGES.set_index(["phenotype", "sex"])["mean"]
    for side in ("lv", "rv"):
        for sex in (0, 1):
            edv, esv = ref[(f"{side}edv_ml", sex)], ref[(f"{side}esv_ml", sex)]
            sv, ef = ref[(f"{side}sv_ml", sex)], ref[(f"{side}ef_pct", sex)]
            assert edv - esv == pytest.approx(sv, abs=2.0)
            assert 100 * sv / edv == pytest.approx(ef, abs=1.5)
    for pheno in ("lvedv_ml", "lvesv_ml", "lvsv_ml", "lvm_g", "rvedv_ml", "rvesv_ml"):
        assert ref[(pheno, 1)] > 1.15 * ref[(pheno, 0)]      # men's hearts are larger
    assert ref[("lvef_pct", 0)] > ref[("lvef_pct", 1)]       # women's EF is higher


def _reference_like(df: pd.DataFrame) -> pd.DataFrame:
    """Petersen 2017's exclusions, approximately: healthy, BMI < 30, normotensive, never smoked."""
    return df[(df.archetype == "normal") & (df.bmi < 30) & (df.sbp_mmhg < 140)
              & (df.smoking == 0) & (df.age_years <= 74) & ~df.in_af]


@pytest.mark.parametrize("pheno", PHENOTYPES)
def test_healthy_subset_matches_reference_by_sex(cohort, pheno):
    healthy = _reference_like(cohort)
    for sex in (0, 1):
        values = healthy.loc[healthy.sex == sex, pheno]
        assert len(values) > 300
        row = REFERENCE_RANGES[(REFERENCE_RANGES.phenotype == pheno)
                               & (REFERENCE_RANGES.sex == sex)].iloc[0]
        if pheno.endswith("_pct"):
            # the sex gap in EF is 3-4 points: a swapped sex mapping fails this
            assert abs(values.mean() - row["mean"]) < 1.5, (pheno, sex)
        else:
            # the sex gap in volumes/mass is > 25 %: swapped sexes or units fail this
            assert abs(values.mean() / row["mean"] - 1) < 0.06, (pheno, sex)
        assert 0.7 < values.std() / row["sd"] < 1.4, (pheno, sex)


# ------------------------------------------------------------------------------------------
# Physiological correlations (within sex, normal hearts)
# ------------------------------------------------------------------------------------------
def test_structural_correlations_have_the_right_sign(cohort):
    normal = cohort[cohort.archetype == "normal"]
    for sex in (0, 1):
        g = normal[normal.sex == sex]
        assert _corr(g["bsa_m2"], g["lvedv_ml"]) > 0.2       # bigger body, bigger heart
        assert _corr(g["bsa_m2"], g["lvm_g"]) > 0.2
        assert _corr(g["lvef"], g["lvesv_ml"]) < -0.3        # EF and ESV move oppositely
        assert _corr(g["lvedv_ml"], g["rvedv_ml"]) > 0.4     # LV and RV size go together
        assert _corr(g["sbp_mmhg"], g["lvm_g"] / g["bsa_m2"]) > 0.1   # pressure load
        assert _corr(g["age_years"], g["lvedv_ml"] / g["bsa_m2"]) < 0  # smaller with age


def test_archetypes_fractions_and_signatures(cohort):
    frac = cohort["archetype"].value_counts(normalize=True)
    assert 0.08 <= 1 - frac["normal"] <= 0.12
    for name in ("dilated", "hypertrophic", "conduction"):
        assert 0.02 < frac[name] < 0.05, name
    normal = cohort[cohort.archetype == "normal"]
    dil = cohort[cohort.archetype == "dilated"]
    hyp = cohort[cohort.archetype == "hypertrophic"]
    con = cohort[cohort.archetype == "conduction"]
    assert dil["lvef"].between(0.20, 0.45).all()
    assert (dil["lvedv_ml"] / dil["bsa_m2"]).mean() > 1.3 * (normal["lvedv_ml"] / normal["bsa_m2"]).mean()
    assert (hyp["lvm_g"] / hyp["bsa_m2"]).mean() > 1.4 * (normal["lvm_g"] / normal["bsa_m2"]).mean()
    assert (hyp["lvedv_ml"] / hyp["bsa_m2"]).mean() < (normal["lvedv_ml"] / normal["bsa_m2"]).mean()
    assert hyp["lvef"].min() >= 0.6
    assert con["qrs_ms"].between(120, 170).all()


def test_qrs_wider_with_dilation_and_conduction_delay(cohort):
    normal = cohort[cohort.archetype == "normal"]
    assert (normal["qrs_ms"] >= 120).mean() < 0.03
    assert cohort.loc[cohort.archetype == "dilated", "qrs_ms"].mean() > normal["qrs_ms"].mean() + 8
    assert cohort.loc[cohort.archetype == "conduction", "qrs_ms"].mean() > 130
    for sex in (0, 1):
        g = normal[normal.sex == sex]
        assert _corr(g["lvedv_ml"], g["qrs_ms"]) > 0
    # men's QRS is longer (WHI women 85 ms; men ~10 ms longer)
    assert normal.loc[normal.sex == 1, "qrs_ms"].mean() > normal.loc[normal.sex == 0, "qrs_ms"].mean() + 5


def test_heart_rate_higher_with_low_ef(cohort):
    low = cohort.loc[cohort.lvef < 0.45, "heart_rate_bpm"].mean()
    high = cohort.loc[cohort.lvef >= 0.55, "heart_rate_bpm"].mean()
    assert low > high + 3
    assert 60 < cohort["heart_rate_bpm"].median() < 72


def test_qt_follows_heart_rate_and_sex(cohort):
    sinus = cohort[~cohort.in_af & (cohort.archetype == "normal")]
    rr_s = 60 / sinus["heart_rate_bpm"]
    qtc = sinus["qt_ms"] + 154 * (1 - rr_s)  # Framingham (Sagie 1992), written out here
    assert _corr(sinus["heart_rate_bpm"], sinus["qt_ms"]) < -0.3  # QT shortens as HR rises
    # QTc is rate-independent: the correction removes (nearly) all of the HR dependence
    assert abs(_corr(sinus["heart_rate_bpm"], qtc)) < 0.15
    assert qtc[sinus.sex == 0].mean() > qtc[sinus.sex == 1].mean() + 5  # women longer
    assert 395 < qtc.mean() < 430
    pr = sinus["pr_ms"]
    assert 140 < pr.mean() < 185 and (pr < 120).mean() < 0.05


def test_af_and_heart_orientation(cohort):
    assert 0.003 < cohort["in_af"].mean() < 0.03                       # a few %
    old = cohort.loc[cohort.age_years >= 72, "in_af"].mean()
    young = cohort.loc[cohort.age_years < 60, "in_af"].mean()
    assert old > 2 * young
    # a more horizontal heart with higher BMI and age
    assert _corr(cohort["bmi"], cohort["heart_elevation_deg"]) < -0.2
    assert _corr(cohort["age_years"], cohort["heart_elevation_deg"]) < 0


def test_everything_within_physiological_bounds(cohort):
    assert cohort["lvef"].between(0.10, 0.85).all()
    assert cohort["rvef"].between(0.10, 0.85).all()
    assert (cohort["lvesv_ml"] > 0).all() and (cohort["rvesv_ml"] > 0).all()
    assert cohort["lvedv_ml"].between(40, 500).all()
    assert cohort["rvedv_ml"].between(40, 500).all()
    assert cohort["lvm_g"].between(30, 450).all()
    assert cohort["heart_rate_bpm"].between(30, 180).all()
    assert cohort["qrs_ms"].between(50, 220).all()
    assert cohort["pr_ms"].between(80, 350).all()
    assert cohort["qt_ms"].between(240, 650).all()
    assert cohort["bmi"].between(14, 60).all()
    assert cohort["sbp_mmhg"].between(70, 250).all()
    assert cohort["heart_elevation_deg"].between(-30, 90).all()
    assert cohort["heart_azimuth_deg"].between(0, 90).all()
