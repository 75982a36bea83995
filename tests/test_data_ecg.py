"""ECG loader, QC and preprocessing, on WFDB records written on the fly with ``wfdb.wrsamp``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgcmr.constants import ECG_FS_HZ, ECG_N_SAMPLES, LEADS
from ecgcmr.data.ecg import EcgPreprocessing, load_ecg, preprocess_ecg, qc_ecg, read_ecg
from ecgcmr.errors import DataError

GAIN_PER_MV = 200.0  # ADC units per mV: one step = 5 µV, coarser than the synthetic cohort's 1 µV
STEP_MV = 1.0 / GAIN_PER_MV


def ecg_like(fs: float, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """(n, 12) mV: a distinct smooth waveform per lead (sines of different frequency/phase),
    with III, aVR, aVL, aVF formed from I and II as an electrocardiograph does (QC checks it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(fs * seconds)) / fs
    freqs = np.linspace(1.1, 9.7, 12)
    amps = rng.uniform(0.3, 1.5, 12)
    phases = rng.uniform(0, 2 * np.pi, 12)
    return with_limb_relations(amps * np.sin(2 * np.pi * freqs * t[:, None] + phases)
                               + 0.2 * np.sin(2 * np.pi * 0.7 * t)[:, None])


def with_limb_relations(x: np.ndarray) -> np.ndarray:
    """(n, 12) -> a copy whose III, aVR, aVL, aVF follow Einthoven and Goldberger from I, II."""
    x = x.copy()
    lead_i, lead_ii = x[:, 0], x[:, 1]
    x[:, 2], x[:, 3] = lead_ii - lead_i, -(lead_i + lead_ii) / 2
    x[:, 4], x[:, 5] = lead_i - lead_ii / 2, lead_ii - lead_i / 2
    return x


def write_record(
    folder: Path,
    name: str,
    signal: np.ndarray,
    fs: float = ECG_FS_HZ,
    *,
    names: list[str] | None = None,
    units: str = "mV",
    gain: float = GAIN_PER_MV,
) -> Path:
    """Write ``signal`` (n, channels) in ``units`` as WFDB format 16; return the ``.hea`` path."""
    n_ch = signal.shape[1]
    wfdb.wrsamp(
        record_name=name, fs=fs, units=[units] * n_ch,
        sig_name=list(names if names is not None else LEADS), p_signal=signal,
        fmt=["16"] * n_ch, adc_gain=[gain] * n_ch, baseline=[0] * n_ch, write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def tone_amplitude(x: np.ndarray, freq: float, fs: float) -> float:
    """Amplitude of the ``freq`` Hz component of ``x`` (least-squares sine + cosine fit)."""
    t = np.arange(x.size) / fs
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.hypot(*coef))


# --- reading ---------------------------------------------------------------------------------


def test_round_trip_within_one_adc_step(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    hea = write_record(tmp_path, "rec", signal)
    for path in (hea, tmp_path / "rec"):  # with and without the .hea suffix
        ecg, fs = read_ecg(path)
        assert ecg.shape == (12, ECG_N_SAMPLES) and ecg.dtype == np.float32
        assert fs == ECG_FS_HZ
        assert np.abs(ecg - signal.T).max() <= STEP_MV + 1e-6
    loaded = load_ecg(hea)
    assert loaded.shape == (12, ECG_N_SAMPLES) and loaded.dtype == np.float32
    assert np.abs(loaded - signal.T).max() <= STEP_MV + 1e-6


def test_leads_matched_by_name_in_any_order_and_case(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    order = np.random.default_rng(1).permutation(12)
    names = [LEADS[i].lower() if k % 2 else LEADS[i].upper() for k, i in enumerate(order)]
    hea = write_record(tmp_path, "shuffled", signal[:, order], names=names)
    ecg, _ = read_ecg(hea)
    assert np.abs(ecg - signal.T).max() <= STEP_MV + 1e-6


def test_aliases_inverted_avr_and_extra_channels(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    names = ["DI", "lead II", "DIII", "-aVR", "AVL", "avf", "V1", "V2", "V3", "V4", "V5", "V6"]
    stored = signal.copy()
    stored[:, 3] *= -1  # a Cabrera-style -aVR channel holds the negated aVR
    extra = np.sin(np.linspace(0, 20, stored.shape[0]))[:, None]  # a respiration channel
    hea = write_record(tmp_path, "alias", np.hstack([stored, extra]), names=[*names, "RESP"])
    ecg, _ = read_ecg(hea)
    assert np.abs(ecg - signal.T).max() <= STEP_MV + 1e-6


@pytest.mark.parametrize("unit", ["uV", "µV", "μV"])
def test_microvolt_units_are_converted(tmp_path: Path, unit: str) -> None:
    signal = ecg_like(ECG_FS_HZ)
    hea = write_record(tmp_path, "micro", signal * 1000.0, units="uV", gain=GAIN_PER_MV / 1000)
    # wfdb cannot round-trip non-ASCII units (it reads "µV" as "V"): write them into the text
    hea.write_text(hea.read_text().replace("/uV", f"/{unit}"), encoding="utf-8")
    ecg, _ = read_ecg(hea)
    assert np.abs(ecg - signal.T).max() <= STEP_MV + 1e-6


def test_volt_units_are_converted(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    hea = write_record(tmp_path, "volt", signal / 1000.0, units="V", gain=GAIN_PER_MV * 1000)
    ecg, _ = read_ecg(hea)
    assert np.abs(ecg - signal.T).max() <= STEP_MV + 1e-6


@pytest.mark.parametrize("fs_in", [250, 360, 1000])
def test_other_rates_resampled_keeping_frequency(tmp_path: Path, fs_in: int) -> None:
    freq, amp, offset = 7.0, 1.0, 0.8  # a 7 Hz sine on every lead (distinct phases) + offset
    phases = np.linspace(0, np.pi, 12)
    t_in = np.arange(fs_in * 10) / fs_in
    hea = write_record(tmp_path, f"r{fs_in}", with_limb_relations(
        offset + amp * np.sin(2 * np.pi * freq * t_in[:, None] + phases)), fs=fs_in)
    ecg = load_ecg(hea)
    assert ecg.shape == (12, ECG_N_SAMPLES)
    t = np.arange(ECG_N_SAMPLES) / ECG_FS_HZ
    expected = with_limb_relations(offset + amp * np.sin(2 * np.pi * freq * t[:, None] + phases)).T
    inner = slice(50, -50)  # 0.1 s from each end
    assert np.abs(ecg[:, inner] - expected[:, inner]).max() < 0.01
    # no ringing at the edges from the offset (zero padding gives 0.15-0.3 mV here)
    assert np.abs(ecg - expected).max() < 0.1
    spectrum = np.abs(np.fft.rfft(ecg[0] - ecg[0].mean()))
    peak_hz = np.fft.rfftfreq(ECG_N_SAMPLES, 1 / ECG_FS_HZ)[spectrum.argmax()]
    assert peak_hz == pytest.approx(freq, abs=0.1)


# --- bad input -------------------------------------------------------------------------------


def _assert_data_error(path: Path, *fragments: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_ecg(path, subject="S1")
    message = str(info.value)
    assert path.stem in message
    assert "S1" in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _assert_data_error(tmp_path / "nothere.hea", "not found")


def test_truncated_header(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "trunc", ecg_like(ECG_FS_HZ))
    hea.write_text(hea.read_text()[:60])  # record line and half a signal line
    _assert_data_error(hea)


def test_missing_sampling_rate(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "nofs", ecg_like(ECG_FS_HZ))
    lines = hea.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:2])  # "nofs 12": WFDB would silently assume 250 Hz
    hea.write_text("\n".join(lines) + "\n")
    _assert_data_error(hea, "sampling frequency")


def test_two_lead_record_lists_missing_leads(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "two", ecg_like(ECG_FS_HZ)[:, :2], names=["I", "II"])
    _assert_data_error(hea, "missing leads", "III", "aVR", "V6")


def test_duplicate_lead(tmp_path: Path) -> None:
    names = list(LEADS)
    names[1] = "i"  # "I" and "i"
    hea = write_record(tmp_path, "dup", ecg_like(ECG_FS_HZ), names=names)
    _assert_data_error(hea, "twice")


def test_unknown_units(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "units", ecg_like(ECG_FS_HZ), units="mmHg")
    _assert_data_error(hea, "units", "mmHg")


def test_record_shorter_than_10_s(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "short", ecg_like(ECG_FS_HZ, seconds=8.0))
    _assert_data_error(hea, "too short", "8.000 s")


def test_nan_samples(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    signal[1000:1010, 7] = np.nan  # wfdb stores NaN as the format's invalid-sample code
    hea = write_record(tmp_path, "nan", signal)
    _assert_data_error(hea, "NaN", "V2")


def test_flat_lead(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    signal[:, 4] = 0.003  # aVL: electrode off
    hea = write_record(tmp_path, "flat", signal)
    error = _assert_data_error(hea, "flat", "aVL")
    assert "V1" not in str(error)


def test_clipped_lead(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    signal[:, 9] = np.clip(1.5 * np.sin(2 * np.pi * 1.2 * np.arange(5000) / 500), -0.8, 0.8)
    hea = write_record(tmp_path, "clip", signal)
    _assert_data_error(hea, "saturated", "V4")


def test_out_of_range_lead(tmp_path: Path) -> None:
    signal = ecg_like(ECG_FS_HZ)
    signal[2000:2003, 11] = 14.0  # 14 mV: beyond any body-surface ECG
    hea = write_record(tmp_path, "rail", signal)
    _assert_data_error(hea, "saturated", "V6")


def test_qc_passes_clean_record_with_exact_flat_baseline() -> None:
    # spiky "QRS" complexes on an exactly-zero baseline: the baseline is the lead's min and
    # repeats for long runs, which must not read as clipping
    t = np.arange(ECG_N_SAMPLES) / ECG_FS_HZ
    beats = np.exp(-0.5 * ((t % 1.0 - 0.5) / 0.01) ** 2)  # 1 mV spike every second
    # distinct leads (QC rejects copies) with I, II -> III, aVR, aVL, aVF as Einthoven/Goldberger
    scale = [0.6, 1.4, 0.8, -1.0, -0.1, 1.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.3]
    clean = np.outer(scale, np.round(beats, 3))
    assert qc_ecg(clean, ECG_FS_HZ) == []
    assert qc_ecg(ecg_like(ECG_FS_HZ).T, ECG_FS_HZ) == []


# --- preprocessing ---------------------------------------------------------------------------

T = np.arange(ECG_N_SAMPLES) / ECG_FS_HZ
OFF = EcgPreprocessing(highpass_hz=None, notch_hz=None, savgol_window=None, zscore=False)


def test_highpass_removes_baseline_drift() -> None:
    keep = 0.5 * np.sin(2 * np.pi * 10 * T)
    drift = 1.0 * np.sin(2 * np.pi * 0.1 * T)
    x = np.tile(keep + drift, (12, 1))
    y = preprocess_ecg(x, EcgPreprocessing(highpass_hz=0.5, notch_hz=None, savgol_window=None,
                                           zscore=False))
    # 4th-order Butterworth, forward-backward: |H(0.1 Hz)|^2 = 1 / (1 + (0.5/0.1)^8) ~ 2.6e-6
    inner = slice(250, -250)  # 0.5 s from each end (edge transients)
    assert tone_amplitude(y[0, inner], 0.1, ECG_FS_HZ) < 0.01  # from 1 mV
    assert np.abs(y[:, inner] - keep[inner]).max() < 0.02
    assert tone_amplitude(y[0, inner], 10, ECG_FS_HZ) == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_notch_removes_mains_keeps_10_hz(mains: float) -> None:
    x = np.tile(0.5 * np.sin(2 * np.pi * mains * T) + np.sin(2 * np.pi * 10 * T), (12, 1))
    cfg = EcgPreprocessing(highpass_hz=None, notch_hz=mains, savgol_window=None, zscore=False)
    y = preprocess_ecg(x, cfg)[0, 500:-500]
    assert tone_amplitude(y, mains, ECG_FS_HZ) < 0.01  # from 0.5 mV
    assert tone_amplitude(y, 10, ECG_FS_HZ) == pytest.approx(1.0, rel=0.01)


def test_savgol_keeps_cubics_exactly() -> None:
    # a Savitzky-Golay filter of order 3 reproduces any cubic polynomial exactly
    x = np.tile(0.2 * (T - 5) ** 3 - (T - 5) ** 2 + 0.5, (12, 1))
    cfg = EcgPreprocessing(highpass_hz=None, notch_hz=None, zscore=False)
    np.testing.assert_allclose(preprocess_ecg(x, cfg), x, atol=1e-3)


def test_zscore_default_chain() -> None:
    y = preprocess_ecg(ecg_like(ECG_FS_HZ).T)
    assert y.shape == (12, ECG_N_SAMPLES) and y.dtype == np.float32
    assert abs(float(y.mean())) < 1e-5
    assert float(y.std()) == pytest.approx(1.0, abs=1e-4)


def test_all_steps_disabled_is_identity() -> None:
    x = ecg_like(ECG_FS_HZ).T
    np.testing.assert_allclose(preprocess_ecg(x, OFF), x, atol=1e-6)


@pytest.mark.parametrize("bad", [
    {"savgol_window": 14},                     # even
    {"savgol_window": 5, "savgol_order": 5},   # order must be < window
    {"savgol_order": -1},
    {"highpass_hz": 0.0},
    {"highpass_order": 0},
    {"notch_hz": -50.0},
    {"notch_quality": 0.0},
    {"zscore": 1},
])
def test_invalid_parameters_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        EcgPreprocessing(**bad)


def test_filter_above_nyquist_raises() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        preprocess_ecg(ecg_like(100.0).T, EcgPreprocessing(notch_hz=50.0), fs=100.0)


def test_preprocess_rejects_wrong_shape_and_nan() -> None:
    with pytest.raises(DataError):
        preprocess_ecg(np.zeros((8, ECG_N_SAMPLES)))
    x = ecg_like(ECG_FS_HZ).T
    x[0, 0] = np.nan
    with pytest.raises(DataError):
        preprocess_ecg(x)
