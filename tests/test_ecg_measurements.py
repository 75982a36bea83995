"""Standard ECG measurements on hand-made signals whose answers are known by construction.

The test signals are built here, independently of the synthetic-cohort generator: raised-cosine
(Hann) waves at known times, limb leads projected from a frontal-plane vector by Einthoven's
triangle, precordial leads with known R and S amplitudes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ecgcmr.constants import LEADS
from ecgcmr.ecg_measurements import FEATURE_NAMES, detect_r_peaks, measure_ecg, measure_many
from ecgcmr.errors import DataError

L = {name: i for i, name in enumerate(LEADS)}
# (R, S) of the precordial leads and the fraction of the QRS the R wave takes
PRECORDIAL_RS = {"V1": (0.3, 1.0), "V2": (0.5, 1.5), "V3": (0.8, 0.8), "V4": (1.3, 0.4),
                 "V5": (1.4, 0.2), "V6": (1.1, 0.1)}


def hann(t: np.ndarray, start: float, width: float) -> np.ndarray:
    u = (t - start) / width
    return np.where((u > 0) & (u < 1), np.sin(np.pi * u) ** 2, 0.0)


def limb_leads(i: np.ndarray, ii: np.ndarray) -> dict[str, np.ndarray]:
    """The six limb leads from I and II (Einthoven, Goldberger)."""
    return {"I": i, "II": ii, "III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2,
            "aVF": ii - i / 2}


def beat_train(*, fs: float = 500, duration_s: float = 10.0, rr_s: float | list[float] = 0.8,
               qrs_s: float = 0.10, pr_s: float | None = 0.16, p_s: float = 0.09,
               t_start_s: float = 0.20, t_width_s: float = 0.22, qrs_axis_deg: float = 30.0,
               first_s: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """((12, T) mV, QRS onset times in s) of a regular (or given-RR) beat train.

    QRS: unit frontal vector at ``qrs_axis_deg``; T: 0.3 mV-equivalent at +45 deg, starting
    ``t_start_s`` after QRS onset, ``t_width_s`` long; P (if ``pr_s``): 0.15 at +60 deg,
    starting ``pr_s`` before QRS onset.
    """
    n = int(round(fs * duration_s))
    t = np.arange(n) / fs
    rrs = [rr_s] * 100 if np.isscalar(rr_s) else list(rr_s)
    onsets = [first_s]
    for rr in rrs:
        if onsets[-1] + rr > duration_s - 0.7:  # whole beats only (T wave inside the strip)
            break
        onsets.append(onsets[-1] + rr)
    qrs = sum(hann(t, on, qrs_s) for on in onsets)
    twave = sum(hann(t, on + t_start_s, t_width_s) for on in onsets)
    waves = [(qrs, 1.0, qrs_axis_deg), (twave, 0.3, 45.0)]
    if pr_s is not None:
        waves.append((sum(hann(t, on - pr_s, p_s) for on in onsets), 0.15, 60.0))
    lead_i = sum(a * math.cos(math.radians(ang)) * w for w, a, ang in waves)
    lead_ii = sum(a * math.cos(math.radians(ang - 60.0)) * w for w, a, ang in waves)
    leads = limb_leads(lead_i, lead_ii)
    for k, (name, (r, s)) in enumerate(PRECORDIAL_RS.items()):
        frac = 1 / 3 if k < 3 else 2 / 3
        v = sum(r * hann(t, on, frac * qrs_s) - s * hann(t, on + frac * qrs_s,
                                                          (1 - frac) * qrs_s)
                for on in onsets)
        leads[name] = v + 0.2 * twave
    return np.stack([leads[name] for name in LEADS]), np.array(onsets)


def tangent_t_end(t_start: float, width: float) -> float:
    """Tangent-method end of a Hann T wave: steepest descent at 3/4 of it, slope -pi/width.

    The tangent through (3w/4, 1/2) with slope -pi/w meets zero at w (3/4 + 1/(2 pi)).
    """
    return t_start + width * (0.75 + 1.0 / (2.0 * math.pi))


# ============================================================================================
# Known answers
# ============================================================================================
def test_rate_and_intervals_of_a_clean_beat_train() -> None:
    ecg, onsets = beat_train()
    m = measure_ecg(ecg, fs=500)
    assert m["n_beats"] == len(onsets)
    assert m["hr_bpm"] == pytest.approx(75.0, abs=0.3)
    assert m["rr_sd_ms"] < 3.0
    assert m["qrs_ms"] == pytest.approx(100.0, abs=10.0)
    assert m["pr_ms"] == pytest.approx(160.0, abs=15.0)
    assert m["qt_ms"] == pytest.approx(1000 * tangent_t_end(0.20, 0.22), abs=6.0)
    assert m["qtc_ms"] == pytest.approx(m["qt_ms"] / math.sqrt(0.8), rel=1e-6)  # Bazett


@pytest.mark.parametrize("qrs_s", [0.08, 0.12, 0.16])
def test_qrs_duration_tracks_the_built_width(qrs_s: float) -> None:
    m = measure_ecg(beat_train(qrs_s=qrs_s, t_start_s=qrs_s + 0.1)[0], fs=500)
    assert m["qrs_ms"] == pytest.approx(1000 * qrs_s, abs=10.0)


@pytest.mark.parametrize("axis", [-30.0, 0.0, 45.0, 60.0, 90.0, 120.0])
def test_frontal_qrs_axis(axis: float) -> None:
    m = measure_ecg(beat_train(qrs_axis_deg=axis)[0], fs=500)
    assert m["qrs_axis_deg"] == pytest.approx(axis, abs=3.0)


def test_amplitudes_and_voltage_criteria() -> None:
    m = measure_ecg(beat_train(qrs_axis_deg=30.0)[0], fs=500)
    for name, (r, s) in PRECORDIAL_RS.items():
        key = name.lower()
        assert m[f"r_{key}_mv"] == pytest.approx(r, abs=0.05), name
        assert m[f"s_{key}_mv"] == pytest.approx(s, abs=0.05), name
    # limb leads of a unit vector at +30 deg: II sees cos(-30), aVL sees cos(30) - cos(-30)/2
    assert m["r_ii_mv"] == pytest.approx(math.cos(math.radians(30)), abs=0.05)
    r_avl = math.cos(math.radians(30)) - math.cos(math.radians(-30)) / 2
    assert m["r_avl_mv"] == pytest.approx(r_avl, abs=0.05)
    assert m["s_avr_mv"] > 0.5 and m["r_avr_mv"] < 0.05
    assert m["sokolow_lyon_mv"] == pytest.approx(1.0 + 1.4, abs=0.08)
    assert m["cornell_mv"] == pytest.approx(r_avl + 0.8, abs=0.08)
    assert m["t_v5_mv"] == pytest.approx(0.2, abs=0.03)
    assert m["p_ii_mv"] == pytest.approx(0.15, abs=0.03)


def test_irregular_rhythm_rate_and_variability() -> None:
    rr = [0.62, 0.95, 0.71, 1.10, 0.66, 0.84, 0.77, 1.02, 0.69, 0.9, 0.8]
    ecg, onsets = beat_train(rr_s=rr, first_s=0.5)
    used = np.diff(onsets)
    m = measure_ecg(ecg, fs=500)
    assert m["hr_bpm"] == pytest.approx(60.0 / used.mean(), abs=0.5)
    assert m["rr_sd_ms"] == pytest.approx(1000 * used.std(ddof=1), abs=3.0)


def test_r_peaks_found_once_per_beat() -> None:
    ecg, onsets = beat_train(rr_s=[0.5, 1.2, 0.7, 0.9, 1.5, 0.6, 0.8])
    peaks = detect_r_peaks(ecg, fs=500) / 500
    assert len(peaks) == len(onsets)
    assert np.abs(peaks - (onsets + 0.05)).max() < 0.04


def test_no_p_wave_gives_nan_pr() -> None:
    m = measure_ecg(beat_train(pr_s=None)[0], fs=500)
    assert math.isnan(m["pr_ms"]) and math.isnan(m["p_axis_deg"])
    assert math.isfinite(m["qrs_ms"]) and math.isfinite(m["qt_ms"])


def test_other_sampling_rates() -> None:
    for fs in (250, 1000):
        ecg, _ = beat_train(fs=fs)
        m = measure_ecg(ecg, fs=fs)
        assert m["hr_bpm"] == pytest.approx(75.0, abs=0.5), fs
        assert m["qrs_ms"] == pytest.approx(100.0, abs=12.0), fs
        assert m["qt_ms"] == pytest.approx(1000 * tangent_t_end(0.20, 0.22), abs=10.0), fs


def test_robust_to_baseline_wander_mains_and_muscle_noise() -> None:
    ecg, _ = beat_train()
    rng = np.random.default_rng(0)
    t = np.arange(ecg.shape[1]) / 500
    noisy = (ecg + 0.3 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6, (12, 1)))
             + 0.05 * np.sin(2 * np.pi * 50.0 * t) + rng.normal(0, 0.02, ecg.shape))
    clean, m = measure_ecg(ecg, fs=500), measure_ecg(noisy, fs=500)
    assert m["hr_bpm"] == pytest.approx(75.0, abs=0.3)
    assert m["qrs_ms"] == pytest.approx(clean["qrs_ms"], abs=10.0)
    assert m["qt_ms"] == pytest.approx(clean["qt_ms"], abs=15.0)
    assert m["pr_ms"] == pytest.approx(clean["pr_ms"], abs=15.0)
    assert m["sokolow_lyon_mv"] == pytest.approx(clean["sokolow_lyon_mv"], abs=0.15)


# ============================================================================================
# Never crash on odd but well-formed input; clear errors on malformed input
# ============================================================================================
def test_flat_and_noise_only_records_give_nan_not_errors() -> None:
    flat = measure_ecg(np.zeros((12, 5000)), fs=500)
    assert set(flat) == set(FEATURE_NAMES)
    assert flat["n_beats"] == 0 and all(math.isnan(v) for k, v in flat.items() if k != "n_beats")
    noise = measure_ecg(np.random.default_rng(1).normal(0, 0.05, (12, 5000)), fs=500)
    assert set(noise) == set(FEATURE_NAMES)
    one_beat = measure_ecg(beat_train(duration_s=2.5, first_s=1.2)[0], fs=500)
    assert math.isnan(one_beat["hr_bpm"])


@pytest.mark.parametrize("shape, match", [((5000, 12), "transposed"), ((11, 5000), "12 leads"),
                                          ((12,), "12 leads"), ((2, 12, 5000), "12 leads"),
                                          ((12, 300), "too short")])
def test_wrong_shapes_raise_data_error(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(DataError, match=match):
        measure_ecg(np.zeros(shape), fs=500)


def test_non_finite_samples_and_bad_rate_raise_data_error() -> None:
    ecg, _ = beat_train()
    ecg[L["V3"], 100] = np.nan
    with pytest.raises(DataError, match="V3"):
        measure_ecg(ecg, fs=500)
    with pytest.raises(DataError, match="sampling rate"):
        measure_ecg(beat_train()[0], fs=0)


def test_measure_many_returns_one_row_per_ecg() -> None:
    ecgs = np.stack([beat_train(rr_s=rr)[0] for rr in (0.6, 0.8, 1.0)])
    table = measure_many(ecgs, fs=500, index=["a", "b", "c"])
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == list(FEATURE_NAMES) and list(table.index) == ["a", "b", "c"]
    np.testing.assert_allclose(table["hr_bpm"], [100.0, 75.0, 60.0], atol=0.5)
    with pytest.raises(DataError, match="#1"):
        measure_many([ecgs[0], np.zeros((11, 5000))], fs=500)
