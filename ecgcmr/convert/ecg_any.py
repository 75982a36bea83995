"""Any resting 12-lead ECG files -> one WFDB record each (``ecgcmr convert ecg``).

Inputs are files or folders (searched recursively; hidden files and the output folder skipped).
The format of each file is told from its content, not only its name:

=================  =========================================================================
WFDB               a text header (``<name>.hea``) whose record line and signal lines parse as
                   WFDB's (the ``wfdb`` package's own patterns); its signal files, whatever
                   their suffix (``.dat``, ``.mat``, PTB's ``.xyz``), are part of the record
PhysioNet/CinC     ``A0001.mat`` beside an ``A0001.hea`` that names it (format 16, byte offset
                   24: MATLAB v4 header + ``val``; see ``tests/writers/cinc_mat.py``)
DICOM              the Part 10 preamble: ``DICM`` at byte 128 (PS3.10 7.1)
GE MUSE XML        XML whose root element is ``RestingECG`` (:mod:`ecgcmr.convert.muse_xml`)
GE CardioSoft XML  XML whose root element is ``CardiologyXML`` (:mod:`ecgcmr.convert.ecg_xml`)
=================  =========================================================================

Each recording becomes one WFDB record ``<out>/<name>`` (12 named leads in mV, format 16),
``<name>`` the input's file name without suffix, made safe and unique. Rate: the source's own
(the loader resamples to the model's 500 Hz at use). Resolution: the source's own ADC step per
lead where it has one. Nothing is checked for quality
here: :func:`ecgcmr.data.ecg.load_ecg` does that when the record is used.

``<out>/convert_report.csv`` lists every input with what became of it: ``converted`` and the
record, or ``skipped`` and the reason (not an ECG format, a malformed file and what is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from wfdb.io import header as wfdb_header

from ecgcmr.convert.batch import (
    CONVERTED,
    SKIPPED,
    collect_inputs,
    read_head,
    write_report,
)
from ecgcmr.convert.batch import report_row as _row
from ecgcmr.convert.ecg_dicom import convert_dicom_ecg
from ecgcmr.convert.ecg_xml import read_ge_xml
from ecgcmr.convert.muse_xml import convert_muse_xml

# the WFDB reader's own record reader (with each lead's ADC step) and signal-file list
from ecgcmr.data.ecg import read_ecg_with_steps, record_signal_files
from ecgcmr.data.writers import FORMAT_16_MAX, write_wfdb
from ecgcmr.errors import DataError, OutputError

WFDB, CINC, DICOM, MUSE, CARDIOSOFT = ("WFDB", "PhysioNet/CinC .mat", "DICOM", "GE MUSE XML",
                                       "GE CardioSoft XML")
XML_ROOTS = {"RestingECG": MUSE, "CardiologyXML": CARDIOSOFT}
_SNIFF_BYTES = 64 * 1024       # enough for a WFDB header's lines or an XML prologue
_DICOM_MAGIC_AT, _DICOM_MAGIC = 128, b"DICM"
_DEFAULT_STEP_UV = 1.0         # ADC step written when the source's is unknown
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_\-]+")


@dataclass
class _Item:
    """One recording (or one file that is not one) to report."""

    input: Path                # what the report names: the file found or given
    format: str = ""
    source: Path | None = None  # the file the converter reads (a WFDB/CinC record: its .hea)
    reason: str = ""           # set when the item is skipped before conversion


def convert_ecgs(
    inputs: Iterable[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Convert every ECG among ``inputs`` (files or folders) into WFDB records in ``out_dir``.

    Returns the report (also written to ``out_dir/convert_report.csv``): one row per input
    recording or unrecognised file, columns :data:`REPORT_COLUMNS` (``status`` is
    ``converted`` with ``record`` the output record path without suffix, or ``skipped`` with
    ``reason``). A bad or foreign file is skipped and reported; the others go on. Raises
    :class:`~ecgcmr.errors.OutputError` when the output cannot be written.
    """
    out = Path(out_dir)
    files, rows = collect_inputs(inputs, out)
    items = _classify(files)
    taken = {p.name for p in files if p.parent.resolve() == out.resolve()}  # never overwrite
    for item in tqdm(items, desc="ECGs", unit="file", disable=not progress):
        rows.append(_convert_one(item, out, taken))
    return write_report(rows, out)




# ============================================================================================
# Finding and recognising the inputs
# ============================================================================================




def _classify(files: list[Path]) -> list[_Item]:
    """One item per recording: WFDB headers claim their signal files (any suffix), so a record
    is converted once however many of its files were found."""
    heads = {p: _head(p) for p in files}
    items: list[_Item] = []
    claimed: set[Path] = set()
    records: dict[Path, _Item] = {}     # resolved header -> its item
    for p in files:
        if _is_wfdb_header(heads[p]):
            signals = record_signal_files(p)
            claimed.update((p.parent / name).resolve() for name in signals)
            if p.suffix.lower() != ".hea":
                items.append(_Item(p, WFDB, reason="a WFDB header, but not named <record>.hea "
                                                   "as WFDB readers need"))
                continue
            fmt = CINC if any(name.lower().endswith(".mat") for name in signals) else WFDB
            records[p.resolve()] = item = _Item(p, fmt, source=p)
            items.append(item)
    for p in files:
        if p.resolve() in claimed or p.resolve() in records or _is_wfdb_header(heads[p]):
            continue
        hea = _header_naming(p)
        if hea is not None:   # a record's signal file given without its header
            if hea.resolve() not in records:
                fmt = CINC if p.suffix.lower() == ".mat" else WFDB
                records[hea.resolve()] = item = _Item(p, fmt, source=hea)
                items.append(item)
            continue
        items.append(_recognise(p, heads[p]))
    return sorted(items, key=lambda item: str(item.input))


def _head(path: Path) -> bytes:
    return read_head(path, _SNIFF_BYTES)


def _is_wfdb_header(head: bytes) -> bool:
    """The text of a WFDB header: a record line then as many signal lines as it announces."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines, _ = wfdb_header.parse_header_content(text)
    record = wfdb_header.rx_record.match(lines[0]) if lines else None
    if record is None or not record["n_sig"] or record["n_seg"]:
        return False
    n_sig = int(record["n_sig"])
    signals = [wfdb_header.rx_signal.match(line) for line in lines[1:1 + n_sig]]
    return 0 < n_sig == len(signals) and all(m is not None and m["fmt"] for m in signals)


def _header_naming(path: Path) -> Path | None:
    """``A0001.hea`` beside ``A0001.<any>`` when that header names this file, else None."""
    if not path.suffix:
        return None
    hea = path.with_suffix(".hea")
    return hea if hea.is_file() and path.name in record_signal_files(hea) else None


def _recognise(path: Path, head: bytes) -> _Item:
    """A file that is not part of a WFDB record: DICOM, an XML ECG, or not an ECG format."""
    if head[_DICOM_MAGIC_AT:_DICOM_MAGIC_AT + 4] == _DICOM_MAGIC:
        return _Item(path, DICOM, source=path)
    root = _xml_root(head)
    if root is not None:
        fmt = XML_ROOTS.get(root)
        if fmt is not None:
            return _Item(path, fmt, source=path)
        return _Item(path, "XML", reason=f"XML with root element <{root}>: not a known ECG "
                                         f"format (expected <{'> or <'.join(XML_ROOTS)}>)")
    if path.suffix.lower() == ".hea":
        return _Item(path, WFDB, reason="a .hea file that does not parse as a WFDB header "
                                        "(record line, then one line per signal)")
    if head.startswith(b"MATLAB 5.0 MAT-file") or path.suffix.lower() == ".mat":
        return _Item(path, "MATLAB", reason="a .mat file without the WFDB header that names it "
                                            f"(expected {path.with_suffix('.hea').name} beside it)")
    return _Item(path, "", reason="not a recognised ECG format (WFDB header, PhysioNet/CinC "
                                  ".mat + .hea, DICOM, GE MUSE XML or GE CardioSoft XML)")


def _xml_root(head: bytes) -> str | None:
    """Name of the first element of an XML document (prologue, comments, DOCTYPE skipped)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="ignore")
    else:
        text = head.decode("utf-8", errors="ignore").lstrip("\ufeff")
    position = 0
    skip = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE(?:[^\[>]|\[.*?\])*>)", re.S | re.I)
    while (match := skip.match(text, position)) and match.end() > position:
        position = match.end()
    element = re.compile(r"\s*<([A-Za-z_][\w.\-]*(?::[\w.\-]+)?)[\s/>]").match(text, position)
    if element is None:
        return None
    return element.group(1).split(":")[-1]


# ============================================================================================
# Converting
# ============================================================================================


def _convert_one(item: _Item, out: Path, taken: set[str]) -> dict:
    if item.reason or item.source is None:
        return _row(item.input, item.format, SKIPPED, reason=item.reason)
    name = _record_name(item.input, taken)
    converter = _CONVERTERS[item.format]
    try:
        record = converter(item.source, out, name)
    except DataError as exc:
        return _row(item.input, item.format, SKIPPED, reason=str(exc.with_context(path=item.input)))
    except OSError as exc:  # a write failed: nothing more can be written
        raise OutputError.from_os_error(exc, fallback=out / name) from exc
    taken.update({f"{name}.hea", f"{name}.dat"})
    return _row(item.input, item.format, CONVERTED, record=record)


def _record_name(path: Path, taken: set[str]) -> str:
    """The file name without suffix as a WFDB record name, unique among this run's outputs."""
    base = _SAFE_NAME.sub("_", path.stem).strip("_") or "ecg"
    name, k = base, 1
    while f"{name}.hea" in taken or f"{name}.dat" in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _wfdb(hea: Path, out: Path, name: str) -> Path:
    """A WFDB/CinC record -> 12 named leads in mV, at its own rate and ADC steps."""
    ecg, fs, steps_mv = read_ecg_with_steps(hea)
    step_uv = (np.full(ecg.shape[0], _DEFAULT_STEP_UV) if steps_mv is None
               else np.abs(np.asarray(steps_mv, dtype=np.float64)) * 1000.0)
    peak = np.nanmax(np.abs(ecg), axis=1, initial=0.0).astype(np.float64) * 1000.0  # µV
    fits = peak / step_uv <= FORMAT_16_MAX
    # a lead too large for format 16 at its own step (a 24/32-bit source): whole µV steps
    step_uv = np.where(fits, step_uv, np.ceil(peak / FORMAT_16_MAX))
    return write_wfdb(out, name, ecg.astype(np.float64), fs, adc_gain_per_mv=1000.0 / step_uv,
                      comments=[f"converted from WFDB record {hea.name}"])


def _cardiosoft(path: Path, out: Path, name: str) -> Path:
    """The 10 s strip only (one record per recording), at the file's rate and resolution."""
    ecg = read_ge_xml(path)
    try:
        return write_wfdb(out, name, ecg.strip_mv, ecg.fs,
                          adc_gain_per_mv=1000.0 / ecg.resolution_uv,
                          comments=[f"converted from GE CardioSoft XML {path.name}"])
    except DataError as exc:
        raise exc.with_context(path=path) from exc


_CONVERTERS: dict[str, Callable[[Path, Path, str], Path]] = {
    WFDB: _wfdb,
    CINC: _wfdb,
    DICOM: convert_dicom_ecg,
    MUSE: lambda path, out, name: convert_muse_xml(path, out, name).record,
    CARDIOSOFT: _cardiosoft,
}

