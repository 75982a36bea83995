"""12-lead ECG: WFDB record -> ``(12, 5000)`` mV at 500 Hz -> quality control -> preprocessing.

The loaders are the public API for every ECG the project reads (the synthetic cohort, UK
Biobank exports converted to WFDB, hospital exports). Every bad input raises
:class:`~ecgcmr.errors.DataError` naming the file, what was expected and what was found.

Three steps, each usable on its own::

    x, fs = read_ecg("rec.hea")          # (12, n) float32 mV in LEADS order, at the file's rate
    x = load_ecg("rec")                  # (12, 5000) float32 mV: 10 s at 500 Hz, QC passed
    z = preprocess_ecg(x)                # (12, 5000) float32: the paper's filter chain, z-scored

Lead matching (``read_ecg``): leads are found *by name*, in any order and case, with common
aliases (``AVR``, ``avl``, ``DII``, ``lead V1`` ...). A name starting with a minus sign
(``-aVR``, the inverted aVR of the Cabrera display) is the *negation* of that lead: it is
multiplied by -1 and used only when the plain lead is absent. Channels that are not one of the
12 standard leads (respiration, Frank X/Y/Z ...) are ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import butter, filtfilt, iirnotch, resample_poly, savgol_filter, sosfiltfilt
from wfdb.io import header as wfdb_header

from ecgcmr.constants import ECG_FS_HZ, ECG_N_SAMPLES, LEADS
from ecgcmr.errors import DataError

# --- lead names -------------------------------------------------------------------------------
# Lower-cased name (after dropping a "lead" prefix) -> standard lead. "D" names (DI, DII, DIII)
# are the limb-lead spelling of Spanish/Portuguese/Italian devices.
_LEAD_ALIASES: dict[str, str] = {
    **{lead.lower(): lead for lead in LEADS},
    "di": "I", "dii": "II", "diii": "III", "d1": "I", "d2": "II", "d3": "III",
}
_MINUS_SIGNS = ("-", "\u2212")  # ASCII hyphen-minus and the Unicode minus sign

# --- physical units ---------------------------------------------------------------------------
#: Factor from a physical unit (casefolded name) to mV; the converters read units with it too.
# casefold() turns the micro sign (U+00B5) into the Greek mu (U+03BC); both are listed anyway.
UNIT_TO_MV: dict[str, float] = {
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "nv": 1e-6,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}
_DEFAULT_WFDB_UNITS = "mV"  # WFDB header spec: a signal line without units is in millivolts

# --- signal files ---------------------------------------------------------------------------------
# Bytes per sample of the fixed-width WFDB storage formats (WFDB "signal(5)" man page): 8/80 one
# byte, 16/61/160 two, 24 three, 32 four, 212 two 12-bit samples in three bytes, 310/311 three
# 10-bit samples in four bytes. FLAC formats (508/516/524) are compressed: no size to check.
_BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "80": 1, "16": 2, "61": 2, "160": 2, "24": 3, "32": 4,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
_WFDB_INVALID_16 = -32768  # format 16's "no sample" code
_MAX_HEADER_BYTES = 2**20   # read of a header when only its signal file names are wanted

# --- sampling rate -----------------------------------------------------------------------------
# Plausible rates of an ECG record, checked when a header (or a converter's source) is read.
# Diagnostic ECGs are sampled at 250-1000 Hz (AHA/ACC/HRS standardisation recommendations,
# Kligfield et al. 2007, Circulation 115:1306: >= 500 Hz); PTB-XL also ships a 100 Hz version.
# Below 50 Hz the Nyquist frequency (25 Hz) cuts into the QRS complex's main energy (~5-40 Hz):
# not an ECG any more. High-resolution / pacemaker-detecting recorders reach ~10-16 kHz; 20 kHz
# leaves headroom. Beyond it a rate is a corrupt field (e.g. a sample count written as the
# rate), and resampling it to 500 Hz would need a ratio below 1/(2 * 1000) (rational_ratio).
ECG_FS_MIN_HZ = 50.0
ECG_FS_MAX_HZ = 20_000.0

# --- resampling -------------------------------------------------------------------------------
_MAX_RESAMPLE_DENOMINATOR = 1000  # rational approximation of fs_out/fs_in: error < 1e-6 relative
_RESAMPLE_MARGIN_SAMPLES = 64     # extra input samples resampled past 10 s, then cut: no end edge

# --- quality control (on the raw record, in mV) ------------------------------------------------
FLAT_PTP_MV = 0.01        # a lead that never moves by 10 µV (~2 ADC steps at 5 µV) is not recorded
FLAT_SD_MV = 0.002        # ... or one that is flat apart from a few glitches
SATURATION_MV = 10.0      # no body-surface ECG reaches 10 mV; beyond it the amplifier is railed
SATURATION_RUN_S = 0.05   # a signal stuck at its own extreme this long is clipped (an R or T peak
                          # stays within one ADC step of its top for well under 20 ms)
SATURATION_MIN_EXCURSION_MV = 0.5  # ... and that extreme lies this far from the lead's median,
                                   # so a noise-free flat baseline is never called "clipped"
# Clipped peaks shorter than SATURATION_RUN_S: flat tops at the lead's extreme ADC code, each
# entered and left steeply, on several beats. A natural peak whose samples stay on one ADC code
# (q <= 5 µV/LSB, Kligfield et al. 2007) for >= 4 samples and >= 6 ms is a smooth cap there,
# within q of its apex over a half-width h >= 2.5 ms; one sample plus 2 ms past the flat part
# it has dropped by at most q * ((h + 1 sample + 2 ms) / h)^2 <= 5.4 q ~ 27 µV at any rate
# >= 250 Hz (a cap flatter than a parabola, e.g. a Gaussian, drops less). A clipped R wave is cut
# on its up- and downstroke (R waves rise ~1 mV in <= 40 ms, >= 25 µV/ms): >= 50 µV in 2 ms.
# (The first sample off the plateau is skipped: it may lie anywhere just below the clip level.)
CLIP_PLATEAU_S = 0.006    # a flat top at the extreme code lasting >= 6 ms ...
CLIP_PLATEAU_MIN_SAMPLES = 4  # ... and >= 4 samples (12 ms at 500 Hz is 6 samples) ...
CLIP_FLANK_S = 0.002      # ... whose signal, 2 ms beyond the first sample off it on each side, ...
CLIP_FLANK_MV = 0.05      # ... lies >= 50 µV from the extreme on both sides ...
CLIP_MIN_PLATEAUS = 3     # ... on >= 3 beats (a pattern, not one odd sample; 10 s holds >= 5 beats)
# Two leads that are copies of each other: real leads never agree to within 1 µV (one ADC step
# of a 1 µV/LSB recorder) at every sample of 10 s unless one was written into the other's slot.
DUPLICATE_MAX_DIFF_MV = 0.001
# Einthoven (II = I + III) and Goldberger (aVR = -(I+II)/2, aVL = I - II/2, aVF = II - I/2) hold
# exactly for every electrocardiograph (the limb leads are differences of 3 electrode
# potentials); a stored record departs only by quantisation. Each lead is rounded to its ADC
# code independently: error sd q/sqrt(12), so a relation's residual has RMS <= q/2 (3 leads with
# unit weights). Tolerance: max(10 µV = 2 steps of a 5 µV/LSB recorder, 3 q) where q is known
# (the header's gain): a 6x margin. The residual's mean is removed first: a constant per-lead
# offset (an amplifier's DC offset) is invisible after the 0.5 Hz high-pass of preprocessing.
LIMB_RESIDUAL_MIN_MV = 0.01
LIMB_RESIDUAL_STEPS = 3.0
# (description, {lead: weight}): sum(weight * lead) is zero for a consistent record
_LIMB_RELATIONS: tuple[tuple[str, dict[str, float]], ...] = (
    ("Einthoven: II ≠ I + III", {"II": 1.0, "I": -1.0, "III": -1.0}),
    ("Goldberger: aVR ≠ -(I + II)/2", {"aVR": 1.0, "I": 0.5, "II": 0.5}),
    ("Goldberger: aVL ≠ I - II/2", {"aVL": 1.0, "I": -1.0, "II": 0.5}),
    ("Goldberger: aVF ≠ II - I/2", {"aVF": 1.0, "II": -1.0, "I": 0.5}),
)


@dataclass(frozen=True)
class _Header:
    fs: float
    units: list[str] | None  # per signal, as written in the header (None: could not parse)
    gains: list[str] | None  # per signal, the ADC gain field as written ("" when absent)


# ============================================================================================
# Reading
# ============================================================================================


def read_ecg(path: str | PathLike[str]) -> tuple[np.ndarray, float]:
    """Read a WFDB record; return ``(ecg, fs)``: ``(12, n)`` float32 mV in LEADS order, Hz.

    ``path`` is the record with or without ``.hea`` (a ``.dat`` suffix is also accepted).
    Units are converted from the header (``mV``, ``uV``/``µV``, ``V``, ``nV``) to mV; the unit
    strings are read from the header text itself because ``wfdb`` drops non-ASCII characters
    (it reads ``µV`` as ``V``, a factor of 10^6). A lead whose ADC gain is missing, zero or not
    a number is rejected: ``wfdb`` silently assumes 200 steps per unit for it (the WFDB
    header spec's "uncalibrated" default), which would scale the lead by an arbitrary factor.
    A signal file shorter than the header says is reported as truncated.
    """
    ecg, fs, _ = read_ecg_with_steps(path)
    return ecg, fs


def read_ecg_with_steps(path: str | PathLike[str]) -> tuple[np.ndarray, float, np.ndarray | None]:
    """:func:`read_ecg` plus each lead's ADC step in mV (``(12,)``; None if the header's gains
    could not be read)."""
    base = _record_base(path)
    hea = base.with_name(base.name + ".hea")
    if not hea.is_file():
        raise DataError("WFDB header not found", path=hea, expected="a .hea file next to the signals")
    header = _parse_header(hea)
    simple = _read_simple_record(base, hea)
    if simple is not None:
        signal, names, wfdb_units = simple
    else:
        _check_signal_files(base, hea)
        try:
            record = wfdb.rdrecord(str(base))
        except Exception as exc:  # wfdb raises IndexError/ValueError/OSError... for a bad record
            raise DataError(f"unreadable WFDB record ({type(exc).__name__}: {exc})",
                            path=hea) from exc
        if record.p_signal is None or not record.sig_name:
            raise DataError("WFDB record has no signals", path=hea, expected="12 ECG leads",
                            found="0")
        signal = np.asarray(record.p_signal, dtype=np.float64)  # (n, channels) in header units
        names = [str(n) for n in record.sig_name]
        wfdb_units = record.units
    units = header.units
    if units is None or len(units) != len(names):  # header text not parsable: trust wfdb
        units = [u or _DEFAULT_WFDB_UNITS for u in (wfdb_units or [None] * len(names))]
    columns, signs = match_leads(names, hea)
    gains = None
    if header.gains is not None and len(header.gains) == len(names):
        gains = _check_gains([header.gains[c] for c in columns], [names[c] for c in columns], hea)
    factors = np.asarray([_unit_factor(units[c], names[c], hea) for c in columns])
    ecg = signal[:, columns].T * (np.asarray(signs) * factors)[:, None]
    steps = None if gains is None else factors / gains  # mV per ADC step
    return ecg.astype(np.float32), header.fs, steps


def _record_base(path: str | PathLike[str]) -> Path:
    """The record path without its ``.hea``/``.dat`` suffix (other dots are part of the name).

    A path to one of a record's own signal files, whatever its suffix, also names the record:
    ``A0001.mat`` of a PhysioNet/CinC Challenge record (its ``A0001.hea`` names ``A0001.mat``
    with format 16 and a byte offset), PTB's ``s0010_re.xyz`` (the Frank leads), when no
    record ``A0001.mat`` (header ``A0001.mat.hea``) exists and ``A0001.hea`` names the file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".hea", ".dat"):
        return p.with_suffix("")
    if suffix and not p.with_name(p.name + ".hea").is_file():
        base = p.with_suffix("")
        hea = base.with_name(base.name + ".hea")
        if hea.is_file() and p.name in record_signal_files(hea):
            return base
    return p


def record_signal_files(hea: str | PathLike[str]) -> list[str]:
    """The signal file names a WFDB header's signal lines name (in order, each once; empty for
    an unreadable header, a multi-segment record or one without signal files).

    These files, whatever their suffix (``.dat``, a CinC ``.mat``, PTB's ``.xyz``), belong to
    the record: a folder scan should count them as part of it, not as unknown files.
    """
    try:
        with Path(hea).open("rb") as f:  # a header is a few kB: never read a huge file whole
            text = f.read(_MAX_HEADER_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return []
    lines, _ = wfdb_header.parse_header_content(text)
    record = wfdb_header.rx_record.match(lines[0]) if lines else None
    if record is None or record["n_seg"] or not record["n_sig"]:
        return []
    names: list[str] = []
    for line in lines[1:1 + int(record["n_sig"])]:
        match = wfdb_header.rx_signal.match(line)
        name = match["file_name"] if match else ""
        if name and name != "~" and name not in names:  # "~": a signal with no file
            names.append(name)
    return names


def _parse_header(hea: Path) -> _Header:
    """Sampling rate and per-signal units, read from the header text.

    WFDB silently assumes 250 Hz when the rate is missing or unparsable; a 12-lead ECG whose
    header lost its rate is rejected here instead.
    """
    try:
        text = hea.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read WFDB header ({exc})", path=hea) from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError("empty WFDB header", path=hea, expected="a record line and signal lines")
    tokens = lines[0].split()
    if len(tokens) < 3:
        raise DataError("WFDB record line has no sampling frequency", path=hea,
                        expected="'<name> <n_signals> <fs> <n_samples>'", found=repr(lines[0]))
    # fs may be written "500", "500/1" (counter frequency) or "500(0)" (base counter value)
    fs_text = re.split(r"[/(]", tokens[2])[0]
    try:
        fs = float(fs_text)
    except ValueError:
        fs = float("nan")
    if not np.isfinite(fs) or fs <= 0:
        raise DataError("invalid sampling frequency in WFDB header", path=hea,
                        expected="a positive number of Hz", found=repr(tokens[2]))
    check_ecg_rate(fs, what="sampling frequency in WFDB header", path=hea)
    gain_fields = _gain_fields(lines)
    if gain_fields is None:
        return _Header(fs=fs, units=None, gains=None)
    units = [g.split("/", 1)[1] if "/" in g else _DEFAULT_WFDB_UNITS for g in gain_fields]
    gains = [re.split(r"[(/]", g, maxsplit=1)[0] for g in gain_fields]
    return _Header(fs=fs, units=units, gains=gains)


def check_ecg_rate(fs: float, *, what: str = "sampling frequency",
                   path: str | PathLike[str] | None = None) -> None:
    """Raise :class:`DataError` unless ``ECG_FS_MIN_HZ <= fs <= ECG_FS_MAX_HZ``."""
    if not ECG_FS_MIN_HZ <= fs <= ECG_FS_MAX_HZ:
        raise DataError(f"implausible {what} for an ECG", path=path,
                        expected=f"{ECG_FS_MIN_HZ:g}-{ECG_FS_MAX_HZ:g} Hz",
                        found=f"{fs:.10g} Hz")


def _gain_fields(lines: list[str]) -> list[str] | None:
    """The ``<gain>(<baseline>)/<units>`` field of each signal line ("" when the line stops
    before it); None if the signal lines cannot be told apart."""
    try:
        n_signals = int(lines[0].split()[1].split("/")[0])
    except (IndexError, ValueError):
        return None
    signal_lines = lines[1:1 + n_signals]
    if len(signal_lines) != n_signals:
        return None
    return [fields[2] if len(fields) > 2 else "" for fields in map(str.split, signal_lines)]


def _check_gains(gains: list[str], lead_names: list[str], hea: Path) -> np.ndarray:
    """The ADC gains (steps per physical unit) as numbers, each finite and positive.

    A negative gain inverts the lead (wfdb's own writer refuses one): reported with every lead
    that has one.
    """
    values = np.asarray([_check_gain(g, name, hea) for g, name in zip(gains, lead_names,
                                                                       strict=True)])
    negative = values < 0
    if negative.any():
        leads = [name for name, neg in zip(lead_names, negative, strict=True) if neg]
        raise DataError(f"ADC gain must be positive; negative for lead(s) {', '.join(leads)} "
                        "(the lead would be inverted)", path=hea,
                        expected="a positive number of ADC steps per physical unit",
                        found=", ".join(f"{n}: {g}" for n, g, neg in zip(
                            lead_names, gains, negative, strict=True) if neg))
    return values


def _check_gain(gain: str, lead_name: str, hea: Path) -> float:
    """A usable ADC gain: a finite non-zero number (steps per physical unit)."""
    try:
        value = float(gain)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value == 0:
        raise DataError(f"uncalibrated lead {lead_name!r}: ADC gain missing, zero or not a number",
                        path=hea, expected="a non-zero number of ADC steps per physical unit",
                        found=repr(gain))
    return value


def _read_simple_record(base: Path, hea: Path
                        ) -> tuple[np.ndarray, list[str], list[str]] | None:
    """``(p_signal (n, channels) float64, names, units)`` of the common kind of record, read
    without ``wfdb`` (whose header parsing costs ~6 ms a read, twice per record); ``None``
    for anything else, which then takes the ``wfdb`` path.

    The common kind: plain-ASCII header of one segment, every signal in format 16 in one
    complete signal file, with explicit gain (non-zero), baseline and name, no skew, byte
    offset or multiple samples per frame: what :func:`ecgcmr.data.writers.write_wfdb` writes. Fields
    are split with ``wfdb``'s own line patterns, and samples converted as ``wfdb`` does,
    ``(d - baseline) / gain`` in float64 with -32768 (invalid) -> NaN, so both paths return the
    same numbers.
    """
    try:
        text = hea.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    lines, _ = wfdb_header.parse_header_content(text)
    record = wfdb_header.rx_record.match(lines[0]) if lines else None
    if record is None or record["n_seg"] or not record["n_sig"] or not record["sig_len"]:
        return None
    n_sig, sig_len = int(record["n_sig"]), int(record["sig_len"])
    signals = [wfdb_header.rx_signal.match(line) for line in lines[1:1 + n_sig]]
    if n_sig == 0 or len(signals) != n_sig or any(m is None for m in signals):
        return None
    files = {m["file_name"] for m in signals}  # type: ignore[index]
    if len(files) != 1:
        return None
    file = files.pop()
    for m in signals:
        if (m["fmt"] != "16" or m["samps_per_frame"] not in ("", "1") or m["skew"]  # type: ignore[index]
                or m["byte_offset"] or not m["baseline"] or not m["sig_name"]):  # type: ignore[index]
            return None
    try:
        gains = np.array([float(m["adc_gain"]) for m in signals])  # type: ignore[index]
    except ValueError:
        return None
    data = base.with_name(file)
    if not file or file.startswith("~") or not (np.isfinite(gains).all() and (gains != 0).all()):
        return None
    try:
        if data.stat().st_size < 2 * n_sig * sig_len:
            return None  # truncated: the wfdb path reports it
        digital = np.fromfile(data, dtype="<i2", count=n_sig * sig_len).reshape(sig_len, n_sig)
    except OSError:
        return None
    baselines = np.array([int(m["baseline"]) for m in signals])  # type: ignore[index]
    signal = (digital.astype(np.float64) - baselines) / gains
    signal[digital == _WFDB_INVALID_16] = np.nan
    units = [m["units"] or _DEFAULT_WFDB_UNITS for m in signals]  # type: ignore[index]
    return signal, [m["sig_name"] for m in signals], units  # type: ignore[index]


def _check_signal_files(base: Path, hea: Path) -> None:
    """Each signal file exists and holds at least the samples the header promises."""
    try:
        header = wfdb.rdheader(str(base))
    except Exception:  # noqa: BLE001 - an unparsable header is reported by rdrecord below
        return
    files = getattr(header, "file_name", None)  # None for a multi-segment record
    if not files or not header.sig_len:
        return  # no signal length in the header: WFDB reads the whole file, nothing to check
    byte_offsets = header.byte_offset or [None] * len(files)
    bytes_per_frame: dict[str, float] = {}
    offsets: dict[str, int] = {}
    for file, fmt, offset in zip(files, header.fmt, byte_offsets, strict=True):
        per_sample = _BYTES_PER_SAMPLE.get(str(fmt))
        if per_sample is None:
            return  # compressed or unknown format: wfdb reports its own problems
        bytes_per_frame[file] = bytes_per_frame.get(file, 0.0) + per_sample
        offsets.setdefault(file, int(offset or 0))  # the offset is per file: its first signal's
    for file, per_frame in bytes_per_frame.items():
        data = base.with_name(file)
        if not data.is_file():
            raise DataError("WFDB signal file not found", path=data,
                            expected=f"the signal file named in {hea.name}")
        expected = offsets[file] + math.ceil(per_frame * header.sig_len)
        found = data.stat().st_size
        if found < expected:
            raise DataError("WFDB signal file is truncated", path=data,
                            expected=f"{expected} bytes ({header.sig_len} samples per signal, "
                                     f"as {hea.name} says)", found=f"{found} bytes")


def normalise_lead_name(name: str) -> tuple[str | None, int]:
    """``"-aVR"`` -> ``("aVR", -1)``; ``"lead ii"`` -> ``("II", 1)``; unknown -> ``(None, 1)``."""
    key = name.strip().casefold()
    key = re.sub(r"^lead[\s_:]*", "", key)
    sign = 1
    if key.startswith(_MINUS_SIGNS):
        sign, key = -1, key[1:].strip()
    return _LEAD_ALIASES.get(key), sign


def match_leads(names: list[str], hea: Path) -> tuple[list[int], list[int]]:
    """Channel index and sign (+1, or -1 for an inverted lead) of each of the 12 LEADS."""
    plain: dict[str, int] = {}
    inverted: dict[str, int] = {}
    for channel, name in enumerate(names):
        lead, sign = normalise_lead_name(name)
        if lead is None:
            continue  # not a standard lead (e.g. respiration): ignored
        table = plain if sign > 0 else inverted
        if lead in table:
            raise DataError(f"lead {lead} appears twice", path=hea, expected="each lead once",
                            found=f"channels {names[table[lead]]!r} and {name!r}")
        table[lead] = channel
    missing = [lead for lead in LEADS if lead not in plain and lead not in inverted]
    if missing:
        raise DataError(f"missing leads: {', '.join(missing)}", path=hea,
                        expected=f"the 12 standard leads {', '.join(LEADS)}",
                        found=f"channels {', '.join(names)}")
    columns = [plain.get(lead, inverted.get(lead)) for lead in LEADS]
    signs = [1 if lead in plain else -1 for lead in LEADS]
    return columns, signs  # type: ignore[return-value]


def _unit_factor(unit: str, lead_name: str, hea: Path) -> float:
    """Factor that turns values in ``unit`` into mV."""
    factor = UNIT_TO_MV.get(unit.strip().casefold())
    if factor is None:
        raise DataError(f"unknown physical units for lead {lead_name!r}", path=hea,
                        expected="mV, uV/µV, V or nV", found=repr(unit))
    return factor


# ============================================================================================
# Loading: 10 s at 500 Hz, quality-controlled
# ============================================================================================


def load_ecg(
    path: str | PathLike[str],
    *,
    fs: int = ECG_FS_HZ,
    n_samples: int = ECG_N_SAMPLES,
    subject: str | None = None,
) -> np.ndarray:
    """The first ``n_samples / fs`` seconds of a record: ``(12, n_samples)`` float32 mV at ``fs``.

    Order: read -> cut the first 10 s (plus a short margin) -> QC at the record's own rate ->
    resample. QC runs *before* resampling because resampling smears NaNs over the filter
    length and turns a clipped plateau into ringing that no longer looks clipped.
    Raises :class:`DataError` for a record shorter than 10 s or one failing :func:`qc_ecg`.
    """
    try:
        ecg, fs_in, steps = read_ecg_with_steps(path)
        return _to_rate_and_length(ecg, fs_in, fs, n_samples, path, steps)
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc


def _to_rate_and_length(
    ecg: np.ndarray, fs_in: float, fs: int, n_samples: int, path: str | PathLike[str],
    steps: np.ndarray | None = None,
) -> np.ndarray:
    up, down = rational_ratio(fs, fs_in)
    needed = -(-n_samples * down // up)  # input samples that make n_samples output samples
    if ecg.shape[1] < needed:
        raise DataError("ECG record is too short", path=path,
                        expected=f">= {n_samples / fs:g} s",
                        found=f"{ecg.shape[1] / fs_in:.3f} s ({ecg.shape[1]} samples at {fs_in:g} Hz)")
    problems = qc_ecg(ecg[:, :needed], fs_in, step_mv=steps)
    if problems:
        raise DataError("ECG failed quality control: " + "; ".join(problems), path=path)
    if up == down:
        return np.ascontiguousarray(ecg[:, :n_samples], dtype=np.float32)
    stop = min(ecg.shape[1], needed + _RESAMPLE_MARGIN_SAMPLES)
    # padtype="line" extends each lead linearly past its ends, so baseline offsets and wander
    # do not ring at the edges as they would against the default zero padding
    out = resample_poly(ecg[:, :stop].astype(np.float64), up, down, axis=1, padtype="line")
    return np.ascontiguousarray(out[:, :n_samples], dtype=np.float32)


def rational_ratio(fs_out: float, fs_in: float) -> tuple[int, int]:
    """``up/down`` ~ ``fs_out/fs_in`` in lowest terms, ``down <= 1000`` (e.g. 500/360 -> 25/18)."""
    ratio = Fraction(float(fs_out) / float(fs_in)).limit_denominator(_MAX_RESAMPLE_DENOMINATOR)
    if ratio.numerator <= 0:  # fs_out/fs_in < 1/2000: every later step would divide by zero
        raise DataError("sampling rates too far apart to resample",
                        expected=f"a rate ratio >= 1/{2 * _MAX_RESAMPLE_DENOMINATOR}",
                        found=f"{float(fs_in):.10g} Hz -> {float(fs_out):.10g} Hz")
    return ratio.numerator, ratio.denominator


def qc_ecg(ecg: np.ndarray, fs: float, *, step_mv: float | np.ndarray | None = None
           ) -> list[str]:
    """Quality problems of a ``(12, T)`` mV record at ``fs`` Hz; empty if it is usable.

    Run on the raw samples at the record's own rate (before any resampling or filtering), so
    quantisation is the only departure from the relations between leads. ``step_mv``: the ADC
    step of each lead in mV (scalar or ``(12,)``), when known; it widens the limb-lead
    tolerance for coarse recorders.

    Checks, each naming the leads concerned: non-finite samples; flat leads (peak-to-peak
    < FLAT_PTP_MV or sd < FLAT_SD_MV: electrode off or channel not recorded); saturated or
    clipped leads (any ``|x| > SATURATION_MV``, or a run of at least SATURATION_RUN_S stuck at
    the lead's own max or min when that extreme is at least SATURATION_MIN_EXCURSION_MV from
    the lead's median); clipped peaks (CLIP_MIN_PLATEAUS or more short flat tops at the lead's
    extreme, see CLIP_PLATEAU_S); duplicated leads (two leads within DUPLICATE_MAX_DIFF_MV at
    every sample); limb leads that break Einthoven's or Goldberger's relations (RMS residual
    above max(LIMB_RESIDUAL_MIN_MV, LIMB_RESIDUAL_STEPS * step)). Leads that are non-finite or
    flat are left out of the last three checks.
    """
    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS):
        return [f"expected shape (12, T), found {x.shape}"]
    problems = []
    finite = np.isfinite(x)
    bad = ~finite.all(axis=1)
    if bad.any():
        problems.append(f"NaN or infinite samples in leads {_names(bad)} "
                        f"({int((~finite).sum())} samples)")
    ok = ~bad  # the remaining checks only make sense on fully finite leads
    flat = np.zeros(len(LEADS), dtype=bool)
    saturated = np.zeros(len(LEADS), dtype=bool)
    min_run = max(2, round(SATURATION_RUN_S * fs))
    for i in np.flatnonzero(ok):
        lead = x[i]
        flat[i] = np.ptp(lead) < FLAT_PTP_MV or lead.std() < FLAT_SD_MV
        saturated[i] = not flat[i] and _is_saturated(lead, min_run)
    if flat.any():
        problems.append(f"flat leads (peak-to-peak < {FLAT_PTP_MV} mV or sd < {FLAT_SD_MV} mV): "
                        f"{_names(flat)}")
    if saturated.any():
        problems.append(f"saturated/clipped leads (|x| > {SATURATION_MV:g} mV or >= "
                        f"{SATURATION_RUN_S * 1000:g} ms stuck at the lead's extreme): "
                        f"{_names(saturated)}")
    usable = ok & ~flat
    clipped = np.array([usable[i] and not saturated[i] and _has_clipped_peaks(x[i], fs)
                        for i in range(len(LEADS))])
    if clipped.any():
        problems.append(f"clipped peaks (>= {CLIP_MIN_PLATEAUS} flat tops of >= "
                        f"{CLIP_PLATEAU_S * 1000:g} ms at the lead's extreme ADC code, entered and "
                        f"left steeply): {_names(clipped)}")
    duplicates = _duplicate_groups(x, usable)
    if duplicates:
        problems.append(f"duplicated leads (identical copies, every sample within "
                        f"{DUPLICATE_MAX_DIFF_MV * 1000:g} µV): "
                        + "; ".join(" = ".join(group) for group in duplicates))
    limb = _limb_relation_problem(x, usable, step_mv)
    if limb:
        problems.append(limb)
    return problems


def _has_clipped_peaks(lead: np.ndarray, fs: float) -> bool:
    """At least CLIP_MIN_PLATEAUS flat tops at the lead's max (or min) ADC code, each lasting
    >= CLIP_PLATEAU_S and with the signal CLIP_FLANK_S beyond the first sample off it, on both
    sides, >= CLIP_FLANK_MV away from that extreme: peaks cut off by clipping, not a smooth
    natural peak."""
    median = np.median(lead)
    min_len = max(CLIP_PLATEAU_MIN_SAMPLES, round(CLIP_PLATEAU_S * fs))
    flank = max(1, round(CLIP_FLANK_S * fs))
    for extreme, sign in ((lead.max(), 1.0), (lead.min(), -1.0)):
        if abs(extreme - median) < SATURATION_MIN_EXCURSION_MV:
            continue
        starts, stops = _runs(np.abs(lead - extreme) <= 1e-6)  # one ADC code: one value
        n_clipped = 0
        for start, stop in zip(starts, stops, strict=True):
            before, after = start - 1 - flank, stop + flank
            if stop - start < min_len or before < 0 or after >= lead.size:
                continue
            drops = sign * (extreme - lead[[before, after]])
            n_clipped += bool((drops >= CLIP_FLANK_MV).all())
        if n_clipped >= CLIP_MIN_PLATEAUS:
            return True
    return False


def _duplicate_groups(x: np.ndarray, usable: np.ndarray) -> list[list[str]]:
    """Groups (in LEADS order) of usable leads that are copies of one another."""
    rows = [int(i) for i in np.flatnonzero(usable)]
    grouped: set[int] = set()
    groups = []
    for i in rows:
        if i in grouped:
            continue
        group = [i] + [j for j in rows if j > i and j not in grouped
                       and np.abs(x[i] - x[j]).max() <= DUPLICATE_MAX_DIFF_MV]
        if len(group) > 1:
            groups.append([LEADS[k] for k in group])
            grouped.update(group)
    return groups


def _limb_relation_problem(x: np.ndarray, usable: np.ndarray,
                           step_mv: float | np.ndarray | None) -> str | None:
    """Einthoven's and Goldberger's relations between the usable limb leads; a message naming
    each broken relation and the lead(s) that would explain it, or None."""
    index = {lead: i for i, lead in enumerate(LEADS)}
    steps = np.zeros(len(LEADS)) if step_mv is None else np.broadcast_to(
        np.abs(np.asarray(step_mv, dtype=np.float64)), (len(LEADS),))
    broken, consistent = [], []
    for text, weights in _LIMB_RELATIONS:
        rows = [index[lead] for lead in weights]
        if not usable[rows].all():
            continue
        residual = np.asarray(list(weights.values())) @ x[rows]
        rms = float(np.sqrt(np.mean((residual - residual.mean()) ** 2)))
        tolerance = max(LIMB_RESIDUAL_MIN_MV, LIMB_RESIDUAL_STEPS * float(steps[rows].max()))
        if rms > tolerance:
            broken.append((text, set(weights), rms, tolerance))
        else:
            consistent.append(set(weights))
    if not broken:
        return None
    # the lead(s) shared by every broken relation and absent from every consistent one
    suspects = set.intersection(*(leads for _, leads, _, _ in broken)).difference(*consistent)
    suspect = [lead for lead in LEADS if lead in suspects]
    guess = (f" (lead {' or '.join(suspect)} replaced, mislabelled or inverted?)" if suspect
             else "")
    details = ", ".join(f"{text} (RMS residual {rms:.3f} mV > {tol:.3f} mV)"
                        for text, _, rms, tol in broken)
    return f"limb leads violate {details}{guess}"


def _is_saturated(lead: np.ndarray, min_run: int) -> bool:
    if np.abs(lead).max() > SATURATION_MV:
        return True
    median = np.median(lead)
    for extreme in (lead.max(), lead.min()):
        if abs(extreme - median) < SATURATION_MIN_EXCURSION_MV:
            continue
        # equality up to float noise: clipped samples share one ADC code, hence one value
        if _longest_run(np.abs(lead - extreme) <= 1e-6) >= min_run:
            return True
    return False


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    starts, stops = _runs(mask)
    return int((stops - starts).max()) if starts.size else 0


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and (exclusive) stops of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _names(mask: np.ndarray) -> str:
    return ", ".join(lead for lead, m in zip(LEADS, mask, strict=True) if m)


# ============================================================================================
# Preprocessing: the paper's filter chain
# ============================================================================================


@dataclass(frozen=True)
class EcgPreprocessing:
    """The paper's default ECG preprocessing; ``None``/``False`` switches a step off.

    Applied in field order: high-pass -> notch -> Savitzky-Golay -> z-score. Defaults follow
    the authors' public code (qurAI-amsterdam/dual-phase-contrastive-learning, DESIGN.md §5),
    except the notch: 50 Hz for UK mains (the public code used 60 Hz).
    """

    highpass_hz: float | None = 0.5     # Butterworth high-pass cut-off (baseline wander), Hz
    highpass_order: int = 4             # filter order (zero-phase: the effective order doubles)
    notch_hz: float | None = 50.0       # mains frequency; 60.0 for the Americas
    notch_quality: float = 30.0         # Q = notch_hz / -3 dB bandwidth (30 -> 1.7 Hz wide)
    savgol_window: int | None = 15      # Savitzky-Golay window, samples (odd; 30 ms at 500 Hz)
    savgol_order: int = 3               # Savitzky-Golay polynomial order (< window)
    zscore: bool = True                 # one mean/sd over all leads and time of the record

    def __post_init__(self) -> None:
        if self.highpass_hz is not None:
            _require(self.highpass_hz > 0, f"highpass_hz must be > 0 or None, got {self.highpass_hz}")
            _require(_is_int(self.highpass_order) and self.highpass_order >= 1,
                     f"highpass_order must be an integer >= 1, got {self.highpass_order}")
        if self.notch_hz is not None:
            _require(self.notch_hz > 0, f"notch_hz must be > 0 or None, got {self.notch_hz}")
            _require(self.notch_quality > 0, f"notch_quality must be > 0, got {self.notch_quality}")
        if self.savgol_window is not None:
            _require(_is_int(self.savgol_window) and self.savgol_window >= 3
                     and self.savgol_window % 2 == 1,
                     f"savgol_window must be an odd integer >= 3 or None, got {self.savgol_window}")
            _require(_is_int(self.savgol_order) and 0 <= self.savgol_order < self.savgol_window,
                     f"savgol_order must be an integer in [0, savgol_window), "
                     f"got {self.savgol_order} with window {self.savgol_window}")
        _require(isinstance(self.zscore, bool), f"zscore must be True or False, got {self.zscore!r}")

    def check_rate(self, fs: float) -> None:
        """Raise ValueError if a filter frequency is not below the Nyquist frequency of ``fs``."""
        nyquist = fs / 2
        for name in ("highpass_hz", "notch_hz"):
            value = getattr(self, name)
            _require(value is None or value < nyquist,
                     f"{name}={value} must be below the Nyquist frequency {nyquist:g} Hz")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def preprocess_ecg(
    ecg: np.ndarray, cfg: EcgPreprocessing = EcgPreprocessing(), fs: float = ECG_FS_HZ
) -> np.ndarray:
    """Apply the filter chain of ``cfg`` to a ``(12, T)`` mV record at ``fs`` Hz -> ``(12, T)`` float32.

    Units of the output: mV when ``cfg.zscore`` is False, else dimensionless z-scores.
    Filters are zero-phase (forward-backward), so wave timing is unchanged.
    """
    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS):
        raise DataError("ECG has the wrong shape", expected="(12, T)", found=str(x.shape))
    if not np.isfinite(x).all():
        raise DataError("ECG has NaN or infinite samples; run load_ecg's QC first")
    cfg.check_rate(fs)
    try:
        x = _filter(x, cfg, fs)
    except ValueError as exc:  # scipy: the record is shorter than a filter's padding
        raise DataError(f"ECG too short for the filter chain ({exc})",
                        found=f"{x.shape[1]} samples") from exc
    if cfg.zscore:
        sd = x.std()
        if not sd > 0:
            raise DataError("cannot z-score a constant ECG", expected="sd > 0", found=f"sd={sd}")
        x = (x - x.mean()) / sd
    return x.astype(np.float32)


def _filter(x: np.ndarray, cfg: EcgPreprocessing, fs: float) -> np.ndarray:
    """High-pass, notch and Savitzky-Golay steps of ``cfg`` on ``(12, T)``, along time."""
    n = x.shape[1]
    if cfg.highpass_hz is not None:
        sos = butter(cfg.highpass_order, cfg.highpass_hz, btype="highpass", fs=fs, output="sos")
        # odd extension over half a cut-off period (1 s at 0.5 Hz), not scipy's default
        # 3 x order samples: that is far shorter than the filter's settling time and leaves
        # ~0.1 mV edge transients from a 1 mV baseline drift
        padlen = min(n - 1, math.ceil(fs / (2 * cfg.highpass_hz)))
        x = sosfiltfilt(sos, x, axis=1, padtype="odd", padlen=padlen)
    if cfg.notch_hz is not None:
        b, a = iirnotch(cfg.notch_hz, cfg.notch_quality, fs=fs)
        # pad over 5 ring-down time constants of the notch, tau = Q / (pi f0)
        padlen = min(n - 1, math.ceil(5 * cfg.notch_quality / (math.pi * cfg.notch_hz) * fs))
        x = filtfilt(b, a, x, axis=1, padtype="odd", padlen=padlen)
    if cfg.savgol_window is not None:
        x = savgol_filter(x, cfg.savgol_window, cfg.savgol_order, axis=1)
    return x
