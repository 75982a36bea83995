"""DICOM ECG waveform (12-lead ECG / General ECG Waveform Storage) -> WFDB at 500 Hz.

What is read, from DICOM PS3.3 C.10.9 "Waveform Module" (one *multiplex group* per item of the
Waveform Sequence (5400,0100); each group has its own Sampling Frequency (003A,001A), Number of
Waveform Channels (003A,0005), Number of Waveform Samples (003A,0010), Waveform Bits Allocated
(5400,1004), Waveform Sample Interpretation (5400,1006) and Waveform Data (5400,1010), the
channels interleaved sample by sample: C1S1, C2S1, ... CnS1, C1S2 ...) and its Channel
Definition Sequence (003A,0200), one item per channel:

* the lead, from Channel Source Sequence (003A,0208): a code of PS3.16 CID 3001 "ECG Lead"
  (MDC ``2:1`` = Lead I ..., or the legacy SCPECG ``5.6.3-9-1`` with the same lead numbers),
  else its Code Meaning (``"Lead aVR"``, ``"aVR, augmented voltage, right"``), else the Channel
  Label (003A,0203);
* the amplitude: value = sample x Channel Sensitivity (003A,0210) x Channel Sensitivity
  Correction Factor (003A,0212) + Channel Baseline (003A,0213), in the units of Channel
  Sensitivity Units Sequence (003A,0211) (UCUM ``uV``, ``mV`` ...). (pydicom's
  ``multiplex_array(as_raw=False)`` applies the same formula.)

Which group is the rhythm strip (the rule): a group whose Multiplex Group Label (003A,0020)
names it (contains ``RHYTHM``) wins; a group labelled ``MEDIAN``/``AVERAGE``/``REPRESENTATIVE``/
``BEAT`` is the median beat, never the rhythm. Without labels, the rhythm is the longest group
(samples / rate) lasting at least MIN_RHYTHM_S, and a group shorter than MAX_MEDIAN_S is the
median beat. Every problem raises :class:`~ecgcmr.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ecgcmr.constants import LEADS

# Private helpers of the WFDB reader, imported on purpose so DICOM leads and units follow the
# very same rules: lead names/aliases/duplicates/missing, unit strings -> mV factor, and the
# rational up/down factors of its resampler.
from ecgcmr.data.ecg import UNIT_TO_MV, check_ecg_rate, match_leads
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError

#: Storage SOP classes read (DICOM PS3.4 Annex B / PS3.6 Annex A).
ECG_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG Waveform Storage",
}
MIN_RHYTHM_S = 5.0   # an unlabelled group this long or longer can be the rhythm strip
MAX_MEDIAN_S = 2.0   # an unlabelled group shorter than this is a median/representative beat
MIN_ADC_STEP_UV = 1.0  # finest step written to WFDB: 1 µV keeps ±32 mV inside format 16

_RHYTHM_WORDS = ("RHYTHM",)
_MEDIAN_WORDS = ("MEDIAN", "AVERAGE", "REPRESENTATIVE", "BEAT")

# (Waveform Bits Allocated, Waveform Sample Interpretation) -> little-endian numpy dtype
# (PS3.3 C.10.9.1.5: SB/UB 8 bit, SS/US 16 bit, SL/UL 32 bit)
_SAMPLE_DTYPES: dict[tuple[int, str], str] = {
    (8, "SB"): "<i1", (8, "UB"): "<u1",
    (16, "SS"): "<i2", (16, "US"): "<u2",
    (32, "SL"): "<i4", (32, "UL"): "<u4",
}

# PS3.16 CID 3001: MDC partition-2 code offsets (code "2:n", or 131072 + n as a number) and
# SCPECG lead numbers ("5.6.3-9-n") use the same n for the 12 standard leads.
_LEAD_BY_NUMBER: dict[int, str] = {
    1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
    3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6",
}
_MDC_PARTITION_2 = 2 * 65536  # MDC numeric codes: partition << 16 | code
_LEAD_CODING_SCHEMES = ("MDC", "SCPECG")
_LEAD_CODE = re.compile(r"^(?:2:|5\.6\.3-9-)(\d+)$")


@dataclass(frozen=True)
class DicomEcg:
    """One DICOM ECG, in physical units."""

    rhythm_mv: np.ndarray           # (12, n) float64 mV, LEADS order, at fs
    fs: float                       # rhythm sampling rate, Hz (from the file)
    median_mv: np.ndarray | None    # (12, m) float64 mV median beat, or None
    median_fs: float | None         # median-beat sampling rate, Hz
    step_uv: np.ndarray             # (12,) µV per ADC step of each rhythm lead


@dataclass(frozen=True)
class _Group:
    index: int       # position in the Waveform Sequence
    label: str       # Multiplex Group Label, upper case ('' when absent)
    fs: float
    n_samples: int

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


# ============================================================================================
# Reading
# ============================================================================================


def read_dicom_ecg(path: str | PathLike[str]) -> DicomEcg:
    """Read the rhythm group (and the median beat, if any) of a DICOM ECG waveform file.

    Raises :class:`DataError` naming the file for: not DICOM / unreadable, not an ECG waveform
    SOP class, no Waveform Sequence, no rhythm group, a missing lead, unknown or missing
    amplitude units or sensitivity, channel counts that disagree, unsupported sample encoding,
    or waveform data shorter than channels x samples x bytes.
    """
    path = Path(path)
    try:
        ds = _read_dataset(path)
        groups = _groups(ds)
        rhythm, median = _pick_groups(groups)
        rhythm_mv, step_uv = _decode_group(ds.WaveformSequence[rhythm.index], rhythm, path)
        median_mv = None
        if median is not None:
            median_mv, _ = _decode_group(ds.WaveformSequence[median.index], median, path)
        return DicomEcg(rhythm_mv=rhythm_mv, fs=rhythm.fs, median_mv=median_mv,
                        median_fs=None if median is None else median.fs, step_uv=step_uv)
    except DataError as exc:
        raise exc.with_context(path=path) from exc


def _read_dataset(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DataError(f"not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises EOFError/struct.error/OSError... for a cut file
        raise DataError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop not in ECG_SOP_CLASSES:
        raise DataError("not a DICOM ECG waveform file",
                        expected="SOP class " + " or ".join(ECG_SOP_CLASSES),
                        found=repr(sop) if sop else "no SOP Class UID")
    if not ds.get("WaveformSequence"):
        raise DataError("no Waveform Sequence (5400,0100)", expected="at least one multiplex group")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not syntax.is_little_endian:
        raise DataError("big-endian waveform data is not supported",
                        expected="a little-endian transfer syntax", found=str(syntax))
    return ds


def _groups(ds: Dataset) -> list[_Group]:
    groups = []
    for index, item in enumerate(ds.WaveformSequence):
        fs = _number(item, "SamplingFrequency", f"multiplex group {index + 1}")
        n = int(_number(item, "NumberOfWaveformSamples", f"multiplex group {index + 1}"))
        if not (fs > 0 and n > 0):
            raise DataError(f"multiplex group {index + 1}: invalid sampling frequency or length",
                            expected="positive values", found=f"{fs} Hz, {n} samples")
        check_ecg_rate(fs, what=f"SamplingFrequency of multiplex group {index + 1}")
        label = str(item.get("MultiplexGroupLabel", "") or "").strip().upper()
        groups.append(_Group(index=index, label=label, fs=fs, n_samples=n))
    return groups


def _pick_groups(groups: list[_Group]) -> tuple[_Group, _Group | None]:
    """(rhythm, median or None) by the rule in the module docstring."""
    def named(words: tuple[str, ...]) -> list[_Group]:
        return [g for g in groups if any(w in g.label for w in words)]

    medians = named(_MEDIAN_WORDS)
    rhythms = [g for g in named(_RHYTHM_WORDS) if g not in medians]
    if not rhythms:
        unlabelled = [g for g in groups if g not in medians and g.duration_s >= MIN_RHYTHM_S]
        rhythms = sorted(unlabelled, key=lambda g: g.duration_s, reverse=True)
    if not rhythms:
        found = "; ".join(f"group {g.index + 1} {g.label or '(no label)'} {g.duration_s:.2f} s"
                          for g in groups)
        raise DataError("no rhythm multiplex group",
                        expected=f"a group labelled RHYTHM or lasting >= {MIN_RHYTHM_S:g} s",
                        found=found)
    rhythm = rhythms[0]
    if not medians:
        medians = [g for g in groups if g is not rhythm and g.duration_s < MAX_MEDIAN_S]
    return rhythm, (medians[0] if medians else None)


def _decode_group(item: Dataset, group: _Group, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One multiplex group -> ``((12, n) float64 mV in LEADS order, (12,) µV per step)``."""
    where = f"multiplex group {group.index + 1}" + (f" ({group.label})" if group.label else "")
    raw = _samples(item, where)                                      # (channels, n)
    channels = list(item.get("ChannelDefinitionSequence") or [])
    if len(channels) != raw.shape[0]:
        raise DataError(f"{where}: inconsistent channel counts",
                        expected=f"Number of Waveform Channels = {raw.shape[0]} channel "
                                 "definitions", found=f"{len(channels)} channel definitions")
    names = [_channel_name(ch) for ch in channels]
    try:
        columns, signs = match_leads(names, path)
    except DataError as exc:
        raise DataError(f"{where}: {exc.problem}", expected=exc.expected, found=exc.found
                        ) from None
    mv = np.empty((len(LEADS), raw.shape[1]), dtype=np.float64)
    step_uv = np.empty(len(LEADS), dtype=np.float64)
    for row, (column, sign) in enumerate(zip(columns, signs, strict=True)):
        scale, offset = _calibration(channels[column], names[column], where)  # mV per step, mV
        mv[row] = sign * (raw[column] * scale + offset)
        step_uv[row] = abs(scale) * 1000.0
    return mv, step_uv


def _samples(item: Dataset, where: str) -> np.ndarray:
    """Waveform Data of one group -> ``(channels, samples)`` integers as float64."""
    n_channels = int(_number(item, "NumberOfWaveformChannels", where))
    n_samples = int(_number(item, "NumberOfWaveformSamples", where))
    bits = int(_number(item, "WaveformBitsAllocated", where))
    interpretation = str(item.get("WaveformSampleInterpretation", "")).strip()
    dtype = _SAMPLE_DTYPES.get((bits, interpretation))
    if dtype is None:
        raise DataError(f"{where}: unsupported sample encoding",
                        expected=", ".join(f"{b} bit {i}" for b, i in _SAMPLE_DTYPES),
                        found=f"{bits} bit {interpretation or '(none)'}")
    data = item.get("WaveformData")
    if data is None:
        raise DataError(f"{where}: no Waveform Data (5400,1010)")
    data = bytes(data)
    expected = n_channels * n_samples * np.dtype(dtype).itemsize
    if len(data) < expected:
        raise DataError(f"{where}: truncated waveform data",
                        expected=f"{expected} bytes ({n_channels} channels x {n_samples} samples "
                                 f"x {bits} bit)", found=f"{len(data)} bytes")
    values = np.frombuffer(data[:expected], dtype=dtype).reshape(n_samples, n_channels)
    return values.T.astype(np.float64)


def _channel_name(channel: Dataset) -> str:
    """A lead name the WFDB reader's matcher understands ('' when the channel has none)."""
    sources = channel.get("ChannelSourceSequence") or []
    if sources:
        code = sources[0]
        scheme = str(code.get("CodingSchemeDesignator", "") or "").strip().upper()
        if scheme in _LEAD_CODING_SCHEMES:
            lead = _lead_from_code(str(code.get("CodeValue", "") or "").strip())
            if lead is not None:
                return lead
        meaning = str(code.get("CodeMeaning", "") or "").strip()
        if meaning:
            # "aVR, augmented voltage, right" -> "aVR"; "Derived Lead III" -> "Lead III"
            return re.sub(r"^derived\s+", "", meaning.split(",")[0].strip(), flags=re.I)
    return str(channel.get("ChannelLabel", "") or "").strip()


def _lead_from_code(value: str) -> str | None:
    match = _LEAD_CODE.match(value)
    if match:
        return _LEAD_BY_NUMBER.get(int(match.group(1)))
    if value.isdigit() and int(value) > _MDC_PARTITION_2:
        return _LEAD_BY_NUMBER.get(int(value) - _MDC_PARTITION_2)
    return None


def _calibration(channel: Dataset, name: str, where: str) -> tuple[float, float]:
    """(mV per ADC step, offset in mV) of one channel: sensitivity x correction, baseline."""
    sensitivity = _number(channel, "ChannelSensitivity", f"{where}, lead {name}")
    if not (math.isfinite(sensitivity) and sensitivity != 0):
        raise DataError(f"{where}, lead {name}: invalid Channel Sensitivity",
                        expected="a non-zero number", found=str(sensitivity))
    correction = _optional_number(channel, "ChannelSensitivityCorrectionFactor", 1.0)
    baseline = _optional_number(channel, "ChannelBaseline", 0.0)
    to_mv = _units_to_mv(channel, name, where)
    return sensitivity * correction * to_mv, baseline * to_mv


def _units_to_mv(channel: Dataset, name: str, where: str) -> float:
    units = channel.get("ChannelSensitivityUnitsSequence") or []
    if not units:
        raise DataError(f"{where}, lead {name}: no Channel Sensitivity Units Sequence",
                        expected="UCUM uV or mV")
    code = units[0]
    for text in (code.get("CodeValue"), code.get("CodeMeaning")):
        factor = UNIT_TO_MV.get(str(text or "").strip().casefold())
        if factor is not None:
            return factor
    raise DataError(f"{where}, lead {name}: unknown amplitude units",
                    expected="uV, mV, V or nV",
                    found=repr(str(code.get("CodeValue", "") or code.get("CodeMeaning", ""))))


def _number(item: Dataset, keyword: str, where: str) -> float:
    value = item.get(keyword)
    if value is None or value == "":
        raise DataError(f"{where}: missing {keyword}")
    return _as_float(value, keyword, where)


def _optional_number(item: Dataset, keyword: str, default: float) -> float:
    value = item.get(keyword)
    return default if value is None or value == "" else _as_float(value, keyword, "channel")


def _as_float(value: Any, keyword: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {keyword} is not a number", found=repr(value)) from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {keyword} is not finite", found=repr(value))
    return number


# ============================================================================================
# Converting
# ============================================================================================


def convert_dicom_ecg(
    path: str | PathLike[str], out_dir: str | PathLike[str], record_name: str
) -> Path:
    """Write the rhythm strip of a DICOM ECG as WFDB record ``out_dir/record_name``, at the
    file's own sampling rate (the loader resamples at use, :func:`ecgcmr.data.ecg.load_ecg`).

    ADC step per lead: the file's own step (sensitivity x correction), but no finer than
    MIN_ADC_STEP_UV. With a step >= 1 µV and a baseline that is a whole number of steps, the
    file's samples are written unchanged; otherwise the record is quantised to that step
    (error <= half a step).
    Returns the record path (no suffix). Raises :class:`DataError` as :func:`read_dicom_ecg`.
    """
    path = Path(path)
    ecg = read_dicom_ecg(path)
    step_uv = np.maximum(ecg.step_uv, MIN_ADC_STEP_UV)
    comments = [f"converted from DICOM ECG {path.name}", f"source rate {ecg.fs:g} Hz"]
    try:
        return write_wfdb(out_dir, record_name, ecg.rhythm_mv, ecg.fs,
                          adc_gain_per_mv=1000.0 / step_uv, comments=comments)
    except DataError as exc:
        raise exc.with_context(path=path) from exc
