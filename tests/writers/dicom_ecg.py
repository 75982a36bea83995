"""Write a 12-lead ECG as a DICOM 12-lead ECG Waveform Storage file (pydicom).

For tests and demos of :mod:`ecgcmr.convert.ecg_dicom`: a synthetic strip becomes a file with
the modules of the 12-lead ECG IOD (DICOM PS3.3 A.34.3: Patient, General Study, General Series,
General Equipment, Waveform Identification, Acquisition Context, Waveform, SOP Common) and a
Part 10 file meta header. The rhythm is one multiplex group (``RHYTHM``); an optional median
beat is a second one (``MEDIAN BEAT``). Samples are 16-bit signed (SS), quantised at
``sensitivity_uv`` per step, channels coded with PS3.16 CID 3001 lead codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, TwelveLeadECGWaveformStorage, generate_uid

from ecgcmr.constants import LEADS
from ecgcmr.data.ecg import normalise_lead_name  # the reader's own alias rules

# PS3.16 CID 3001 "ECG Lead": MDC code "2:n" / SCPECG "5.6.3-9-n" and the code meaning.
_LEAD_NUMBER: dict[str, int] = {
    "I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64,
    "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
}
_LEAD_MEANING: dict[str, str] = {
    **{lead: f"Lead {lead}" for lead in LEADS},
    "aVR": "aVR, augmented voltage, right",
    "aVL": "aVL, augmented voltage, left",
    "aVF": "aVF, augmented voltage, foot",
}
# UCUM unit codes (PS3.16 CID 3082 "Waveform Units of Measurement") -> mV per unit
_UNIT_MEANING = {"uV": ("microvolt", 1e-3), "mV": ("millivolt", 1.0)}
_INT16_MIN, _INT16_MAX = -32768, 32767


def write_dicom_ecg(
    path: str | PathLike[str],
    rhythm_mv: np.ndarray,
    fs: float,
    *,
    sensitivity_uv: float = 2.5,
    median_mv: np.ndarray | None = None,
    median_fs: float | None = None,
    lead_order: Sequence[str] | None = None,
    coding_scheme: str = "MDC",
    units: str = "uV",
    correction_factor: float = 1.0,
    baseline: float = 0.0,
    group_labels: tuple[str, str] | None = ("RHYTHM", "MEDIAN BEAT"),
) -> Path:
    """Write ``rhythm_mv`` ``(12, n)`` mV (LEADS order) at ``fs`` Hz as a DICOM ECG file.

    ``sensitivity_uv``: µV per ADC step (written as Channel Sensitivity in ``units``, ``"uV"``
    or ``"mV"``; any other string is written as given, to make files with unknown units).
    ``correction_factor`` and ``baseline`` (in ``units``) are written per channel and applied
    when quantising, so a correct reader recovers the signal within one step.
    ``lead_order``: the channel labels in file order (any case/alias, e.g. ``"lead avr"``),
    written as Code Meaning; default LEADS with the CID 3001 meanings.
    ``coding_scheme``: ``"MDC"`` (codes ``2:n``), ``"SCPECG"`` (``5.6.3-9-n``), or any other
    designator, whose code value is then the label itself (the reader must use the meaning).
    ``group_labels``: Multiplex Group Labels of the rhythm and median groups; None leaves them
    out. Returns the path written.
    """
    path = Path(path)
    labels = list(lead_order) if lead_order is not None else [_LEAD_MEANING[x] for x in LEADS]
    leads = [_lead_of(label) for label in labels]
    ds = _dataset()
    step = _Quantiser(sensitivity_uv, units, correction_factor, baseline)
    rhythm_label, median_label = group_labels if group_labels is not None else (None, None)
    groups = [_group(np.asarray(rhythm_mv, dtype=np.float64), fs, labels, leads, step,
                     coding_scheme, rhythm_label)]
    if median_mv is not None:
        groups.append(_group(np.asarray(median_mv, dtype=np.float64), median_fs or fs, labels,
                             leads, step, coding_scheme, median_label))
    ds.WaveformSequence = DicomSequence(groups)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class _Quantiser:
    """mV -> ADC steps for the written calibration: value = step x sens x corr + baseline."""

    def __init__(self, sensitivity_uv: float, units: str, correction: float, baseline: float):
        if not sensitivity_uv > 0 or not correction > 0:
            raise ValueError("sensitivity_uv and correction_factor must be > 0")
        self.units = units
        _, mv_per_unit = _UNIT_MEANING.get(units, ("", 1e-3))  # unknown units: written as uV
        self.sensitivity = sensitivity_uv * 1e-3 / mv_per_unit / correction  # in units
        self.correction = correction
        self.baseline = baseline  # in units
        self.mv_per_unit = mv_per_unit

    def steps(self, x_mv: np.ndarray) -> np.ndarray:
        value = x_mv / self.mv_per_unit - self.baseline
        steps = np.round(value / (self.sensitivity * self.correction))
        if steps.min() < _INT16_MIN or steps.max() > _INT16_MAX:
            raise ValueError("signal does not fit 16-bit samples at this sensitivity")
        return steps.astype("<i2")


def _lead_of(label: str) -> str:
    lead, sign = normalise_lead_name(label.split(",")[0])
    if lead is None or sign < 0:
        raise ValueError(f"lead label {label!r} is not one of the 12 standard leads")
    return lead


def _dataset() -> Dataset:
    """Every module of the 12-lead ECG IOD except the Waveform Sequence itself."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = TwelveLeadECGWaveformStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = TwelveLeadECGWaveformStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SYNTHETIC", "SYN", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ECG", 1, 1
    ds.Manufacturer = "ecgcmr synthetic"
    ds.ContentDate, ds.ContentTime = "20200101", "120000"
    ds.AcquisitionDateTime = "20200101120000"
    ds.AcquisitionContextSequence = DicomSequence([])
    return ds


def _group(x: np.ndarray, fs: float, labels: Sequence[str], leads: Sequence[str],
           step: _Quantiser, coding_scheme: str, label: str | None) -> Dataset:
    if x.ndim != 2 or x.shape[0] != len(LEADS) or not np.isfinite(x).all():
        raise ValueError(f"signals must be finite (12, n) arrays in mV, got shape {x.shape}")
    rows = [LEADS.index(lead) for lead in leads]
    digital = step.steps(x[rows])                     # (channels, n) in file channel order
    item = Dataset()
    if label is not None:
        item.MultiplexGroupLabel = label
    item.WaveformOriginality = "ORIGINAL"
    item.NumberOfWaveformChannels = len(rows)
    item.NumberOfWaveformSamples = x.shape[1]
    item.SamplingFrequency = f"{fs:g}"
    item.MultiplexGroupTimeOffset = "0"
    item.ChannelDefinitionSequence = DicomSequence(
        [_channel(text, lead, step, coding_scheme) for text, lead in zip(labels, leads,
                                                                         strict=True)])
    item.WaveformBitsAllocated = 16
    item.WaveformSampleInterpretation = "SS"
    # channels interleaved sample by sample (PS3.3 C.10.9.1): (n, channels) row-major
    item.add_new(0x54001010, "OW", np.ascontiguousarray(digital.T).tobytes())
    return item


def _channel(label: str, lead: str, step: _Quantiser, coding_scheme: str) -> Dataset:
    source = Dataset()
    number = _LEAD_NUMBER[lead]
    if coding_scheme == "MDC":
        source.CodeValue = f"2:{number}"
    elif coding_scheme == "SCPECG":
        source.CodeValue = f"5.6.3-9-{number}"
    else:
        source.CodeValue = label[:16]
    source.CodingSchemeDesignator = coding_scheme
    source.CodeMeaning = label
    unit = Dataset()
    unit.CodeValue = step.units
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = _UNIT_MEANING.get(step.units, (step.units, 0.0))[0]
    channel = Dataset()
    channel.ChannelSourceSequence = DicomSequence([source])
    channel.ChannelSensitivity = f"{step.sensitivity:.10g}"
    channel.ChannelSensitivityUnitsSequence = DicomSequence([unit])
    channel.ChannelSensitivityCorrectionFactor = f"{step.correction:.10g}"
    channel.ChannelBaseline = f"{step.baseline:.10g}"
    channel.ChannelTimeSkew = "0"
    channel.WaveformBitsStored = 16
    return channel
