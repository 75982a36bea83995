"""Write a 12-lead ECG as a GE CardioSoft resting-ECG XML file (UK Biobank field 20205 layout).

For tests and demos: a synthetic strip (e.g. from :func:`ecgcmr.synth.ecg.simulate_ecg`)
becomes the file a UK Biobank bulk download holds, so the real converter
(:mod:`ecgcmr.convert.ecg_xml`) can be exercised end to end. The element layout is the one
documented in that module. Samples are quantised at ``resolution_uv`` µV per ADC step, as the
device does; the file says so in ``<Resolution units="uVperLsb">``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from xml.etree.ElementTree import Element, ElementTree, SubElement, indent

import numpy as np

from ecgcmr.constants import LEADS
from ecgcmr.data.ecg import normalise_lead_name  # the reader's own alias rules

#: Our measurement name -> (CardioSoft element, unit attribute), as in UKB field 20205 files.
_MEASUREMENT_TAGS: dict[str, tuple[str, str]] = {
    "hr_bpm": ("VentricularRate", "BPM"),
    "pr_ms": ("PQInterval", "ms"),
    "p_duration_ms": ("PDuration", "ms"),
    "qrs_ms": ("QRSDuration", "ms"),
    "qt_ms": ("QTInterval", "ms"),
    "qtc_ms": ("QTCInterval", "ms"),
    "rr_ms": ("RRInterval", "ms"),
    "p_axis_deg": ("PAxis", "degrees"),
    "r_axis_deg": ("RAxis", "degrees"),
    "t_axis_deg": ("TAxis", "degrees"),
}


def write_ge_xml(
    path: str | PathLike[str],
    strip_mv: np.ndarray,
    fs: float,
    *,
    resolution_uv: float = 5.0,
    median_mv: np.ndarray | None = None,
    measurements: Mapping[str, float] | None = None,
    lead_order: Sequence[str] | None = None,
) -> Path:
    """Write ``strip_mv`` ``(12, n)`` mV (LEADS order) at ``fs`` Hz as CardioSoft XML.

    ``median_mv`` ``(12, m)`` mV (same rate and resolution) goes to ``MedianSamples``;
    ``measurements`` uses our names (``hr_bpm``, ``pr_ms``, ``qrs_ms`` ... see
    :data:`ecgcmr.convert.ecg_xml.MEASUREMENT_NAMES`); NaN values are left out.
    ``lead_order`` gives the ``lead`` labels in file order, in any case or alias (``"avr"``,
    ``"V1"``); default LEADS. Returns the path written.
    """
    path = Path(path)
    strip = _check_signal(strip_mv, "strip_mv")
    labels = list(lead_order) if lead_order is not None else list(LEADS)
    rows = _rows_of(labels)
    root = Element("CardiologyXML")
    SubElement(root, "ObservationType").text = "RestECG"
    if measurements is not None or median_mv is not None:
        block = SubElement(root, "RestingECGMeasurements")
        _add_measurements(block, measurements or {})
        if median_mv is not None:
            median = _check_signal(median_mv, "median_mv")
            _add_waveforms(SubElement(block, "MedianSamples"), median, fs, resolution_uv,
                           labels, rows)
    _add_waveforms(SubElement(root, "StripData"), strip, fs, resolution_uv, labels, rows)
    indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    # UKB's CardioSoft files declare ISO-8859-1
    ElementTree(root).write(path, encoding="ISO-8859-1", xml_declaration=True)
    return path


def _check_signal(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS) or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a finite (12, n) array in mV, got shape {x.shape}")
    return x


def _rows_of(labels: Sequence[str]) -> list[int]:
    """Row of the signal array (LEADS order) that each file label holds."""
    rows = []
    for label in labels:
        lead, sign = normalise_lead_name(label)
        if lead is None or sign < 0:
            raise ValueError(f"lead label {label!r} is not one of the 12 standard leads")
        rows.append(LEADS.index(lead))
    return rows


def _add_waveforms(block: Element, x: np.ndarray, fs: float, resolution_uv: float,
                   labels: Sequence[str], rows: Sequence[int]) -> None:
    """NumberOfLeads, SampleRate, ChannelSampleCountTotal, Resolution, one WaveformData per lead."""
    steps = np.round(x * (1000.0 / resolution_uv)).astype(np.int64)  # quantise like the device
    SubElement(block, "NumberOfLeads").text = str(len(labels))
    SubElement(block, "SampleRate", units="Hz").text = f"{fs:g}"
    SubElement(block, "ChannelSampleCountTotal").text = str(x.shape[1])
    SubElement(block, "Resolution", units="uVperLsb").text = f"{resolution_uv:g}"
    for label, row in zip(labels, rows, strict=True):
        SubElement(block, "WaveformData", lead=label).text = ",".join(map(str, steps[row]))


def _add_measurements(block: Element, measurements: Mapping[str, float]) -> None:
    unknown = set(measurements) - set(_MEASUREMENT_TAGS)
    if unknown:
        raise ValueError(f"unknown measurement names {sorted(unknown)}; "
                         f"known: {list(_MEASUREMENT_TAGS)}")
    for name, (tag, unit) in _MEASUREMENT_TAGS.items():
        value = measurements.get(name)
        if value is None or math.isnan(value):
            continue
        SubElement(block, tag, units=unit).text = f"{round(value):d}"
