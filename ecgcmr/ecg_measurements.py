"""Standard ECG measurements from a 12-lead strip: rate, intervals, axes, amplitudes.

What a classical model (and a cardiologist's report) uses, measured the way most
electrocardiographs do (global measurements on a representative beat; e.g. the Modular ECG
Analysis System behind the normal values of Rijnbeek PR et al., J Electrocardiol 2014;47:914):

1. clean the strip: 0.5 Hz high-pass (baseline wander), 50 and 60 Hz notches (mains),
   100 Hz low-pass (muscle noise);
2. detect R peaks on the summed QRS-band energy of the eight independent leads
   (I, II, V1-V6), after Pan J, Tompkins WJ, IEEE Trans Biomed Eng 1985;32:230;
3. align the beats by cross-correlation and take the sample-wise median beat of every lead;
4. on the median beat: QRS onset/offset from the spatial velocity of the eight leads, the
   isoelectric level just before QRS onset, T end by the tangent method on the spatial
   magnitude (Lepeschkin E, Surawicz B, Circulation 1952;6:378), P onset from the spatial
   magnitude before the QRS (absent in atrial fibrillation: the f waves average out);
5. amplitudes, axes (net QRS area in I and aVF) and voltage criteria (Sokolow-Lyon, Cornell).

It never sees the synthetic latent state, so it works on real ECGs too. A feature it cannot find
is NaN; an input of the wrong shape raises :class:`ecgcmr.errors.DataError`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from typing import Final

import numpy as np
import pandas as pd
from scipy import signal

from ecgcmr.constants import ECG_FS_HZ, LEADS
from ecgcmr.errors import DataError

# ============================================================================================
# Feature names
# ============================================================================================
_LEAD_KEYS: Final[tuple[str, ...]] = tuple(name.lower() for name in LEADS)
#: Every key :func:`measure_ecg` returns, in order. Amplitudes are in mV relative to the
#: isoelectric level before the QRS: ``r_<lead>_mv`` the largest positive and ``s_<lead>_mv``
#: the depth (positive number) of the largest negative QRS deflection; ``t_<lead>_mv`` the
#: signed T amplitude at the T peak. Lead names are lower case (``r_avl_mv``, ``s_v1_mv``).
FEATURE_NAMES: Final[tuple[str, ...]] = (
    "hr_bpm", "rr_sd_ms", "n_beats",
    "pr_ms", "qrs_ms", "qt_ms", "qtc_ms",
    "p_axis_deg", "qrs_axis_deg", "t_axis_deg", "qrs_t_angle_deg",
    "p_ii_mv",
    *(f"r_{k}_mv" for k in _LEAD_KEYS),
    *(f"s_{k}_mv" for k in _LEAD_KEYS),
    *(f"t_{k}_mv" for k in _LEAD_KEYS),
    "sokolow_lyon_mv", "cornell_mv",
)

# ============================================================================================
# Parameters (seconds / Hz unless named otherwise)
# ============================================================================================
_IDX: Final[dict[str, int]] = {name: i for i, name in enumerate(LEADS)}
#: The eight independent leads; the other four are linear combinations of I and II.
INDEPENDENT_LEADS: Final[tuple[int, ...]] = tuple(
    _IDX[n] for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"))
MIN_DURATION_S: Final[float] = 2.0
HIGHPASS_HZ: Final[float] = 0.5
LOWPASS_HZ: Final[float] = 100.0
MAINS_HZ: Final[tuple[float, ...]] = (50.0, 60.0)
NOTCH_Q: Final[float] = 30.0
# R-peak detection
QRS_BAND_HZ: Final[tuple[float, float]] = (5.0, 20.0)  # QRS energy band (Pan-Tompkins 5-15 Hz)
INTEGRATION_S: Final[float] = 0.10
REFRACTORY_S: Final[float] = 0.25
PEAK_THRESHOLD: Final[float] = 0.25    # fraction of a typical beat's energy
T_WAVE_WINDOW_S: Final[float] = 0.36
MAX_ALIGN_SHIFT_S: Final[float] = 0.02
# Median-beat window around the fiducial point: room for a PR of 300+ ms and a QT of 600 ms.
BEAT_PRE_S: Final[float] = 0.45
BEAT_POST_S: Final[float] = 0.65
# QRS boundaries from the spatial velocity (fraction of its QRS peak above the noise floor);
# a boundary needs the velocity to stay below threshold for a while, so that the notch of a
# bundle-branch-block QRS is not taken for its end.
QRS_SEARCH_S: Final[float] = 0.13
QRS_VELOCITY_FRACTION: Final[float] = 0.05
QRS_QUIET_ONSET_S: Final[float] = 0.010
QRS_QUIET_OFFSET_S: Final[float] = 0.020
ISOELECTRIC_WINDOW_S: Final[tuple[float, float]] = (0.016, 0.002)  # before QRS onset
# T wave: peak searched from 60 ms after the J point; tangent on its downslope.
T_SEARCH_AFTER_J_S: Final[float] = 0.06
# the T peak comes at most 550 ms or 62 % of RR after QRS onset, the T end before 72 % of RR
# (QT ~ 0.4 sqrt(RR) s: never into the next beat's P wave or QRS)
T_PEAK_LATEST_S: Final[float] = 0.55
T_PEAK_LATEST_RR: Final[float] = 0.62
T_END_LATEST_RR: Final[float] = 0.72
T_MAX_AFTER_PEAK_S: Final[float] = 0.30
T_MIN_MV: Final[float] = 0.02
# P wave: peak searched between the previous T end and 30 ms before QRS onset.
P_SEARCH_S: Final[float] = 0.40
P_GAP_TO_QRS_S: Final[float] = 0.03
P_MIN_MV: Final[float] = 0.03
P_NOISE_FACTOR: Final[float] = 4.0
P_ONSET_FRACTION: Final[float] = 0.08
P_CONSISTENCY: Final[float] = 0.5
SMOOTH_HZ: Final[float] = 60.0


# ============================================================================================
# Public API
# ============================================================================================
def measure_ecg(ecg: np.ndarray, fs: float = ECG_FS_HZ) -> dict[str, float]:
    """Standard measurements of one 12-lead ECG.

    Args:
        ecg: ``(12, T)`` mV, leads in ``ecgcmr.constants.LEADS`` order, at least 2 s.
        fs: sampling rate (Hz).

    Returns:
        ``{name: value}`` for every name of :data:`FEATURE_NAMES` (floats; NaN where a
        feature cannot be found): ``hr_bpm``, ``rr_sd_ms`` (SD of RR), ``n_beats``; ``pr_ms``
        (NaN without P waves), ``qrs_ms``, ``qt_ms``, ``qtc_ms`` (Bazett); frontal
        ``p_axis_deg``, ``qrs_axis_deg``, ``t_axis_deg`` (hexaxial: 0 = lead I, +90 = aVF)
        and ``qrs_t_angle_deg``; ``p_ii_mv``; ``r_/s_/t_<lead>_mv``; ``sokolow_lyon_mv`` (S V1
        + max R V5/V6; Sokolow M, Lyon TP, Am Heart J 1949;37:161) and ``cornell_mv`` (R aVL
        + S V3; Casale PN et al., J Am Coll Cardiol 1985;6:572).

    Raises:
        DataError: not a finite ``(12, T)`` array of at least 2 s, or ``fs`` not positive.
    """
    x = _validated(ecg, fs)
    out = dict.fromkeys(FEATURE_NAMES, math.nan)
    clean = clean_ecg(x, fs)
    peaks = detect_r_peaks(clean, fs, cleaned=True)
    out["n_beats"] = float(peaks.size)
    if peaks.size < 2:
        return out
    rr_s = np.diff(peaks) / fs
    out["hr_bpm"] = 60.0 / float(rr_s.mean())
    if rr_s.size >= 2:
        out["rr_sd_ms"] = 1000.0 * float(rr_s.std(ddof=1))
    beats, fid = _aligned_beats(clean, peaks, fs)
    out.update(_beat_measurements(beats, fid, fs, float(np.median(rr_s))))
    return out


def measure_many(ecgs: Iterable[np.ndarray] | np.ndarray, fs: float = ECG_FS_HZ,
                 index: Iterable[object] | None = None) -> pd.DataFrame:
    """:func:`measure_ecg` of many ECGs as one table (rows in input order).

    Args:
        ecgs: ``(N, 12, T)`` array or an iterable of ``(12, T)`` arrays (mV).
        fs: sampling rate (Hz).
        index: optional row labels (e.g. subject ids).

    Returns:
        DataFrame with the columns of :data:`FEATURE_NAMES`.
    """
    rows = []
    for i, ecg in enumerate(ecgs):
        try:
            rows.append(measure_ecg(ecg, fs))
        except DataError as err:
            raise DataError(f"ECG #{i}: {err.problem}", expected=err.expected,
                            found=err.found) from None
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES),
                        index=None if index is None else list(index))


def clean_ecg(ecg: np.ndarray, fs: float) -> np.ndarray:
    """(12, T) mV: zero-phase 0.5 Hz high-pass, 50/60 Hz notches, 100 Hz low-pass."""
    return signal.sosfiltfilt(_cleaning_sos(float(fs)), np.asarray(ecg, dtype=np.float64),
                              axis=1)


@functools.lru_cache(maxsize=16)
def _cleaning_sos(fs: float) -> np.ndarray:
    """Second-order sections of the cleaning filter at this sampling rate (designed once)."""
    nyq = fs / 2.0
    sections = [signal.butter(2, HIGHPASS_HZ / nyq, btype="highpass", output="sos")]
    for f in MAINS_HZ:
        if f < 0.95 * nyq:
            sections.append(signal.tf2sos(*signal.iirnotch(f, NOTCH_Q, fs=fs)))
    if LOWPASS_HZ < 0.9 * nyq:
        sections.append(signal.butter(4, LOWPASS_HZ / nyq, output="sos"))
    return np.concatenate(sections)


@functools.lru_cache(maxsize=64)
def _butter_sos(order: int, low_hz: float | None, high_hz: float | None, fs: float
                ) -> np.ndarray:
    """Butterworth sections (band-, low- or high-pass by which edges are given), cached."""
    nyq = fs / 2.0
    if low_hz is not None and high_hz is not None:
        return signal.butter(order, [low_hz / nyq, high_hz / nyq], btype="bandpass",
                             output="sos")
    if high_hz is not None:
        return signal.butter(order, high_hz / nyq, output="sos")
    return signal.butter(order, low_hz / nyq, btype="highpass", output="sos")


def detect_r_peaks(ecg: np.ndarray, fs: float = ECG_FS_HZ, *, cleaned: bool = False
                   ) -> np.ndarray:
    """Sample indices of the QRS complexes (centre of QRS energy), ascending.

    Energy = sum over the eight independent leads of the squared derivative of the 5-20 Hz
    band-passed signal, integrated over 100 ms; peaks at least 250 ms apart and above 25 % of
    a typical beat's energy (the median of the largest few peaks, robust to a stray spike);
    a peak within 360 ms of a beat and under half its energy is taken for its T wave.

    Args:
        ecg: ``(12, T)`` mV (LEADS order).
        fs: sampling rate (Hz).
        cleaned: skip :func:`clean_ecg` when the input already went through it.
    """
    x = _validated(ecg, fs) if not cleaned else ecg
    if not cleaned:
        x = clean_ecg(x, fs)
    energy = _qrs_energy(x, fs)
    integ = np.convolve(energy, np.ones(max(int(INTEGRATION_S * fs), 1)), mode="same")
    cand, _ = signal.find_peaks(integ, distance=max(int(REFRACTORY_S * fs), 1))
    if cand.size == 0:
        return cand
    heights = integ[cand]
    # a typical beat: the median of the k largest peaks, k = beats expected at 24 bpm (robust
    # to a stray spike, not dragged down to T-wave level in a short strip)
    k = int(min(max(1, x.shape[1] / fs / 2.5), cand.size))
    typical = float(np.median(np.sort(heights)[-k:]))
    if typical <= 0.0:
        return np.array([], dtype=np.int64)
    keep: list[int] = []
    for c, h in zip(cand, heights, strict=True):
        if h < PEAK_THRESHOLD * typical:
            continue
        # Pan-Tompkins' T-wave rule: soon after a beat, a much smaller peak is its T wave
        if keep and c - keep[-1] < T_WAVE_WINDOW_S * fs and h < 0.5 * integ[keep[-1]]:
            continue
        keep.append(int(c))
    return np.array(keep, dtype=np.int64)


# ============================================================================================
# Internals
# ============================================================================================
def _validated(ecg: np.ndarray, fs: float) -> np.ndarray:
    if not (isinstance(fs, (int, float, np.integer, np.floating)) and fs > 0):
        raise DataError("sampling rate must be a positive number", expected="fs > 0 Hz",
                        found=repr(fs))
    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS):
        hint = " (transposed? pass the leads on axis 0)" if (
            x.ndim == 2 and x.shape[1] == len(LEADS)) else ""
        raise DataError(f"ECG must be a 2-D array of {len(LEADS)} leads x samples{hint}",
                        expected=f"shape ({len(LEADS)}, T) in LEADS order {LEADS}",
                        found=f"shape {x.shape}")
    if x.shape[1] < MIN_DURATION_S * fs:
        raise DataError("ECG too short to measure", expected=f">= {MIN_DURATION_S} s "
                        f"({int(MIN_DURATION_S * fs)} samples at {fs} Hz)",
                        found=f"{x.shape[1]} samples")
    if not np.isfinite(x).all():
        bad = sorted({LEADS[i] for i in np.nonzero(~np.isfinite(x).all(axis=1))[0]})
        raise DataError("ECG contains NaN or infinite samples", expected="finite values",
                        found=f"non-finite samples in leads {bad}")
    return x


def _aligned_beats(ecg: np.ndarray, peaks: np.ndarray, fs: float) -> tuple[np.ndarray, int]:
    """((n, 12, W) beats aligned on their fiducial point, NaN outside the strip; its index)."""
    pre, post = int(round(BEAT_PRE_S * fs)), int(round(BEAT_POST_S * fs))
    peaks = _align_peaks(ecg, np.asarray(peaks), fs)
    n = ecg.shape[1]
    beats = np.full((peaks.size, ecg.shape[0], pre + post), np.nan)
    for j, p in enumerate(peaks):
        a, b = max(p - pre, 0), min(p + post, n)
        beats[j, :, a - (p - pre):b - (p - pre)] = ecg[:, a:b]
    return beats, pre


def _nanmedian(beats: np.ndarray) -> np.ndarray:
    """(12, W) sample-wise median over beats, ignoring the NaN padding of edge beats."""
    complete = ~np.isnan(beats).any(axis=(1, 2))
    if complete.sum() >= 3:  # enough whole beats: the fast path
        return np.median(beats[complete], axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmedian(beats, axis=0)


def _qrs_energy(x: np.ndarray, fs: float) -> np.ndarray:
    """(T,) summed squared slope of the QRS band of the independent leads."""
    sos = _butter_sos(2, QRS_BAND_HZ[0], min(QRS_BAND_HZ[1], 0.45 * fs), float(fs))
    band = signal.sosfiltfilt(sos, x[list(INDEPENDENT_LEADS)], axis=1)
    return (np.gradient(band, axis=1) ** 2).sum(axis=0)


def _align_peaks(x: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Peaks moved (<= 20 ms) to best match the median QRS shape (cross-correlation)."""
    half = int(round(0.06 * fs))
    shift = int(round(MAX_ALIGN_SHIFT_S * fs))
    n = x.shape[1]
    lead_x = x[list(INDEPENDENT_LEADS)]
    ok = (peaks - half - shift >= 0) & (peaks + half + shift < n)
    if ok.sum() < 2:
        return peaks
    segs = np.stack([lead_x[:, p - half:p + half] for p in peaks[ok]])
    template = np.median(segs, axis=0)                              # (8, 2*half)
    aligned = peaks.copy()
    for j in np.nonzero(ok)[0]:
        p = peaks[j]
        window = lead_x[:, p - half - shift:p + half + shift]      # (8, 2*half + 2*shift)
        scores = [float((window[:, s:s + 2 * half] * template).sum())
                  for s in range(2 * shift + 1)]
        aligned[j] = p + int(np.argmax(scores)) - shift
    return aligned


def _lowpass(x: np.ndarray, fs: float, hz: float) -> np.ndarray:
    if hz >= 0.45 * fs:
        return x
    return signal.sosfiltfilt(_butter_sos(2, None, hz, float(fs)), x, axis=-1)


def _fill_nan(beat: np.ndarray) -> np.ndarray:
    """Edge NaNs (no beat covered them) replaced by the nearest covered value, per lead."""
    out = beat.copy()
    for row in out:
        ok = np.isfinite(row)
        if ok.all() or not ok.any():
            continue
        idx = np.arange(row.size)
        row[~ok] = np.interp(idx[~ok], idx[ok], row[ok])
    return out


def _quiet_run_index(below: np.ndarray, start: int, step: int, run: int, stop: int) -> int:
    """First index from ``start`` (moving by ``step``) that begins ``run`` quiet samples."""
    count = 0
    i = start
    while (step > 0 and i < stop) or (step < 0 and i > stop):
        count = count + 1 if below[i] else 0
        if count >= run:
            return i - step * (run - 1)
        i += step
    return stop


def _axis_deg(lead_i: float, lead_avf: float) -> float:
    """Frontal axis (deg, hexaxial) from net values in I and aVF.

    In Einthoven's equilateral triangle lead I sees the leftward component with gain sqrt(3)
    and aVF the inferior one with gain 3/2, hence the factor 2/sqrt(3) on aVF.
    """
    if not (np.isfinite(lead_i) and np.isfinite(lead_avf)) or (lead_i == 0 and lead_avf == 0):
        return math.nan
    return math.degrees(math.atan2(2.0 / math.sqrt(3.0) * lead_avf, lead_i))


def _beat_measurements(beats: np.ndarray, fid: int, fs: float, rr_s: float
                       ) -> dict[str, float]:
    """Intervals, axes and amplitudes from the ``(n, 12, W)`` aligned beats' median beat."""
    out: dict[str, float] = {}
    beat = _fill_nan(_nanmedian(beats))
    if not np.isfinite(beat).all():
        return out
    ms = 1000.0 / fs
    ind = list(INDEPENDENT_LEADS)
    smooth = _lowpass(beat, fs, SMOOTH_HZ)
    velocity = np.sqrt((np.gradient(smooth[ind], axis=1) ** 2).sum(axis=0))   # (W,) mV/sample
    width = beat.shape[1]

    # ---- QRS onset / offset ---------------------------------------------------------------
    search = int(QRS_SEARCH_S * fs)
    lo, hi = max(fid - search, 1), min(fid + search, width - 1)
    peak = lo + int(np.argmax(velocity[lo:hi]))
    floor = float(np.median(velocity))
    thr = floor + QRS_VELOCITY_FRACTION * (velocity[peak] - floor)
    below = velocity < thr
    onset = _quiet_run_index(below, peak, -1, max(int(QRS_QUIET_ONSET_S * fs), 1),
                             max(fid - int(0.25 * fs), 0))
    offset = _quiet_run_index(below, peak, 1, max(int(QRS_QUIET_OFFSET_S * fs), 1),
                              min(fid + int(0.25 * fs), width - 1))
    if offset <= onset:
        return out
    out["qrs_ms"] = (offset - onset) * ms

    # ---- isoelectric level and amplitudes --------------------------------------------------
    a = max(onset - int(round(ISOELECTRIC_WINDOW_S[0] * fs)), 0)
    b = max(onset - int(round(ISOELECTRIC_WINDOW_S[1] * fs)), a + 1)
    base = beat - np.median(beat[:, a:b], axis=1, keepdims=True)
    sbase = smooth - np.median(smooth[:, a:b], axis=1, keepdims=True)
    qrs = base[:, onset:offset + 1]
    r = np.maximum(qrs.max(axis=1), 0.0)
    s = np.maximum(-qrs.min(axis=1), 0.0)
    for k, name in enumerate(_LEAD_KEYS):
        out[f"r_{name}_mv"] = float(r[k])
        out[f"s_{name}_mv"] = float(s[k])
    out["sokolow_lyon_mv"] = float(s[_IDX["V1"]] + max(r[_IDX["V5"]], r[_IDX["V6"]]))
    out["cornell_mv"] = float(r[_IDX["aVL"]] + s[_IDX["V3"]])
    area = qrs.sum(axis=1)
    out["qrs_axis_deg"] = _axis_deg(area[_IDX["I"]], area[_IDX["aVF"]])

    # ---- T wave and QT ----------------------------------------------------------------------
    magnitude = np.sqrt((sbase[ind] ** 2).sum(axis=0))                    # (W,) mV
    noise_mag = float(np.median(magnitude[a:b]))
    t0 = offset + int(T_SEARCH_AFTER_J_S * fs)
    t1 = min(onset + int(min(T_PEAK_LATEST_S, T_PEAK_LATEST_RR * rr_s) * fs), width - 2)
    t_end = math.nan
    if t1 > t0 + 2:
        t_peak = t0 + int(np.argmax(magnitude[t0:t1]))
        if magnitude[t_peak] - noise_mag >= T_MIN_MV:
            latest = min(onset + int(T_END_LATEST_RR * rr_s * fs), width - 1)
            t_end = _tangent_end(magnitude, t_peak, noise_mag, fs, latest)
            for k, name in enumerate(_LEAD_KEYS):
                out[f"t_{name}_mv"] = float(sbase[k, t_peak])
            if np.isfinite(t_end):
                t_area = base[:, offset:int(t_end) + 1].sum(axis=1)
                out["t_axis_deg"] = _axis_deg(t_area[_IDX["I"]], t_area[_IDX["aVF"]])
    if np.isfinite(t_end) and t_end > offset:
        qt_s = (t_end - onset) / fs
        out["qt_ms"] = 1000.0 * qt_s
        out["qtc_ms"] = 1000.0 * qt_s / math.sqrt(rr_s)  # Bazett H, Heart 1920;7:353
    if np.isfinite(out.get("qrs_axis_deg", math.nan)) and np.isfinite(
            out.get("t_axis_deg", math.nan)):
        diff = abs(out["qrs_axis_deg"] - out["t_axis_deg"]) % 360.0
        out["qrs_t_angle_deg"] = min(diff, 360.0 - diff)

    # ---- P wave and PR ----------------------------------------------------------------------
    out.update(_p_wave(beats, beat, smooth, onset, t_end, fs, rr_s, ind))
    return out


def _consistency(segments: np.ndarray, median: np.ndarray) -> float:
    """Energy of the median over the mean energy of the beats, each de-meaned per lead.

    ``segments`` (n, leads, w) of the beats, ``median`` (leads, w). ~1 for a wave that recurs
    identically in every beat, ~1/n for activity unrelated to the QRS.
    """
    ok = np.isfinite(segments).all(axis=(1, 2))
    if ok.sum() < 2:
        return 1.0  # cannot tell with one beat
    seg = segments[ok] - segments[ok].mean(axis=2, keepdims=True)
    med = median - median.mean(axis=1, keepdims=True)
    beat_energy = float((seg**2).sum(axis=(1, 2)).mean())
    return float((med**2).sum()) / beat_energy if beat_energy > 0 else 0.0


def _tangent_end(magnitude: np.ndarray, t_peak: int, level: float, fs: float,
                 latest: int) -> float:
    """T end (fractional sample): steepest-downslope tangent meets the isoelectric level.

    The steepest downslope is sought from the T peak to 300 ms later or ``latest``.
    """
    stop = min(t_peak + int(T_MAX_AFTER_PEAK_S * fs), latest)
    if stop <= t_peak + 2:
        return math.nan
    slope = np.gradient(magnitude[t_peak:stop + 1])
    k = int(np.argmin(slope))
    if slope[k] >= 0:
        return math.nan
    i = t_peak + k
    return i + (level - magnitude[i]) / slope[k]


def _p_wave(beats: np.ndarray, beat: np.ndarray, smooth: np.ndarray, onset: int,
            t_end: float, fs: float, rr_s: float, ind: list[int]) -> dict[str, float]:
    """PR interval, P axis and P amplitude in II (empty dict if no P wave is found).

    A P wave must stand out of the noise, last >= 40 ms, and recur in every beat: the median
    must carry most of the beats' energy in the P window (atrial fibrillatory waves are not
    locked to the QRS, so their median is small compared to each beat).
    """
    ms = 1000.0 / fs
    lp = _lowpass(beat, fs, 20.0)
    stop = onset - int(P_GAP_TO_QRS_S * fs)
    start = max(onset - int(P_SEARCH_S * fs), 0)
    if np.isfinite(t_end):  # not into the previous beat's T wave
        start = max(start, int(t_end - rr_s * fs) + int(0.02 * fs))
    if stop - start < int(0.06 * fs):
        return {}
    # baseline: the isoelectric PR segment just before QRS onset
    a = max(onset - int(0.02 * fs), 0)
    seg = lp - np.median(lp[:, a:onset], axis=1, keepdims=True)
    magnitude = np.sqrt((seg[ind] ** 2).sum(axis=0))
    noise = float(np.std(beat[ind] - smooth[ind]))  # residual high-frequency noise per lead
    p_peak = start + int(np.argmax(magnitude[start:stop]))
    height = float(magnitude[p_peak])
    floor = float(np.min(magnitude[start:p_peak + 1]))
    if height - floor < max(P_MIN_MV, P_NOISE_FACTOR * noise * math.sqrt(len(ind))):
        return {}
    thr = floor + P_ONSET_FRACTION * (height - floor)
    i = p_peak
    while i > start and magnitude[i] > thr:
        i -= 1
    p_on = i
    j = p_peak
    while j < stop and magnitude[j] > thr:
        j += 1
    # a P wave is a broad bump: at least 40 ms above threshold
    if (j - p_on) < 0.04 * fs:
        return {}
    if _consistency(beats[:, ind, p_on:j + 1], beat[ind, p_on:j + 1]) < P_CONSISTENCY:
        return {}
    p_area = seg[:, p_on:j + 1].sum(axis=1)
    return {"pr_ms": (onset - p_on) * ms,
            "p_axis_deg": _axis_deg(p_area[_IDX["I"]], p_area[_IDX["aVF"]]),
            "p_ii_mv": float(seg[_IDX["II"], p_peak])}
