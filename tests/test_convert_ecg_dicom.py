"""DICOM 12-lead ECG waveform -> WFDB at 500 Hz: calibration (sensitivity, units, correction,
baseline), lead codes and labels in any order, rhythm/median group choice, resampling, and
every malformed input named in the error.

Inputs are written in the real format by ``write_dicom_ecg`` (pydicom) from known signals.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from writers.dicom_ecg import write_dicom_ecg

from ecgcmr.constants import LEADS
from ecgcmr.convert.ecg_dicom import convert_dicom_ecg, read_dicom_ecg
from ecgcmr.data.ecg import load_ecg, read_ecg
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state


def synthetic_ecg(fs: int, seed: int = 5) -> np.ndarray:
    """(12, 10 s * fs) mV from the project's ECG simulator."""
    state = sample_state(np.random.default_rng(seed), f"DCM{seed}")
    return simulate_ecg(state, np.random.default_rng(seed + 100), fs=fs)


def smooth_ecg(fs: float, seconds: float = 10.0) -> np.ndarray:
    """(12, n) mV of slow sines (< 10 Hz): known exactly at any sampling rate."""
    t = np.arange(round(fs * seconds)) / fs
    freqs = np.linspace(0.9, 9.5, 12)[:, None]
    phases = np.linspace(0.0, 3.0, 12)[:, None]
    return 0.8 * np.sin(2 * np.pi * freqs * t + phases)


def quantised(x: np.ndarray, step_uv: float) -> np.ndarray:
    return np.round(x * 1000.0 / step_uv) * step_uv / 1000.0


@pytest.fixture(scope="module")
def ecg500() -> np.ndarray:
    return synthetic_ecg(500)


def resaved(path: Path, edit: object) -> Path:
    """A copy of a DICOM file after ``edit(dataset)``."""
    ds = pydicom.dcmread(path)
    edit(ds)  # type: ignore[operator]
    out = path.with_name("edited_" + path.name)
    ds.save_as(out, enforce_file_format=True)
    return out


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("step_uv", [2.5, 4.88])
def test_round_trip_at_500_hz_is_exact(tmp_path: Path, ecg500: np.ndarray,
                                       step_uv: float) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, sensitivity_uv=step_uv)
    truth = quantised(ecg500, step_uv)

    ecg = read_dicom_ecg(dcm)
    assert ecg.fs == 500 and ecg.rhythm_mv.shape == (12, 5000)
    np.testing.assert_allclose(ecg.step_uv, step_uv)
    np.testing.assert_allclose(ecg.rhythm_mv, truth, rtol=0, atol=1e-9)

    record = convert_dicom_ecg(dcm, tmp_path / "wfdb", "rec")
    y, fs = read_ecg(record)
    assert fs == 500
    np.testing.assert_allclose(y, truth, rtol=0, atol=step_uv / 1000.0)  # within one LSB
    np.testing.assert_array_equal(np.round(y * 1000.0 / step_uv),
                                  np.round(truth * 1000.0 / step_uv))  # the same ADC steps
    assert load_ecg(record).shape == (12, 5000)


@pytest.mark.parametrize(("units", "correction", "baseline"), [
    ("mV", 1.0, 0.0), ("uV", 1.25, 0.0), ("uV", 1.0, 40.0), ("mV", 0.8, -0.03),
])
def test_units_correction_factor_and_baseline_are_applied(
    tmp_path: Path, ecg500: np.ndarray, units: str, correction: float, baseline: float
) -> None:
    step_uv = 2.5
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, sensitivity_uv=step_uv, units=units,
                          correction_factor=correction, baseline=baseline)
    channel = pydicom.dcmread(dcm).WaveformSequence[0].ChannelDefinitionSequence[0]
    assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == units
    ecg = read_dicom_ecg(dcm)
    np.testing.assert_allclose(ecg.step_uv, step_uv, rtol=1e-9)
    np.testing.assert_allclose(ecg.rhythm_mv, ecg500, rtol=0, atol=0.5 * step_uv / 1000 + 1e-9)


@pytest.mark.parametrize("fs", [250, 1000])
def test_other_rates_keep_the_files_rate_and_samples(tmp_path: Path, fs: int) -> None:
    """The record is the file's samples at the file's rate (nothing resampled on the way;
    the loader brings a record to 500 Hz at use: the 1000 Hz test below)."""
    step_uv = 2.5
    dcm = write_dicom_ecg(tmp_path / "a.dcm", smooth_ecg(fs), fs, sensitivity_uv=step_uv)
    ecg = read_dicom_ecg(dcm)
    assert ecg.fs == fs and ecg.rhythm_mv.shape == (12, 10 * fs)
    y, fs_out = read_ecg(convert_dicom_ecg(dcm, tmp_path / "wfdb", "rec"))
    assert fs_out == fs and y.shape == (12, 10 * fs)
    np.testing.assert_array_equal(np.round(y * 1000.0 / step_uv),
                                  np.round(ecg.rhythm_mv * 1000.0 / step_uv))  # the same steps


def test_simulated_ecg_at_1000_hz_converts_and_loads(tmp_path: Path) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", synthetic_ecg(1000), 1000)
    record = convert_dicom_ecg(dcm, tmp_path / "wfdb", "rec")
    assert load_ecg(record).shape == (12, 5000)


# --- leads -----------------------------------------------------------------------------------

SHUFFLE = [7, 0, 11, 3, 5, 1, 9, 2, 4, 6, 10, 8]


@pytest.mark.parametrize("scheme", ["MDC", "SCPECG", "99LOCAL"])
def test_shuffled_and_case_varied_lead_labels(tmp_path: Path, ecg500: np.ndarray,
                                              scheme: str) -> None:
    # with a private coding scheme only the (case-varied) Code Meaning identifies the lead
    labels = [f"lead {LEADS[i].upper()}" if k % 2 else LEADS[i].lower()
              for k, i in enumerate(SHUFFLE)]
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, lead_order=labels,
                          coding_scheme=scheme)
    sources = [ch.ChannelSourceSequence[0]
               for ch in pydicom.dcmread(dcm).WaveformSequence[0].ChannelDefinitionSequence]
    assert [s.CodeMeaning for s in sources] == labels
    np.testing.assert_allclose(read_dicom_ecg(dcm).rhythm_mv, quantised(ecg500, 2.5), atol=1e-9)


def test_channel_label_is_the_last_resort(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)

    def labels_only(ds: pydicom.Dataset) -> None:
        for channel, lead in zip(ds.WaveformSequence[0].ChannelDefinitionSequence, LEADS,
                                 strict=True):
            del channel.ChannelSourceSequence
            channel.ChannelLabel = lead.upper()

    edited = resaved(dcm, labels_only)
    np.testing.assert_allclose(read_dicom_ecg(edited).rhythm_mv, quantised(ecg500, 2.5),
                               atol=1e-9)


# --- groups ----------------------------------------------------------------------------------


def test_median_group_is_read_and_never_taken_for_the_rhythm(
    tmp_path: Path, ecg500: np.ndarray
) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, median_mv=ecg500[:, :600])

    def median_first(ds: pydicom.Dataset) -> None:
        ds.WaveformSequence = pydicom.Sequence(list(reversed(ds.WaveformSequence)))

    for path in (dcm, resaved(dcm, median_first)):
        ecg = read_dicom_ecg(path)
        assert ecg.rhythm_mv.shape == (12, 5000)
        assert ecg.median_mv is not None and ecg.median_mv.shape == (12, 600)
        assert ecg.median_fs == 500
        np.testing.assert_allclose(ecg.median_mv, quantised(ecg500[:, :600], 2.5), atol=1e-9)


def test_unlabelled_groups_are_told_apart_by_duration(tmp_path: Path,
                                                      ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, median_mv=ecg500[:, :600],
                          group_labels=None)

    def median_first(ds: pydicom.Dataset) -> None:
        ds.WaveformSequence = pydicom.Sequence(list(reversed(ds.WaveformSequence)))

    ecg = read_dicom_ecg(resaved(dcm, median_first))
    assert "MultiplexGroupLabel" not in pydicom.dcmread(dcm).WaveformSequence[0]
    assert ecg.rhythm_mv.shape == (12, 5000)
    assert ecg.median_mv is not None and ecg.median_mv.shape == (12, 600)


# --- malformed files -------------------------------------------------------------------------


def assert_error(path: Path, *fragments: str) -> None:
    """read_dicom_ecg(path) raises DataError naming the file and each fragment of the problem."""
    with pytest.raises(DataError) as info:
        read_dicom_ecg(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not a dicom file" * 20)
    assert_error(path, "not a DICOM file")


def test_not_a_waveform_file(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)

    def as_ct(ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"

    assert_error(resaved(dcm, as_ct), "not a DICOM ECG waveform file",
                 "1.2.840.10008.5.1.4.1.1.9.1.1", "'1.2.840.10008.5.1.4.1.1.2'")


def test_no_waveform_sequence(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)

    def drop(ds: pydicom.Dataset) -> None:
        del ds.WaveformSequence

    assert_error(resaved(dcm, drop), "no Waveform Sequence")


def test_missing_leads(tmp_path: Path, ecg500: np.ndarray) -> None:
    labels = [lead for lead in LEADS if lead not in ("aVL", "V4")]
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, lead_order=labels)
    assert_error(dcm, "RHYTHM", "missing leads: aVL, V4")


def test_unknown_units(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, units="mmHg")
    assert_error(dcm, "unknown amplitude units", "'mmHg'")


def test_inconsistent_channel_counts(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)

    def one_definition_less(ds: pydicom.Dataset) -> None:
        group = ds.WaveformSequence[0]
        group.ChannelDefinitionSequence = pydicom.Sequence(
            list(group.ChannelDefinitionSequence)[:-1])

    assert_error(resaved(dcm, one_definition_less), "inconsistent channel counts",
                 "found 11 channel definitions")


def test_truncated_waveform_data(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)
    cut = tmp_path / "cut.dcm"
    data = dcm.read_bytes()
    cut.write_bytes(data[:-4000])  # the Waveform Data element is last: its end is lost
    assert_error(cut, "truncated waveform data", "expected 120000 bytes", "found 116000 bytes")


def test_no_rhythm_group(tmp_path: Path) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", smooth_ecg(500, seconds=3.0), 500,
                          group_labels=None)
    assert_error(dcm, "no rhythm multiplex group", "lasting >= 5 s", "3.00 s")


def test_unsupported_sample_encoding(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500)

    def twelve_bits(ds: pydicom.Dataset) -> None:
        ds.WaveformSequence[0].WaveformBitsAllocated = 12

    assert_error(resaved(dcm, twelve_bits), "unsupported sample encoding", "12 bit SS")


def test_convert_names_the_dicom_file(tmp_path: Path, ecg500: np.ndarray) -> None:
    dcm = write_dicom_ecg(tmp_path / "a.dcm", ecg500, 500, units="mmHg")
    with pytest.raises(DataError, match=re.escape(str(dcm))):
        convert_dicom_ecg(dcm, tmp_path / "wfdb", "rec")
    assert not (tmp_path / "wfdb" / "rec.hea").exists()
