"""The ECG half of the input contract: records that used to be silently accepted (or crashed)
are rejected with a DataError naming subject, file, what was expected and what was found, and
the records the project itself makes (synthetic cohort, converters) still load.

Every input is built on the fly in tmp_path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks
from writers.ge_xml import write_ge_xml

from ecgcmr.constants import ECG_FS_HZ, ECG_N_SAMPLES, LEADS
from ecgcmr.convert.ecg_xml import convert_ge_xml, read_ge_xml
from ecgcmr.data import read_manifest
from ecgcmr.data.ecg import (
    ECG_FS_MAX_HZ,
    ECG_FS_MIN_HZ,
    SATURATION_RUN_S,
    check_ecg_rate,
    load_ecg,
    qc_ecg,
    rational_ratio,
)
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state

GAIN = 1000.0  # ADC steps per mV (1 µV per step, as the synthetic cohort)
FS = ECG_FS_HZ


def synthetic_ecg(fs: int = FS, seed: int = 0) -> np.ndarray:
    """(12, 10 s * fs) mV from the project's simulator (Einthoven/Goldberger exact)."""
    state = sample_state(np.random.default_rng(seed), f"C{seed}")
    return simulate_ecg(state, np.random.default_rng(seed + 100), fs=fs)


def with_limb_relations(x: np.ndarray) -> np.ndarray:
    """(12, n) -> a copy whose III, aVR, aVL, aVF are formed from I and II as an
    electrocardiograph forms them (Einthoven, Goldberger)."""
    x = np.array(x, dtype=np.float64)
    lead_i, lead_ii = x[0], x[1]
    x[2], x[3], x[4], x[5] = (lead_ii - lead_i, -(lead_i + lead_ii) / 2,
                              lead_i - lead_ii / 2, lead_ii - lead_i / 2)
    return x


def write(folder: Path, name: str, x: np.ndarray, fs: float = FS, gain: float = GAIN) -> Path:
    """(12, n) mV -> WFDB format 16 record; returns the ``.hea`` path."""
    write_wfdb(folder, name, x, fs, adc_gain_per_mv=gain)
    return folder / f"{name}.hea"


def edit_header(hea: Path, old: str, new: str) -> Path:
    text = hea.read_text()
    assert old in text
    hea.write_text(text.replace(old, new))
    return hea


def assert_ecg_error(path: Path, *fragments: str) -> str:
    """load_ecg raises a DataError naming subject, file and every fragment."""
    with pytest.raises(DataError) as info:
        load_ecg(path, subject="B1")
    message = str(info.value)
    assert "subject B1" in message and path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- 1. sampling rate ---------------------------------------------------------------------------


def test_megahertz_sampling_rate_is_refused_when_the_header_is_read(tmp_path: Path) -> None:
    # was: ZeroDivisionError (500/3e6 rounds to 0/1 at denominators <= 1000)
    hea = edit_header(write(tmp_path, "mhz", synthetic_ecg()), "mhz 12 500 ", "mhz 12 3000000 ")
    assert_ecg_error(hea, "implausible sampling frequency", "expected 50-20000 Hz",
                     "found 3000000 Hz")


def test_rate_bounds_and_resampling_ratio_never_zero() -> None:
    check_ecg_rate(ECG_FS_MIN_HZ)
    check_ecg_rate(ECG_FS_MAX_HZ)
    for fs in (ECG_FS_MIN_HZ - 1, ECG_FS_MAX_HZ + 1):
        with pytest.raises(DataError, match="implausible"):
            check_ecg_rate(fs)
    assert rational_ratio(FS, ECG_FS_MAX_HZ) == (1, 40)
    with pytest.raises(DataError, match="too far apart"):
        rational_ratio(FS, 3e6)


# --- 2. negative ADC gain -----------------------------------------------------------------------


@pytest.mark.parametrize("leads", [list(LEADS), ["V2"]])
def test_negative_adc_gain_is_refused(tmp_path: Path, leads: list[str]) -> None:
    hea = write(tmp_path, "neg", synthetic_ecg())
    lines = hea.read_text().splitlines()
    for k, lead in enumerate(LEADS, start=1):
        if lead in leads:
            lines[k] = lines[k].replace(" 1000.0(0)/mV", " -1000.0(0)/mV")
    hea.write_text("\n".join(lines) + "\n")
    message = assert_ecg_error(hea, "ADC gain must be positive",
                               f"lead(s) {', '.join(leads)} ", "found " + leads[0] + ": -1000.0")
    if leads == ["V2"]:
        assert "V1" not in message


# --- 3. duplicated leads ------------------------------------------------------------------------


def test_twelve_identical_leads_are_refused(tmp_path: Path) -> None:
    x = np.tile(synthetic_ecg()[6], (12, 1))  # V1 written into every channel
    assert_ecg_error(write(tmp_path, "same", x), "quality control", "duplicated leads",
                     " = ".join(LEADS))


def test_one_lead_copied_into_another_is_refused(tmp_path: Path) -> None:
    x = synthetic_ecg()
    x[11] = x[10]  # V6 == V5
    message = assert_ecg_error(write(tmp_path, "v5v6", x), "duplicated leads", "V5 = V6")
    assert "Einthoven" not in message and "V4" not in message


# --- 4. Einthoven and Goldberger ----------------------------------------------------------------


def test_lead_iii_replaced_by_noise_breaks_einthoven(tmp_path: Path) -> None:
    x = synthetic_ecg()
    x[2] = np.random.default_rng(0).normal(0.0, 0.2, x.shape[1])
    message = assert_ecg_error(write(tmp_path, "noise3", x), "quality control",
                               "limb leads violate Einthoven: II ≠ I + III", "lead III replaced")
    assert "Goldberger" not in message  # aVR, aVL, aVF still agree with I and II


def test_inverted_avl_breaks_goldberger(tmp_path: Path) -> None:
    x = synthetic_ecg(seed=2)
    x[4] *= -1
    message = assert_ecg_error(write(tmp_path, "inv", x), "Goldberger: aVL ≠ I - II/2",
                               "lead aVL replaced")
    assert "Einthoven" not in message


def test_tolerance_follows_the_records_quantisation_step(tmp_path: Path) -> None:
    # 50 µV per step (coarser than the AHA's 5 µV): each lead is rounded on its own, so the
    # relations hold only to ~25 µV RMS; the header's gain says so, and the record loads
    x = synthetic_ecg(seed=3)
    assert load_ecg(write(tmp_path, "coarse", x, gain=20.0)).shape == (12, ECG_N_SAMPLES)
    stored = np.round(x * 20.0) / 20.0
    assert any("Einthoven" in p for p in qc_ecg(stored, FS))  # the 10 µV floor without it
    assert qc_ecg(stored, FS, step_mv=0.05) == []


# --- 5. clipped R peaks -------------------------------------------------------------------------


def clip_r_peaks(lead: np.ndarray, fs: float, plateau_s: float) -> np.ndarray:
    """``lead`` clipped at the highest level that flattens every R peak for >= plateau_s."""
    peaks, _ = find_peaks(lead, distance=round(0.3 * fs), height=0.6 * lead.max())
    k, half = round(plateau_s * fs), round(0.03 * fs)
    level = min(np.sort(lead[p - half:p + half + 1])[-k] for p in peaks)
    return np.minimum(lead, level)


def test_r_peaks_clipped_shorter_than_the_saturation_run_are_refused(tmp_path: Path) -> None:
    x = np.round(synthetic_ecg() * GAIN) / GAIN
    v5 = LEADS.index("V5")
    x[v5] = clip_r_peaks(x[v5], FS, plateau_s=0.012)  # 12 ms flat tops on every beat
    at_top = np.flatnonzero(x[v5] == x[v5].max())
    assert len(at_top) >= 6 * 10  # >= 10 beats, >= 6 samples each ...
    runs = np.split(at_top, np.flatnonzero(np.diff(at_top) > 1) + 1)
    assert max(map(len, runs)) < SATURATION_RUN_S * FS  # ... each far shorter than 50 ms
    message = assert_ecg_error(write(tmp_path, "clip", x), "clipped peaks", "): V5")
    assert "V4" not in message


@pytest.mark.parametrize("fs", [250, 500, 1000])
def test_natural_peaks_are_not_called_clipped(fs: int) -> None:
    t = np.arange(10 * fs) / fs
    # noise-free, strictly periodic peaks: every beat reaches exactly the same top ADC code,
    # and the broad ones stay on it for several samples, yet nothing was clipped
    for width_s in (0.008, 0.015, 0.04, 0.08):
        spikes = 1.5 * np.exp(-0.5 * ((t % 0.8 - 0.4) / width_s) ** 2)
        slow = 0.8 * np.sin(2 * np.pi * 1.1 * t)  # 1.1 Hz: tops ~15 ms within 1 µV
        x = with_limb_relations(np.stack([spikes, slow, *(spikes * s for s in
                                          np.linspace(0.4, 1.6, 10))]))
        x = np.round(x * GAIN) / GAIN
        assert qc_ecg(x, fs, step_mv=1 / GAIN) == [], width_s


# --- 6. GE CardioSoft XML -----------------------------------------------------------------------


def test_gigahertz_cardiosoft_sample_rate_is_refused(tmp_path: Path) -> None:
    xml = write_ge_xml(tmp_path / "1000001_20205_2_0.xml", synthetic_ecg(), FS)
    text = xml.read_text(encoding="iso-8859-1")
    text, n = re.subn(r'(<SampleRate units="Hz">)500(</SampleRate>)', r"\g<1>1000000000\2", text)
    assert n == 1
    xml.write_text(text, encoding="iso-8859-1")
    for call in (lambda: read_ge_xml(xml), lambda: convert_ge_xml(xml, tmp_path / "out", "r")):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert xml.name in message and "implausible StripData SampleRate" in message, message
        assert "expected 50-20000 Hz; found 1000000000 Hz" in message, message
    assert not (tmp_path / "out" / "r.hea").exists()



def test_megahertz_dicom_sampling_frequency_is_refused(tmp_path: Path) -> None:
    from writers.dicom_ecg import write_dicom_ecg

    from ecgcmr.convert.ecg_dicom import read_dicom_ecg

    dcm = write_dicom_ecg(tmp_path / "fast.dcm", synthetic_ecg(), 200_000.0)
    with pytest.raises(DataError) as info:
        read_dicom_ecg(dcm)
    message = str(info.value)
    assert "fast.dcm" in message and "SamplingFrequency of multiplex group 1" in message, message
    assert "found 200000 Hz" in message, message

# --- what must still load -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("step_uv", [1.0, 5.0])
def test_synthetic_ecgs_pass_every_check(tmp_path: Path, seed: int, step_uv: float) -> None:
    hea = write(tmp_path, "syn", synthetic_ecg(seed=seed), gain=1000.0 / step_uv)
    assert load_ecg(hea).shape == (12, ECG_N_SAMPLES)


def test_synthetic_cohort_loads(tiny_cohort: Path) -> None:
    df = read_manifest(tiny_cohort)
    for sid, path in zip(df["subject_id"], df["ecg_path"], strict=True):
        assert load_ecg(path, subject=sid).shape == (12, ECG_N_SAMPLES)


@pytest.mark.parametrize(("fs", "resolution_uv"), [(250, 5.0), (500, 4.88), (1000, 5.0)])
def test_converted_cardiosoft_records_load(tmp_path: Path, fs: int, resolution_uv: float) -> None:
    xml = write_ge_xml(tmp_path / "a.xml", synthetic_ecg(fs, seed=4), fs,
                       resolution_uv=resolution_uv)
    done = convert_ge_xml(xml, tmp_path / "wfdb", "rec")
    assert load_ecg(done.record).shape == (12, ECG_N_SAMPLES)
