"""Write a 12-lead ECG as a GE MUSE resting-ECG XML file (root ``RestingECG``).

For tests and demos of :mod:`ecgcmr.convert.muse_xml`: a synthetic strip (e.g. from
:func:`ecgcmr.synth.ecg.simulate_ecg`) becomes the file a MUSE export holds, with the element
layout documented in that module: a ``Median`` waveform (optional) and a ``Rhythm`` waveform,
each with only the 8 independent leads I, II, V1-V6 stored (as MUSE does), base64 of
little-endian int16 samples quantised at ``uv_per_bit``.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement, indent, tostring

import numpy as np

from ecgcmr.constants import LEADS

STORED_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_UNIT_TO_UV = {"MICROVOLTS": 1.0, "MILLIVOLTS": 1000.0, "VOLTS": 1e6}
_INT16_MIN, _INT16_MAX = -32768, 32767
#: Our measurement name -> MUSE element (MUSE writes them as plain integers).
_MEASUREMENT_TAGS: dict[str, str] = {
    "hr_bpm": "VentricularRate", "pr_ms": "PRInterval", "qrs_ms": "QRSDuration",
    "qt_ms": "QTInterval", "qtc_ms": "QTCorrected",
    "p_axis_deg": "PAxis", "r_axis_deg": "RAxis", "t_axis_deg": "TAxis",
}


def write_muse_xml(
    path: str | PathLike[str],
    ecg_mv: np.ndarray,
    fs: float,
    *,
    uv_per_bit: float | Sequence[float] = 4.88,
    units: str = "MICROVOLTS",
    median_mv: np.ndarray | None = None,
    measurements: Mapping[str, float] | None = None,
    lead_ids: Sequence[str] = STORED_LEADS,
    sample_exponent: int = 0,
    doctype: bool = True,
) -> Path:
    """Write ``ecg_mv`` ``(12, n)`` mV (LEADS order) at ``fs`` Hz as a MUSE XML file.

    Only I, II, V1-V6 are stored (the rows of those leads), quantised at ``uv_per_bit`` µV per
    step (one value, or one per stored lead); ``units`` is written as ``LeadAmplitudeUnits``
    with ``LeadAmplitudeUnitsPerBit`` expressed in it (an unknown string is written as given,
    with the value in µV, to make files a reader must refuse). ``median_mv`` ``(12, m)`` goes
    to a ``Median`` waveform before the rhythm, as MUSE orders them. ``lead_ids``: the
    ``LeadID`` text of the 8 stored leads, in file order (default I, II, V1-V6).
    ``sample_exponent``: the rate is written as ``SampleBase = fs / 10^exp``. Returns the path.
    """
    path = Path(path)
    x = _check_signal(ecg_mv, "ecg_mv")
    steps_uv = np.broadcast_to(np.asarray(uv_per_bit, dtype=np.float64), (len(STORED_LEADS),))
    if not (np.isfinite(steps_uv).all() and (steps_uv > 0).all()):
        raise ValueError(f"uv_per_bit must be positive, got {uv_per_bit!r}")
    if sorted(lead_ids) != sorted(STORED_LEADS):
        raise ValueError(f"lead_ids must name {STORED_LEADS} once each, got {lead_ids!r}")
    root = Element("RestingECG")
    SubElement(SubElement(root, "MuseInfo"), "MuseVersion").text = "9.0.9.18167"
    demographics = SubElement(root, "PatientDemographics")
    SubElement(demographics, "PatientID").text = "SYNTHETIC"
    test = SubElement(root, "TestDemographics")
    SubElement(test, "DataType").text = "RESTING"
    SubElement(test, "Site").text = "1"
    SubElement(test, "AcquisitionDevice").text = "MAC55"
    if measurements:
        _add_measurements(SubElement(root, "RestingECGMeasurements"), measurements)
    if median_mv is not None:
        _add_waveform(root, "Median", _check_signal(median_mv, "median_mv"), fs, steps_uv, units,
                      lead_ids, sample_exponent)
    _add_waveform(root, "Rhythm", x, fs, steps_uv, units, lead_ids, sample_exponent)
    indent(root)
    declaration = '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
    if doctype:
        declaration += '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(declaration.encode("ascii") + tostring(root, encoding="unicode").encode(
        "iso-8859-1") + b"\n")
    return path


def _check_signal(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS) or x.shape[1] == 0 or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a finite (12, n) array in mV, got shape {x.shape}")
    return x


def _add_waveform(root: Element, kind: str, x: np.ndarray, fs: float, steps_uv: np.ndarray,
                  units: str, lead_ids: Sequence[str], sample_exponent: int) -> None:
    waveform = SubElement(root, "Waveform")
    SubElement(waveform, "WaveformType").text = kind
    SubElement(waveform, "WaveformStartTime").text = "0"
    SubElement(waveform, "NumberofLeads").text = str(len(lead_ids))
    SubElement(waveform, "SampleType").text = ("CONTINUOUS_SAMPLES" if kind == "Rhythm"
                                               else "MEDIAN_BEAT")
    SubElement(waveform, "SampleBase").text = f"{fs / 10.0 ** sample_exponent:g}"
    SubElement(waveform, "SampleExponent").text = str(sample_exponent)
    SubElement(waveform, "HighPassFilter").text = "16"
    SubElement(waveform, "LowPassFilter").text = "150"
    SubElement(waveform, "ACFilter").text = "50"
    for lead_id in lead_ids:
        k = STORED_LEADS.index(lead_id)
        step_uv = float(steps_uv[k])
        samples = np.round(x[LEADS.index(lead_id)] * 1000.0 / step_uv)
        if samples.min() < _INT16_MIN or samples.max() > _INT16_MAX:
            raise ValueError(f"lead {lead_id} does not fit int16 at {step_uv:g} µV per step")
        payload = samples.astype("<i2").tobytes()
        lead = SubElement(waveform, "LeadData")
        SubElement(lead, "LeadByteCountTotal").text = str(len(payload))
        SubElement(lead, "LeadTimeOffset").text = "0"
        SubElement(lead, "LeadSampleCountTotal").text = str(samples.size)
        per_unit = step_uv / _UNIT_TO_UV.get(units, 1.0)
        SubElement(lead, "LeadAmplitudeUnitsPerBit").text = repr(per_unit)
        SubElement(lead, "LeadAmplitudeUnits").text = units
        SubElement(lead, "LeadHighLimit").text = str(_INT16_MAX)
        SubElement(lead, "LeadLowLimit").text = str(_INT16_MIN)
        SubElement(lead, "LeadID").text = lead_id
        SubElement(lead, "LeadOffsetFirstSample").text = "0"
        SubElement(lead, "FirstSampleBaseline").text = "0"
        SubElement(lead, "LeadSampleSize").text = "2"
        SubElement(lead, "LeadOff").text = "FALSE"
        SubElement(lead, "BaselineSway").text = "FALSE"
        SubElement(lead, "LeadDataCRC32").text = str(zlib.crc32(payload))
        # MUSE wraps the base64 text in lines; a reader must ignore the whitespace
        text = base64.b64encode(payload).decode("ascii")
        SubElement(lead, "WaveFormData").text = "\n".join(
            text[i:i + 76] for i in range(0, len(text), 76))


def _add_measurements(block: Element, measurements: Mapping[str, float]) -> None:
    unknown = set(measurements) - set(_MEASUREMENT_TAGS)
    if unknown:
        raise ValueError(f"unknown measurement names {sorted(unknown)}; "
                         f"known: {list(_MEASUREMENT_TAGS)}")
    for name, tag in _MEASUREMENT_TAGS.items():
        value = measurements.get(name)
        if value is not None and not math.isnan(value):
            SubElement(block, tag).text = f"{round(value):d}"
