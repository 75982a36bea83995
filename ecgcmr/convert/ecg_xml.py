"""UK Biobank resting 12-lead ECG (GE CardioSoft XML, showcase field 20205) -> WFDB.

The schema, as UK Biobank's CardioSoft exports write it (root ``CardiologyXML``; see the field
20205 resource "ECG data, resting", and the public CardioSoft readers, e.g. BRAVEHEART
``load_cardiosoftxml.m``, which read the same elements)::

    <CardiologyXML>
      <RestingECGMeasurements>
        <VentricularRate units="BPM">62</VentricularRate>
        <PQInterval units="ms">..</PQInterval>   <PDuration units="ms">..</PDuration>
        <QRSDuration units="ms">..</QRSDuration> <QTInterval units="ms">..</QTInterval>
        <QTCInterval units="ms">..</QTCInterval> <RRInterval units="ms">..</RRInterval>
        <PAxis units="degrees">..</PAxis> <RAxis ..> <TAxis ..>
        <MedianSamples>            (the median beats; same children as StripData)
      </RestingECGMeasurements>
      <StripData>                  (the 10 s rhythm strip)
        <NumberOfLeads>12</NumberOfLeads>
        <SampleRate units="Hz">500</SampleRate>
        <ChannelSampleCountTotal>5000</ChannelSampleCountTotal>
        <Resolution units="uVperLsb">5</Resolution>
        <WaveformData lead="I">12,14,15, ...</WaveformData>   (one per lead, integer ADC steps)
      </StripData>
    </CardiologyXML>

Sampling rate and resolution are read from each file, never assumed. The XML is parsed with
``defusedxml``: entity declarations and external references are refused (billion laughs,
XXE). Every problem raises :class:`~ecgcmr.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from xml.etree.ElementTree import Element

import numpy as np
import pandas as pd

from ecgcmr.constants import ECG_DURATION_S, LEADS
from ecgcmr.convert.safe_xml import parse_xml_file

# Lead-name matching (case, aliases, inverted leads, duplicates, missing leads) is the WFDB
# reader's; a GE file must pass the very same rules. Private, imported on purpose. The plausible
# ECG sampling rates are the reader's too (one bound for every ECG the project reads).
from ecgcmr.data.ecg import check_ecg_rate, match_leads
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError

ROOT_TAG = "CardiologyXML"
MAX_XML_BYTES = 32 * 2**20   # a UKB resting ECG file is ~0.3 MB; refuse anything absurd
RESOLUTION_UNITS = "uvperlsb"  # the only amplitude unit CardioSoft writes (µV per ADC step)
_RATE_UNITS = {"hz": 1.0, "khz": 1000.0}

#: Device measurement -> (our name, documented unit). Our names follow
#: :data:`ecgcmr.ecg_measurements.FEATURE_NAMES` where they overlap.
MEASUREMENT_FIELDS: dict[str, tuple[str, str]] = {
    "VentricularRate": ("hr_bpm", "bpm"),
    "PQInterval": ("pr_ms", "ms"),
    "PDuration": ("p_duration_ms", "ms"),
    "QRSDuration": ("qrs_ms", "ms"),
    "QTInterval": ("qt_ms", "ms"),
    "QTCInterval": ("qtc_ms", "ms"),
    "RRInterval": ("rr_ms", "ms"),
    "PAxis": ("p_axis_deg", "deg"),
    "RAxis": ("r_axis_deg", "deg"),
    "TAxis": ("t_axis_deg", "deg"),
}
MEASUREMENT_NAMES: tuple[str, ...] = tuple(name for name, _ in MEASUREMENT_FIELDS.values())

# unit attribute (lower case) -> factor to the documented unit, per documented unit
_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "bpm": {"bpm": 1.0, "/min": 1.0, "1/min": 1.0, "beats/min": 1.0},
    "ms": {"ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0},
    "deg": {"deg": 1.0, "degree": 1.0, "degrees": 1.0},
}


@dataclass(frozen=True)
class GeEcg:
    """One CardioSoft resting ECG, in physical units."""

    strip_mv: np.ndarray            # (12, n) float64 mV, LEADS order, the 10 s strip
    fs: float                       # strip sampling rate, Hz (from the file)
    median_mv: np.ndarray | None    # (12, m) float64 mV median beats, or None if absent
    median_fs: float | None         # median-beat sampling rate, Hz
    measurements: dict[str, float]  # MEASUREMENT_NAMES -> value (NaN when missing)
    resolution_uv: float            # strip µV per ADC step (from the file)
    median_resolution_uv: float | None = None  # median-beat µV per ADC step


@dataclass(frozen=True)
class EcgConversion:
    """What :func:`convert_ge_xml` wrote."""

    record: Path                    # WFDB record of the strip, without suffix
    measurements: dict[str, float]  # the device measurements (see MEASUREMENT_FIELDS)
    median_record: Path | None = None  # WFDB record of the median beats, if the file has them
    fs: float = math.nan            # strip sampling rate of the source (and the record), Hz
    resolution_uv: float = math.nan  # strip µV per ADC step of the source (and the record)


@dataclass(frozen=True)
class XmlBatch:
    """What :func:`convert_ge_xml_many` converted and what it skipped."""

    table: pd.DataFrame     # one row per converted file: subject_id, xml_path, record, ...
    failures: pd.DataFrame  # one row per skipped file: subject_id, xml_path, reason


# ============================================================================================
# Reading
# ============================================================================================


def read_ge_xml(path: str | PathLike[str]) -> GeEcg:
    """Parse a CardioSoft XML file into a :class:`GeEcg` (strip, median beats, measurements).

    Raises :class:`DataError` naming the file for: unreadable/too large/not well-formed XML,
    entity declarations or external references, a root other than ``CardiologyXML``, no
    ``StripData``, a missing/invalid/implausible ``SampleRate`` (outside
    ``ECG_FS_MIN_HZ``-``ECG_FS_MAX_HZ``) or ``Resolution``, a missing lead, leads of
    different lengths, a length other than the declared ``ChannelSampleCountTotal``, a
    non-numeric sample, or a non-numeric measurement.
    """
    path = Path(path)
    try:
        root = _parse(path)
        strip = root.find("StripData")
        if strip is None:
            raise DataError("no StripData element (the 10 s rhythm strip)",
                            expected=f"<{ROOT_TAG}><StripData>...")
        strip_mv, fs, res = _read_waveforms(strip, "StripData")
        median_mv, median_fs, median_res = None, None, None
        median = root.find("RestingECGMeasurements/MedianSamples")
        if median is not None:
            median_mv, median_fs, median_res = _read_waveforms(median, "MedianSamples")
        return GeEcg(strip_mv=strip_mv, fs=fs, median_mv=median_mv, median_fs=median_fs,
                     measurements=_read_measurements(root), resolution_uv=res,
                     median_resolution_uv=median_res)
    except DataError as exc:
        raise exc.with_context(path=path) from exc


def _parse(path: Path) -> Element:
    """Bytes of ``path`` -> root element, through defusedxml (no entities, no external refs)."""
    root = parse_xml_file(path, max_bytes=MAX_XML_BYTES)
    if root.tag != ROOT_TAG:
        raise DataError("not a CardioSoft resting ECG", expected=f"root element <{ROOT_TAG}>",
                        found=f"<{root.tag}>")
    return root


def _read_waveforms(block: Element, where: str) -> tuple[np.ndarray, float, float]:
    """``StripData``/``MedianSamples`` -> ``((12, n) mV, fs Hz, µV per step)``."""
    fs = _sample_rate(block, where)
    resolution = _resolution(block, where)
    waves = block.findall("WaveformData")
    names = [str(w.get("lead", "")).strip() for w in waves]
    try:
        columns, signs = match_leads(names, Path(where))
    except DataError as exc:  # re-raised without the placeholder path: the caller adds the file
        raise DataError(f"{where}: {exc.problem}", expected=exc.expected, found=exc.found
                        ) from None
    samples = [_samples(waves[c], names[c], where) for c in columns]
    lengths = {len(s) for s in samples}
    if len(lengths) != 1:
        found = ", ".join(f"{LEADS[i]}={len(s)}" for i, s in enumerate(samples))
        raise DataError(f"{where}: leads have different lengths", expected="equal lengths",
                        found=found)
    n = lengths.pop()
    _check_length(block, where, n, fs)
    steps = np.asarray(samples, dtype=np.float64) * np.asarray(signs, dtype=np.float64)[:, None]
    return steps * (resolution / 1000.0), fs, resolution


def _sample_rate(block: Element, where: str) -> float:
    element = block.find("SampleRate")
    if element is None:
        raise DataError(f"{where}: no SampleRate", expected="<SampleRate units=\"Hz\">")
    unit = (element.get("units") or "Hz").strip().lower()
    if unit not in _RATE_UNITS:
        raise DataError(f"{where}: unknown SampleRate units", expected="Hz",
                        found=repr(element.get("units")))
    fs = _finite_number(element.text) * _RATE_UNITS[unit]
    if not fs > 0:
        raise DataError(f"{where}: invalid SampleRate", expected="a positive number of Hz",
                        found=repr(element.text))
    check_ecg_rate(fs, what=f"{where} SampleRate")
    return fs


def _resolution(block: Element, where: str) -> float:
    element = block.find("Resolution")
    if element is None:
        raise DataError(f"{where}: no Resolution", expected="<Resolution units=\"uVperLsb\">")
    unit = element.get("units")
    if unit is not None and unit.strip().lower() != RESOLUTION_UNITS:
        raise DataError(f"{where}: unknown Resolution units", expected="uVperLsb",
                        found=repr(unit))
    resolution = _finite_number(element.text)
    if not resolution > 0:
        raise DataError(f"{where}: invalid Resolution", expected="a positive number of µV per step",
                        found=repr(element.text))
    return resolution


def _finite_number(text: str | None) -> float:
    """Finite float of ``text``, or NaN (the caller reports it)."""
    try:
        value = float((text or "").strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _samples(wave: Element, lead: str, where: str) -> list[int]:
    """Integer ADC steps of one ``WaveformData``: comma- and/or whitespace-separated."""
    tokens = [t for t in re.split(r"[,\s]+", wave.text or "") if t]
    if not tokens:
        raise DataError(f"{where}: lead {lead!r} has no samples")
    try:
        return [int(t) for t in tokens]
    except ValueError:
        index, bad = next((i, t) for i, t in enumerate(tokens) if not _is_int(t))
        raise DataError(f"{where}: non-numeric sample in lead {lead!r}",
                        expected="integer ADC steps", found=f"{bad[:20]!r} at sample {index}"
                        ) from None


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _check_length(block: Element, where: str, n: int, fs: float) -> None:
    """The lead length must match the declared ``ChannelSampleCountTotal`` (when declared).

    Without a declaration a strip must still last the 10 s of a resting ECG at the file's rate.
    """
    declared = block.findtext("ChannelSampleCountTotal")
    if declared is not None and declared.strip():
        try:
            expected = int(declared.strip())
        except ValueError:
            raise DataError(f"{where}: invalid ChannelSampleCountTotal",
                            expected="an integer", found=repr(declared)) from None
        if n != expected:
            raise DataError(f"{where}: wrong number of samples per lead",
                            expected=f"{expected} (ChannelSampleCountTotal)", found=str(n))
    elif where == "StripData" and n != round(ECG_DURATION_S * fs):
        raise DataError(f"{where}: wrong number of samples per lead",
                        expected=f"{round(ECG_DURATION_S * fs)} ({ECG_DURATION_S:g} s at "
                                 f"{fs:g} Hz)", found=str(n))


def _read_measurements(root: Element) -> dict[str, float]:
    """``RestingECGMeasurements`` -> {our name: value in our unit}; NaN when absent or empty."""
    block = root.find("RestingECGMeasurements")
    out = dict.fromkeys(MEASUREMENT_NAMES, math.nan)
    if block is None:
        return out
    for tag, (name, unit) in MEASUREMENT_FIELDS.items():
        element = block.find(tag)
        if element is None or not (element.text or "").strip():
            continue
        out[name] = _measurement(element, tag, unit)
    return out


def _measurement(element: Element, tag: str, unit: str) -> float:
    text = (element.text or "").strip()
    value = _finite_number(text)  # any finite number (axes may be negative)
    if math.isnan(value):
        raise DataError(f"non-numeric measurement {tag}", expected="a number", found=repr(text))
    written = (element.get("units") or unit).strip().lower()
    factor = _UNIT_FACTORS[unit].get(written)
    if factor is None:
        raise DataError(f"unknown units of measurement {tag}", expected=unit,
                        found=repr(element.get("units")))
    return value * factor


# ============================================================================================
# Converting
# ============================================================================================


def convert_ge_xml(
    xml_path: str | PathLike[str], out_dir: str | PathLike[str], record_name: str
) -> EcgConversion:
    """Write the strip as WFDB record ``out_dir/record_name`` (and the median beats as
    ``record_name + "_median"``) at the file's own rate and resolution.

    The ADC gain is ``1000 / resolution_uv`` steps per mV, so the file's integer samples are
    the record's integer samples: the round trip is exact. Raises :class:`DataError` as
    :func:`read_ge_xml` does.
    """
    xml_path = Path(xml_path)
    ecg = read_ge_xml(xml_path)
    comments = [f"converted from GE CardioSoft XML {xml_path.name}",
                f"resolution {ecg.resolution_uv:g} uV per step"]
    try:
        record = write_wfdb(out_dir, record_name, ecg.strip_mv, ecg.fs,
                            adc_gain_per_mv=1000.0 / ecg.resolution_uv, comments=comments)
        median_record = None
        if ecg.median_mv is not None and ecg.median_fs is not None:
            median_res = ecg.median_resolution_uv or ecg.resolution_uv
            median_record = write_wfdb(
                out_dir, f"{record_name}_median", ecg.median_mv, ecg.median_fs,
                adc_gain_per_mv=1000.0 / median_res,
                comments=[f"median beats from GE CardioSoft XML {xml_path.name}"])
    except DataError as exc:
        raise exc.with_context(path=xml_path) from exc
    return EcgConversion(record=record, measurements=dict(ecg.measurements),
                         median_record=median_record, fs=ecg.fs, resolution_uv=ecg.resolution_uv)


def ukb_subject_id(path: Path) -> str:
    """UK Biobank bulk file name ``<eid>_20205_<instance>_<array>.xml`` -> ``<eid>``."""
    return path.stem.split("_")[0]


def convert_ge_xml_many(
    paths: Iterable[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    subject_id: Callable[[Path], str] = ukb_subject_id,
    record_name: Callable[[Path], str] = lambda p: p.stem,
) -> XmlBatch:
    """Convert many files; a bad file is reported in ``failures`` and skipped, never used.

    ``table`` has one row per converted file: ``subject_id``, ``xml_path``, ``record``,
    ``median_record`` (paths as strings, '' when absent), ``fs``, ``resolution_uv`` and every
    :data:`MEASUREMENT_NAMES` column. ``failures`` has ``subject_id``, ``xml_path``, ``reason``.
    """
    rows, failures = [], []
    for raw in paths:
        path = Path(raw)
        sid = subject_id(path)
        try:
            done = convert_ge_xml(path, out_dir, record_name(path))
        except DataError as exc:
            failures.append({"subject_id": sid, "xml_path": str(path), "reason": str(exc)})
            continue
        rows.append({
            "subject_id": sid, "xml_path": str(path), "record": str(done.record),
            "median_record": str(done.median_record or ""), "fs": done.fs,
            "resolution_uv": done.resolution_uv, **done.measurements,
        })
    table = pd.DataFrame(rows, columns=["subject_id", "xml_path", "record", "median_record",
                                        "fs", "resolution_uv", *MEASUREMENT_NAMES])
    failed = pd.DataFrame(failures, columns=["subject_id", "xml_path", "reason"])
    return XmlBatch(table=table, failures=failed)
