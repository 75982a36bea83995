"""GE MUSE resting 12-lead ECG (MUSE XML export, root ``RestingECG``) -> WFDB.

The layout, as MUSE exports write it (element names and order per MUSE's ``restecg.dtd``; the
public readers agree: BRAVEHEART ``load_musexml.m`` (github.com/BIVectors/BRAVEHEART), the
ecghelper ``WaveformRecord.from_xml`` docstring, perottelab/IntroECG
``muse_xml_to_array.py``)::

    <!DOCTYPE RestingECG SYSTEM "restecg.dtd">
    <RestingECG>
      <MuseInfo>..</MuseInfo> <PatientDemographics>..</PatientDemographics> ...
      <RestingECGMeasurements>
        <VentricularRate>62</VentricularRate> <PRInterval>..</PRInterval>
        <QRSDuration>..</QRSDuration> <QTInterval>..</QTInterval> <QTCorrected>..</QTCorrected>
        <PAxis>..</PAxis> <RAxis>..</RAxis> <TAxis>..</TAxis> ...
      </RestingECGMeasurements>
      <Waveform>                                  (one per waveform type)
        <WaveformType>Median</WaveformType>        (the median beat) ... or "Rhythm" (10 s)
        <NumberofLeads>8</NumberofLeads>
        <SampleType>CONTINUOUS_SAMPLES</SampleType>
        <SampleBase>500</SampleBase> <SampleExponent>0</SampleExponent>   (rate = base x 10^exp)
        <LeadData>                                 (one per stored lead)
          <LeadByteCountTotal>10000</LeadByteCountTotal>
          <LeadSampleCountTotal>5000</LeadSampleCountTotal>
          <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
          <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
          <LeadID>I</LeadID>
          <LeadOffsetFirstSample>0</LeadOffsetFirstSample>
          <FirstSampleBaseline>0</FirstSampleBaseline>
          <LeadSampleSize>2</LeadSampleSize>
          <LeadDataCRC32>..</LeadDataCRC32>
          <WaveFormData>base64 of little-endian int16 samples</WaveFormData>
        </LeadData>
      </Waveform>
    </RestingECG>

MUSE stores the 8 independent leads I, II, V1-V6; the other four are the limb-lead identities
(Einthoven, Goldberger), which BRAVEHEART's ``ECG12.m`` also applies::

    III = II - I    aVR = -(I + II)/2    aVL = I - II/2    aVF = II - I/2

Value of a sample (as BRAVEHEART reads it): ``(stored int16 + FirstSampleBaseline) x
LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits``. Only the ``Rhythm`` waveform is read; the
sampling rate and every lead's resolution and units come from the file, never assumed. The XML
goes through :mod:`ecgcmr.convert.safe_xml` (size bound, no entities, no external references).
Every problem raises :class:`~ecgcmr.errors.DataError` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import numpy as np

from ecgcmr.constants import LEADS
from ecgcmr.convert.safe_xml import MAX_XML_BYTES, parse_xml_file

# The WFDB reader's own lead-name aliases and unit table (private, imported on purpose: a MUSE
# file follows the very same rules) and its plausible-rate check.
from ecgcmr.data.ecg import UNIT_TO_MV, check_ecg_rate, normalise_lead_name
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError

ROOT_TAG = "RestingECG"
RHYTHM = "rhythm"                    # WaveformType of the 10 s strip (case-insensitive)
STORED_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
SAMPLE_BYTES = 2                     # LeadSampleSize: 16-bit samples
_DERIVED_HALF_STEP = ("aVR", "aVL", "aVF")  # (I + II)/2-type leads: exact on half a step

#: MUSE measurement -> our name (:data:`ecgcmr.ecg_measurements.FEATURE_NAMES` where they
#: overlap); MUSE writes them unit-less: bpm, ms, degrees.
MEASUREMENT_FIELDS: dict[str, str] = {
    "VentricularRate": "hr_bpm", "PRInterval": "pr_ms", "QRSDuration": "qrs_ms",
    "QTInterval": "qt_ms", "QTCorrected": "qtc_ms",
    "PAxis": "p_axis_deg", "RAxis": "r_axis_deg", "TAxis": "t_axis_deg",
}


@dataclass(frozen=True)
class MuseConversion:
    """What :func:`convert_muse_xml` wrote."""

    record: Path          # WFDB record, without suffix
    fs: float             # sampling rate of the source (and the record), Hz
    step_uv: np.ndarray   # (12,) µV per ADC step of each lead in the record


# ============================================================================================
# Reading
# ============================================================================================


def read_muse_xml(path: str | PathLike[str]) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Read the Rhythm waveform of a MUSE XML file -> ``(ecg, fs, info)``.

    ``ecg``: ``(12, n)`` float64 mV in :data:`~ecgcmr.constants.LEADS` order (I, II, V1-V6 as
    stored, III/aVR/aVL/aVF derived); ``fs``: Hz, ``SampleBase x 10^SampleExponent``.
    ``info``: ``step_uv`` ((12,) µV per step at which each lead is exact: the stored leads'
    own ``LeadAmplitudeUnitsPerBit``, III that of I/II, the augmented leads half of it),
    ``units`` (the stored leads' ``LeadAmplitudeUnits``), ``measurements`` (our names ->
    value, NaN when absent or not a number).

    Raises :class:`DataError` naming the file for: unreadable / too large / not well-formed
    XML, a DTD entity or external reference, a root other than ``RestingECG``, no (or more than
    one) Rhythm waveform, a missing/invalid/implausible rate, a missing or duplicated lead, bad
    base64, an odd byte count, a sample size other than 2 bytes, unknown or missing units or
    resolution, leads of different lengths, or a length other than the declared one.
    """
    path = Path(path)
    try:
        root = parse_xml_file(path, max_bytes=MAX_XML_BYTES)
        if root.tag != ROOT_TAG:
            raise DataError("not a GE MUSE resting ECG", expected=f"root element <{ROOT_TAG}>",
                            found=f"<{root.tag}>")
        waveform = _rhythm_waveform(root)
        fs = _sample_rate(waveform)
        leads = _stored_leads(waveform)
        steps, step_uv, units = {}, {}, {}
        for lead in STORED_LEADS:
            steps[lead], step_uv[lead], units[lead] = _decode_lead(leads[lead], lead)
        lengths = {lead: s.size for lead, s in steps.items()}
        if len(set(lengths.values())) != 1:
            raise DataError("Rhythm: leads have different lengths", expected="equal lengths",
                            found=", ".join(f"{k}={v}" for k, v in lengths.items()))
        ecg = _twelve_leads({lead: steps[lead] * step_uv[lead] / 1000.0 for lead in STORED_LEADS})
        limb_step = max(step_uv["I"], step_uv["II"])
        lead_steps = [step_uv.get(lead, limb_step / 2 if lead in _DERIVED_HALF_STEP
                                  else limb_step) for lead in LEADS]
        info = {"step_uv": np.asarray(lead_steps, dtype=np.float64), "units": units,
                "measurements": _measurements(root)}
        return ecg, fs, info
    except DataError as exc:
        raise exc.with_context(path=path) from exc


def _rhythm_waveform(root: Element) -> Element:
    waveforms = root.findall("Waveform")
    types = [(w.findtext("WaveformType") or "").strip() for w in waveforms]
    rhythms = [w for w, t in zip(waveforms, types, strict=True) if t.casefold() == RHYTHM]
    if len(rhythms) != 1:
        raise DataError("no Rhythm waveform" if not rhythms else "more than one Rhythm waveform",
                        expected="one <Waveform> with <WaveformType>Rhythm</WaveformType>",
                        found="waveform types " + (", ".join(map(repr, types)) or "(none)"))
    return rhythms[0]


def _sample_rate(waveform: Element) -> float:
    base = _number(waveform.findtext("SampleBase"))
    exponent_text = waveform.findtext("SampleExponent")
    exponent = 0.0 if exponent_text is None or not exponent_text.strip() else _number(exponent_text)
    if not (base > 0) or not (math.isfinite(exponent) and exponent == int(exponent)
                              and abs(exponent) <= 6):
        raise DataError("Rhythm: invalid SampleBase/SampleExponent",
                        expected="a positive SampleBase and an integer SampleExponent",
                        found=f"{waveform.findtext('SampleBase')!r}, {exponent_text!r}")
    fs = base * 10.0 ** int(exponent)
    check_ecg_rate(fs, what="Rhythm sampling rate (SampleBase x 10^SampleExponent)")
    return fs


def _stored_leads(waveform: Element) -> dict[str, Element]:
    """LeadData of each of the 8 stored leads, by LeadID (the reader's alias rules)."""
    found: dict[str, Element] = {}
    ids = []
    for element in waveform.findall("LeadData"):
        raw = (element.findtext("LeadID") or "").strip()
        ids.append(raw)
        lead, sign = normalise_lead_name(raw)
        if lead not in STORED_LEADS or sign < 0:
            continue  # III/aVR/... (if a file stores them) are derived anyway; others ignored
        if lead in found:
            raise DataError(f"Rhythm: lead {lead} appears twice", expected="each lead once")
        found[lead] = element
    missing = [lead for lead in STORED_LEADS if lead not in found]
    if missing:
        raise DataError(f"Rhythm: missing leads: {', '.join(missing)}",
                        expected=f"LeadData for {', '.join(STORED_LEADS)}",
                        found="LeadID " + (", ".join(ids) or "(none)"))
    return found


def _decode_lead(element: Element, lead: str) -> tuple[np.ndarray, float, str]:
    """One LeadData -> ``(integer steps incl. baseline as float64, µV per step, units)``."""
    where = f"Rhythm lead {lead}"
    size = _optional_int(element, "LeadSampleSize", where)
    if size is not None and size != SAMPLE_BYTES:
        raise DataError(f"{where}: unsupported LeadSampleSize", expected="2 (16-bit samples)",
                        found=str(size))
    offset = _optional_int(element, "LeadOffsetFirstSample", where)
    if offset:  # BRAVEHEART refuses these too: leading bytes of invalid data
        raise DataError(f"{where}: unsupported LeadOffsetFirstSample", expected="0",
                        found=str(offset))
    text = element.findtext("WaveFormData")
    if text is None or not text.strip():
        raise DataError(f"{where}: no WaveFormData")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{where}: WaveFormData is not valid base64 ({exc})") from None
    if len(data) % SAMPLE_BYTES:
        raise DataError(f"{where}: odd number of WaveFormData bytes",
                        expected="16-bit samples (an even byte count)", found=f"{len(data)} bytes")
    declared_bytes = _optional_int(element, "LeadByteCountTotal", where)
    if declared_bytes is not None and declared_bytes != len(data):
        raise DataError(f"{where}: wrong number of bytes",
                        expected=f"{declared_bytes} (LeadByteCountTotal)", found=str(len(data)))
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
    declared = _optional_int(element, "LeadSampleCountTotal", where)
    if declared is not None and declared != samples.size:
        raise DataError(f"{where}: wrong number of samples",
                        expected=f"{declared} (LeadSampleCountTotal)", found=str(samples.size))
    if samples.size == 0:
        raise DataError(f"{where}: no samples")
    baseline = _optional_int(element, "FirstSampleBaseline", where) or 0
    return samples + baseline, _step_uv(element, where), _units(element, where)


def _step_uv(element: Element, where: str) -> float:
    """LeadAmplitudeUnitsPerBit x the units' size, in µV per step."""
    text = element.findtext("LeadAmplitudeUnitsPerBit")
    per_bit = _number(text)
    if not per_bit > 0:
        raise DataError(f"{where}: missing or invalid LeadAmplitudeUnitsPerBit",
                        expected="a positive number", found=repr(text))
    return per_bit * UNIT_TO_MV[_units(element, where).casefold()] * 1000.0


def _units(element: Element, where: str) -> str:
    units = (element.findtext("LeadAmplitudeUnits") or "").strip()
    if units.casefold() not in UNIT_TO_MV:
        raise DataError(f"{where}: unknown LeadAmplitudeUnits",
                        expected="MICROVOLTS, MILLIVOLTS or VOLTS", found=repr(units))
    return units


def _twelve_leads(stored: dict[str, np.ndarray]) -> np.ndarray:
    """I, II, V1-V6 (mV) -> the 12 leads in LEADS order (Einthoven and Goldberger)."""
    i, ii = stored["I"], stored["II"]
    derived = {"III": ii - i, "aVR": -(i + ii) / 2.0, "aVL": i - ii / 2.0, "aVF": ii - i / 2.0}
    return np.stack([stored[lead] if lead in stored else derived[lead] for lead in LEADS])


def _measurements(root: Element) -> dict[str, float]:
    block = root.find("RestingECGMeasurements")
    out = dict.fromkeys(MEASUREMENT_FIELDS.values(), math.nan)
    if block is not None:
        for tag, name in MEASUREMENT_FIELDS.items():
            out[name] = _number(block.findtext(tag))
    return out


def _number(text: str | None) -> float:
    """Finite float of ``text``, or NaN (the caller reports it)."""
    try:
        value = float((text or "").strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _optional_int(element: Element, tag: str, where: str) -> int | None:
    text = element.findtext(tag)
    if text is None or not text.strip():
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: {tag} is not an integer", found=repr(text)) from None


# ============================================================================================
# Converting
# ============================================================================================


def convert_muse_xml(
    path: str | PathLike[str], out_dir: str | PathLike[str], record_name: str
) -> MuseConversion:
    """Write the Rhythm waveform as WFDB record ``out_dir/record_name`` at the file's own rate.

    ADC gain per lead: ``1000 / step_uv`` (see :func:`read_muse_xml`), so every lead is written
    exactly: the stored leads' integers unchanged, III on the same step, aVR/aVL/aVF on half a
    step. Raises :class:`DataError` as :func:`read_muse_xml` does.
    """
    path = Path(path)
    ecg, fs, info = read_muse_xml(path)
    step_uv = info["step_uv"]
    comments = [f"converted from GE MUSE XML {path.name}",
                f"resolution {step_uv[0]:g} uV per step (I); III/aVR/aVL/aVF derived from I, II"]
    try:
        record = write_wfdb(out_dir, record_name, ecg, fs, adc_gain_per_mv=1000.0 / step_uv,
                            comments=comments)
    except DataError as exc:
        raise exc.with_context(path=path) from exc
    return MuseConversion(record=record, fs=fs, step_uv=step_uv)
