"""The synthetic 12-lead ECG: exact lead relations, the state's rhythm and intervals, clinical
norms, and structure leaving a physically sensible (partial) trace.

The intervals are checked against the latent state (the truth the generator was given), the
amplitudes against published clinical norms, and the structural effects by paired
experiments: the same subject and random stream with one state variable changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest

from ecgcmr.constants import LEADS
from ecgcmr.ecg_measurements import measure_ecg
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import ELECTRODES, electrodes_to_leads, simulate_ecg
from ecgcmr.synth.physiology import sample_state

FS = 500
N_COHORT = 200
L = {name: i for i, name in enumerate(LEADS)}


def base_state(**changes: object) -> dict[str, object]:
    """A hand-made healthy 60-year-old man (state schema), with optional changes."""
    state: dict[str, object] = {
        "subject_id": "HAND01", "sex": 1, "age_years": 60.0, "height_cm": 176.0,
        "weight_kg": 80.0, "bmi": 80.0 / 1.76**2, "bsa_m2": 1.98, "sbp_mmhg": 130.0,
        "smoking": 0, "alcohol": 3, "archetype": "normal", "lvedv_ml": 160.0, "lvef": 0.60,
        "lvm_g": 105.0, "rvedv_ml": 170.0, "rvef": 0.55, "heart_rate_bpm": 65.0,
        "pr_ms": 160.0, "qrs_ms": 95.0, "qt_ms": 400.0, "heart_azimuth_deg": 45.0,
        "heart_elevation_deg": 45.0, "in_af": False,
    }
    state.update(changes)
    return state


def ecg_of(state: Mapping[str, object], seed: int) -> np.ndarray:
    return simulate_ecg(state, np.random.default_rng(seed), fs=FS)


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """State and measurements of N_COHORT subjects drawn by the physiology module."""
    rows = []
    for i in range(N_COHORT):
        state = sample_state(np.random.default_rng([2024, i]), f"T{i:04d}")
        m = measure_ecg(ecg_of(state, 10_000 + i), fs=FS)
        rows.append({**state, **{f"m_{k}": v for k, v in m.items()}})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def normals(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[(cohort["archetype"] == "normal") & ~cohort["in_af"]]


def states_of(archetype: str, n: int, seed: int) -> list[dict[str, object]]:
    """The first ``n`` states of an archetype drawn by the physiology module."""
    out, i = [], 0
    while len(out) < n:
        s = sample_state(np.random.default_rng([seed, i]), f"A{i:05d}")
        if s["archetype"] == archetype and not s["in_af"]:
            out.append(s)
        i += 1
    return out


def qrs_voltage(m: Mapping[str, float]) -> float:
    """Sum over the 12 leads of the QRS peak-to-peak amplitude (mV)."""
    return float(sum(m[f"r_{k.lower()}_mv"] + m[f"s_{k.lower()}_mv"] for k in LEADS))


# ============================================================================================
# Output contract
# ============================================================================================
def test_shape_dtype_finite() -> None:
    ecg = ecg_of(base_state(), 0)
    assert ecg.shape == (12, 5000)
    assert ecg.dtype == np.float64
    assert np.isfinite(ecg).all()
    short = simulate_ecg(base_state(), np.random.default_rng(0), fs=250, duration_s=4.0)
    assert short.shape == (12, 1000)
    # physiological scale: a few mV at most, not flat
    assert 0.3 < np.abs(ecg).max() < 8.0
    assert (ecg.std(axis=1) > 0.01).all()


def test_deterministic_for_a_seed() -> None:
    a, b = ecg_of(base_state(), 7), ecg_of(base_state(), 7)
    assert np.array_equal(a, b)
    assert not np.allclose(a, ecg_of(base_state(), 8))


def test_missing_state_keys_raise_data_error() -> None:
    state = base_state()
    del state["qrs_ms"]
    with pytest.raises(DataError, match="qrs_ms"):
        ecg_of(state, 0)


# ============================================================================================
# Lead relations (Einthoven, Goldberger) hold exactly, noise included
# ============================================================================================
@pytest.mark.parametrize("changes", [{}, {"in_af": True}, {"archetype": "conduction",
                                                          "qrs_ms": 150.0}])
def test_limb_lead_relations_exact(changes: dict[str, object]) -> None:
    ecg = ecg_of(base_state(**changes), 3)
    i, ii, iii = ecg[L["I"]], ecg[L["II"]], ecg[L["III"]]
    avr, avl, avf = ecg[L["aVR"]], ecg[L["aVL"]], ecg[L["aVF"]]
    tol = 1e-9
    assert np.abs(iii - (ii - i)).max() < tol                 # Einthoven
    assert np.abs(avr - (-(i + ii) / 2)).max() < tol          # Goldberger
    assert np.abs(avl - (i - ii / 2)).max() < tol
    assert np.abs(avf - (ii - i / 2)).max() < tol
    assert np.abs(avr + avl + avf).max() < tol


def test_leads_from_electrodes_follow_the_textbook_formulas() -> None:
    rng = np.random.default_rng(1)
    phi = dict(zip(ELECTRODES, rng.normal(size=(9, 50)), strict=True))
    leads = dict(zip(LEADS, electrodes_to_leads(np.stack(list(phi.values()))), strict=True))
    wct = (phi["RA"] + phi["LA"] + phi["LL"]) / 3
    expected = {
        "I": phi["LA"] - phi["RA"], "II": phi["LL"] - phi["RA"], "III": phi["LL"] - phi["LA"],
        "aVR": phi["RA"] - (phi["LA"] + phi["LL"]) / 2,
        "aVL": phi["LA"] - (phi["RA"] + phi["LL"]) / 2,
        "aVF": phi["LL"] - (phi["RA"] + phi["LA"]) / 2,
        **{f"V{k}": phi[f"V{k}"] - wct for k in range(1, 7)},
    }
    for name in LEADS:
        np.testing.assert_allclose(leads[name], expected[name], atol=1e-12, err_msg=name)


def test_noise_is_present_and_common_to_the_limb_leads() -> None:
    # noise lives at the electrodes: two records of one state differ, yet both obey Einthoven
    a, b = ecg_of(base_state(), 1), ecg_of(base_state(), 2)
    residual = a - b
    assert residual.std() > 0.005
    assert np.abs(residual[L["III"]] - (residual[L["II"]] - residual[L["I"]])).max() < 1e-9


# ============================================================================================
# Rhythm and intervals: the state's, as measured by standard ECG measurements
# ============================================================================================
def test_measured_heart_rate_is_the_state_rate(cohort: pd.DataFrame) -> None:
    err = (cohort["m_hr_bpm"] - cohort["heart_rate_bpm"]).abs()
    assert err.median() < 0.5, err.describe()
    assert (err < 2.0).mean() >= 0.98, cohort.loc[err >= 2.0, ["heart_rate_bpm", "m_hr_bpm"]]


def test_measured_intervals_match_the_state(cohort: pd.DataFrame) -> None:
    sinus = cohort[~cohort["in_af"]]
    for key, tol in (("qrs_ms", 15.0), ("pr_ms", 20.0), ("qt_ms", 20.0)):
        data = sinus if key == "pr_ms" else cohort
        err = (data[f"m_{key}"] - data[key]).abs()
        assert err.median() < tol / 2, (key, err.describe())
        assert (err < tol).mean() >= 0.9, (key, err.describe())


def test_intervals_fall_in_clinical_ranges(cohort: pd.DataFrame) -> None:
    ranges = {"m_hr_bpm": (40, 120), "m_pr_ms": (100, 260), "m_qrs_ms": (60, 180),
              "m_qt_ms": (300, 520)}
    for key, (lo, hi) in ranges.items():
        values = cohort[key].dropna()
        assert len(values) >= 0.9 * len(cohort), key
        assert values.between(lo, hi).mean() >= 0.95, (key, values.describe())


def test_sinus_rhythm_is_nearly_regular_and_af_is_not() -> None:
    sinus = measure_ecg(ecg_of(base_state(age_years=70.0), 5), fs=FS)
    af = measure_ecg(ecg_of(base_state(age_years=70.0, in_af=True), 5), fs=FS)
    rr_ms = 60_000.0 / 65.0
    assert sinus["rr_sd_ms"] < 0.06 * rr_ms          # respiratory sinus arrhythmia: a few %
    assert af["rr_sd_ms"] > 0.10 * rr_ms             # irregularly irregular
    assert np.isfinite(sinus["pr_ms"]) and np.isnan(af["pr_ms"])  # no P wave in AF


def test_af_subjects_have_no_p_wave(cohort: pd.DataFrame) -> None:
    af_states = [base_state(in_af=True, heart_rate_bpm=hr) for hr in (60.0, 80.0, 100.0)]
    for i, state in enumerate(af_states):
        assert np.isnan(measure_ecg(ecg_of(state, 100 + i), fs=FS)["pr_ms"])
    sinus = cohort[~cohort["in_af"]]
    assert sinus["m_pr_ms"].notna().mean() >= 0.95


# ============================================================================================
# Clinical amplitude and axis norms in normal subjects
# ============================================================================================
def test_frontal_axis_mostly_normal(normals: pd.DataFrame) -> None:
    # normal limits of the frontal QRS axis: -30..+90 deg (Rijnbeek 2014; Surawicz 2009)
    axis = normals["m_qrs_axis_deg"]
    assert axis.between(-30, 90).mean() >= 0.9, axis.describe()
    assert 0 < axis.median() < 75


def test_voltages_match_clinical_norms(normals: pd.DataFrame) -> None:
    r_ii = normals["m_r_ii_mv"]
    assert 0.5 <= r_ii.median() <= 1.5, r_ii.describe()
    sl = normals["m_sokolow_lyon_mv"]  # S V1 + max(R V5, R V6)
    assert 1.5 <= sl.median() <= 3.5, sl.describe()
    assert sl.between(1.0, 4.5).mean() >= 0.85, sl.describe()
    assert (sl > 3.5).mean() <= 0.2              # the LVH threshold (Sokolow & Lyon 1949)
    p_ii = normals["m_p_ii_mv"].dropna()
    assert 0.08 <= p_ii.median() <= 0.25, p_ii.describe()
    t_v5 = normals["m_t_v5_mv"]
    assert 0.1 <= t_v5.median() <= 0.5, t_v5.describe()
    assert (t_v5 > 0).mean() >= 0.85             # upright lateral T in normals


def test_r_wave_progression(normals: pd.DataFrame) -> None:
    ratio = [(normals[f"m_r_v{k}_mv"] / (normals[f"m_r_v{k}_mv"] + normals[f"m_s_v{k}_mv"])
              ).median() for k in range(1, 7)]
    assert ratio[0] < 0.35                        # rS in V1
    assert ratio[5] > 0.7                         # qR/Rs in V6
    assert ratio[1] < ratio[2] < ratio[3] < ratio[4]
    assert ratio[1] < 0.5 < ratio[3]              # transition around V3-V4


def test_sokolow_higher_in_hypertrophy() -> None:
    measured = {}
    for archetype in ("normal", "hypertrophic"):
        states = states_of(archetype, 30, seed=77)
        measured[archetype] = np.array([
            measure_ecg(ecg_of(s, 500 + i), fs=FS)["sokolow_lyon_mv"]
            for i, s in enumerate(states)])
    normal, lvh = measured["normal"], measured["hypertrophic"]
    assert lvh.mean() > 1.25 * normal.mean(), (normal.mean(), lvh.mean())
    assert (lvh > 3.5).mean() > 2 * (normal > 3.5).mean()
    assert (lvh > 3.5).mean() >= 0.25  # voltage criteria: specific, not very sensitive


# ============================================================================================
# Structure leaves a physically sensible trace (paired experiments)
# ============================================================================================
def _sweep(param: str, values: list[float], n_subjects: int = 25, seed: int = 31,
           derived: dict[str, object] | None = None) -> np.ndarray:
    """(n_subjects, len(values)) QRS voltage with one state variable swept, rest fixed."""
    states = states_of("normal", n_subjects, seed)
    out = np.empty((n_subjects, len(values)))
    for i, state in enumerate(states):
        for j, v in enumerate(values):
            changed = dict(state, **{param: v})
            if param == "bmi":  # keep the body consistent: weight follows BMI at fixed height
                changed["weight_kg"] = v * (float(state["height_cm"]) / 100.0) ** 2
            out[i, j] = qrs_voltage(measure_ecg(ecg_of(changed, 900 + i), fs=FS))
    return out


def test_qrs_voltage_falls_with_bmi_at_fixed_mass() -> None:
    bmis = [20.0, 25.0, 30.0, 35.0, 40.0]
    v = _sweep("bmi", bmis)
    medians = np.median(v, axis=0)
    assert np.all(np.diff(medians) < 0), medians
    assert (v[:, -1] < v[:, 0]).mean() >= 0.9
    # a partial, not a dramatic effect: obese chests still give readable voltages
    assert 0.4 < medians[-1] / medians[0] < 0.95, medians


def test_qrs_voltage_grows_with_lv_mass() -> None:
    masses = [70.0, 100.0, 140.0, 200.0]
    v = _sweep("lvm_g", masses)
    medians = np.median(v, axis=0)
    assert np.all(np.diff(medians) > 0), medians
    assert (v[:, -1] > v[:, 0]).mean() >= 0.9


def test_women_have_smaller_precordial_voltages_at_equal_mass() -> None:
    states = states_of("normal", 25, seed=41)
    ratio = []
    for i, s in enumerate(states):
        v = {sex: measure_ecg(ecg_of(dict(s, sex=sex), 300 + i), fs=FS) for sex in (0, 1)}
        lateral = [sum(v[sex][f"r_v{k}_mv"] for k in (4, 5, 6)) for sex in (0, 1)]
        ratio.append(lateral[0] / lateral[1])
    assert np.median(ratio) < 0.95  # breast tissue over V4-V6


def test_electrical_axis_follows_the_anatomical_axis() -> None:
    states = states_of("normal", 20, seed=51)
    turned = 0
    for i, s in enumerate(states):
        axis = [measure_ecg(ecg_of(dict(s, heart_elevation_deg=el), 700 + i), fs=FS)
                ["qrs_axis_deg"] for el in (25.0, 65.0)]
        turned += axis[1] > axis[0] + 10  # a more vertical heart, a more vertical axis
    assert turned >= 18


def test_conduction_archetype_looks_like_lbbb() -> None:
    states = [base_state(archetype="conduction", qrs_ms=q, lvef=0.5) for q in (130.0, 150.0,
                                                                               165.0)]
    for i, s in enumerate(states):
        m = measure_ecg(ecg_of(s, 60 + i), fs=FS)
        assert m["qrs_ms"] >= 120, m["qrs_ms"]
        assert m["s_v1_mv"] > 2 * m["r_v1_mv"]         # deep S (QS) in V1
        assert m["r_v6_mv"] > 2 * m["s_v6_mv"]         # broad R in V6
        assert m["r_i_mv"] > m["s_i_mv"]
        assert m["t_v6_mv"] < 0 and m["t_i_mv"] < 0    # discordant T laterally


def test_hypertrophy_with_strain_flattens_or_inverts_lateral_t() -> None:
    states = states_of("normal", 20, seed=61)
    lower = 0
    for i, s in enumerate(states):
        t = [measure_ecg(ecg_of(dict(s, **changes), 800 + i), fs=FS)["t_v6_mv"]
             for changes in ({}, {"archetype": "hypertrophic",
                                  "lvm_g": 2.0 * float(s["lvm_g"])})]
        lower += t[1] < t[0]
    assert lower >= 17


# ============================================================================================
# Speed
# ============================================================================================
