"""The two file writers of the data contract: ECG records as WFDB, CMR volumes as NIfTI-1.

Used by the converters (:mod:`ecgcmr.convert`), the synthetic cohort (:mod:`ecgcmr.synth`) and
the tests; what they write is what :mod:`ecgcmr.data.ecg` and :mod:`ecgcmr.data.cmr` read.

:func:`write_wfdb`: a ``(12, n)`` mV array -> ``<out_dir>/<name>.hea/.dat``. Format 16 (16-bit
two's complement, little-endian), physical units mV, channels named as
:data:`ecgcmr.constants.LEADS`, so :func:`ecgcmr.data.ecg.read_ecg` reads every record back.
The caller chooses the ADC gain (steps per mV): a converter passes its source's own resolution,
so the source's integer samples are written unchanged and read back exactly. The files are
written directly (numpy for the samples, the header as text): byte for byte what
``wfdb.wrsamp`` writes for the same digital signal, at a fraction of its cost (``wrsamp``
validates every field through pandas tables, ~20 ms a record).

:func:`write_nifti`: an array and its affine (mm) -> ``.nii`` / ``.nii.gz``, decoded byte for
byte what ``nib.save`` writes.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from ecgcmr.constants import LEADS
from ecgcmr.errors import DataError

__all__ = ["FORMAT_16_MAX", "FORMAT_16_MIN", "NIFTI_GZIP_LEVEL", "WFDB_INVALID_16",
           "write_nifti", "write_wfdb"]

# ============================================================================================
# WFDB
# ============================================================================================

# WFDB signal spec (signal.5, "format 16"): 16-bit two's complement samples. The value -32768
# is reserved as the "invalid sample" marker, so the usable range is symmetric.
FORMAT_16_MIN: int = -32767
FORMAT_16_MAX: int = 32767
WFDB_INVALID_16: int = -32768

# A record name is one path component WFDB accepts (wfdb refuses dots; we also refuse
# separators and spaces so a name from an untrusted file name cannot leave out_dir).
_RECORD_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def write_wfdb(
    out_dir: str | PathLike[str],
    record_name: str,
    signal_mv: np.ndarray,
    fs: float,
    *,
    adc_gain_per_mv: float | Sequence[float],
    comments: Sequence[str] = (),
) -> Path:
    """Write ``signal_mv`` ``(12, n)`` (mV, LEADS order) at ``fs`` Hz; return the record path.

    ``adc_gain_per_mv``: ADC steps per mV, one value or one per lead (e.g. ``1000 / 5.0`` for a
    5 µV-per-step source). Samples are rounded to the nearest step; NaN becomes WFDB's invalid
    sample (read back as NaN). Returns ``out_dir / record_name`` (no suffix). Raises
    :class:`DataError` for a bad shape, rate, gain or record name, or a value that does not
    fit format 16 at the given gain.
    """
    out = Path(out_dir)
    x = np.asarray(signal_mv, dtype=np.float64)
    gains = _check_inputs(out, record_name, x, fs, adc_gain_per_mv)
    digital = _to_digital(x, gains, out / record_name)
    out.mkdir(parents=True, exist_ok=True)
    # samples interleaved frame by frame (n, 12), little-endian int16
    (out / f"{record_name}.dat").write_bytes(np.ascontiguousarray(digital.T, dtype="<i2").tobytes())
    (out / f"{record_name}.hea").write_text(
        _header_text(record_name, digital, fs, gains, comments), encoding="utf-8")
    return out / record_name


def _header_text(record_name: str, digital: np.ndarray, fs: float, gains: np.ndarray,
                 comments: Sequence[str]) -> str:
    """The .hea text, field for field as ``wfdb.wrsamp`` formats it: per signal ``file fmt
    gain(baseline)/units adc_res adc_zero init_value checksum block_size name``."""
    checksums = digital.sum(axis=1, dtype=np.int64) % 65536  # WFDB's 16-bit checksum
    lines = [f"{record_name} {len(LEADS)} {_plain_number(fs)} {digital.shape[1]}"]
    lines += [f"{record_name}.dat 16 {float(gain)}(0)/mV 16 0 {int(first)} {int(check)} 0 {lead}"
              for lead, gain, first, check in zip(LEADS, gains, digital[:, 0], checksums,
                                                  strict=True)]
    lines += [f"# {_one_line(c)}" for c in comments]
    return "".join(f"{line}\n" for line in lines)


def _check_inputs(
    out: Path, record_name: str, x: np.ndarray, fs: float, gain: float | Sequence[float]
) -> np.ndarray:
    """Validate the arguments; return the per-lead gains ``(12,)``."""
    if not _RECORD_NAME.match(record_name):
        raise DataError("invalid WFDB record name", path=out,
                        expected="letters, digits, '_' or '-' only", found=repr(record_name))
    if x.ndim != 2 or x.shape[0] != len(LEADS) or x.shape[1] == 0:
        raise DataError("ECG has the wrong shape", path=out / record_name,
                        expected="(12, n) with n > 0", found=str(x.shape))
    if not (np.isfinite(fs) and fs > 0):
        raise DataError("invalid sampling frequency", path=out / record_name,
                        expected="a positive number of Hz", found=repr(fs))
    gains = np.broadcast_to(np.asarray(gain, dtype=np.float64), (len(LEADS),)).copy()
    if not (np.isfinite(gains).all() and (gains > 0).all()):
        raise DataError("invalid ADC gain", path=out / record_name,
                        expected="positive steps per mV", found=str(gains.tolist()))
    return gains


def _to_digital(x: np.ndarray, gains: np.ndarray, record: Path) -> np.ndarray:
    """``(12, n)`` mV -> ``(12, n)`` int16 ADC steps; NaN -> WFDB_INVALID_16."""
    scaled = np.round(x * gains[:, None])
    finite = np.isfinite(scaled)
    over = finite & ((scaled < FORMAT_16_MIN) | (scaled > FORMAT_16_MAX))
    if over.any():
        lead = LEADS[int(np.flatnonzero(over.any(axis=1))[0])]
        raise DataError(f"signal does not fit WFDB format 16 at this gain (lead {lead})",
                        path=record, expected=f"|x| <= {FORMAT_16_MAX} ADC steps",
                        found=f"{np.abs(scaled[over]).max():.0f} steps")
    return np.where(finite, scaled, WFDB_INVALID_16).astype(np.int16)


def _plain_number(fs: float) -> float | int:
    """500.0 -> 500, so the header reads ``500`` rather than ``500.0``."""
    return int(fs) if float(fs).is_integer() else float(fs)


def _one_line(comment: str) -> str:
    """A header comment is one line: newlines in text taken from a file would break the header."""
    return " ".join(str(comment).split())


# ============================================================================================
# NIfTI
# ============================================================================================

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib writes a gzip member (header + CRC), as .nii.gz wants
#: zlib level of .nii.gz files (1 = nibabel's default). 0 (stored) was no faster end to end
#: (twice the bytes to write: the label maps compress ~100x) for a CMR folder twice the size.
NIFTI_GZIP_LEVEL = 1
# native little-endian int16 / uint8 / float32: nibabel writes them unscaled, as they are
_FAST_NIFTI_DTYPES = ("<i2", "|u1", "<f4")


def write_nifti(out: Path, rel: str, array: np.ndarray, affine: np.ndarray) -> str:
    """Write ``array`` with ``affine`` (q- and s-form, mm) as NIfTI-1 to ``out / rel``; return
    ``rel`` (the path a manifest stores, relative to ``out``).

    The decoded file is byte for byte what ``nib.save`` writes. ``.nii.gz`` is deflated
    run-length only: ~2x faster than zlib level 1 (nibabel's) on noisy int16 images, within
    ~4 % of its size, smaller on label maps (compressed bytes differ, decoded ones do not).
    """
    array = np.asanyarray(array)
    if array.dtype.str not in _FAST_NIFTI_DTYPES:
        raw = _nifti_image(array, affine).to_bytes()
    else:  # one header per (affine, dtype, shape): ED and ES share it
        prefix = _nifti_prefix(np.asarray(affine, dtype=np.float64).tobytes(), array.dtype.str,
                               array.shape)
        raw = prefix + array.tobytes(order="F")
    if rel.endswith(".gz"):
        packer = zlib.compressobj(NIFTI_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS, 8, zlib.Z_RLE)
        raw = packer.compress(raw) + packer.flush()
    (out / rel).write_bytes(raw)
    return rel


def _nifti_image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)   # 1 = scanner coordinates, like a DICOM conversion
    img.set_sform(affine, code=1)
    return img


@functools.lru_cache(maxsize=8)
def _nifti_prefix(affine: bytes, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Header (+ empty extension block) nibabel writes before the voxels of such an image:
    for these dtypes it never scales, so it does not depend on the voxel values."""
    zeros = np.zeros(shape, dtype=dtype)
    raw = _nifti_image(zeros, np.frombuffer(affine, dtype=np.float64).reshape(4, 4)).to_bytes()
    return raw[:len(raw) - zeros.nbytes]
