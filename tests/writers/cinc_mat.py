"""Write a 12-lead ECG as a PhysioNet/CinC Challenge 2020/2021 record: ``A0001.mat`` + ``A0001.hea``.

For tests and demos: the challenge's layout, so nothing has to be downloaded. As the challenge
describes it (physionetchallenges.org/2020, "Data"; the example ``A0001.hea`` of its
python-classifier-2020 README), the signals are a MATLAB file with one variable ``val``, an
int16 ``(12, n)`` array of ADC steps, and the header is a WFDB header whose signal lines name
that file with format 16 and a byte offset::

    A0001 12 500 7500 05-Feb-2020 11:39:16
    A0001.mat 16+24 1000/mV 16 0 28 -1716 0 I
    ...
    #Age: 74
    #Sex: Male
    #Dx: 59118001

The offset is where the samples start in the file. The challenge files are MATLAB version 4
(``scipy.io.savemat(..., format="4")``): a 20-byte header (five int32: type, rows, columns,
imaginary flag, name length) and the variable name with its NUL (``val\\0``, 4 bytes), 24 bytes
in all, then the matrix column by column, which for ``(12, n)`` is sample by sample, lead by
lead: exactly WFDB's interleaved format 16. The offset written is measured from the file
written, not assumed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from scipy.io import savemat

from ecgcmr.constants import LEADS

_INT16_MAX = 32767


def write_cinc_mat(
    out_dir: str | PathLike[str],
    record_name: str,
    ecg_mv: np.ndarray,
    fs: float,
    *,
    gain_per_mv: float = 1000.0,
    lead_names: Sequence[str] = LEADS,
    comments: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out_dir/<record_name>.mat`` and ``.hea``; return the ``.mat`` path.

    ``ecg_mv`` ``(12, n)`` mV (rows named by ``lead_names``, default LEADS) is quantised at
    ``gain_per_mv`` steps per mV (the challenge files use 1000: 1 µV per step). ``comments``:
    header comment lines ``#key: value`` (default the challenge's Age/Sex/Dx/Rx/Hx/Sx).
    """
    out = Path(out_dir)
    x = np.asarray(ecg_mv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(lead_names) or x.shape[1] == 0 or not np.isfinite(x).all():
        raise ValueError(f"ecg_mv must be a finite ({len(lead_names)}, n) array, got {x.shape}")
    val = np.round(x * gain_per_mv)
    if np.abs(val).max() > _INT16_MAX:
        raise ValueError(f"signal does not fit int16 at {gain_per_mv:g} steps per mV")
    val = val.astype(np.int16)
    out.mkdir(parents=True, exist_ok=True)
    mat = out / f"{record_name}.mat"
    savemat(mat, {"val": val}, format="4")
    offset = mat.stat().st_size - val.nbytes
    if offset != 20 + len("val") + 1:  # MATLAB v4: 5 x int32 + "val\0"
        raise RuntimeError(f"unexpected MATLAB v4 header size {offset} in {mat}")
    n = val.shape[1]
    lines = [f"{record_name} {len(lead_names)} {fs:g} {n} 05-Feb-2020 11:39:16"]
    for row, name in enumerate(lead_names):
        # WFDB checksum: the 16-bit sum of the samples, written signed as the challenge does
        checksum = (int(val[row].sum(dtype=np.int64)) + 32768) % 65536 - 32768
        lines.append(f"{record_name}.mat 16+{offset} {gain_per_mv:g}/mV 16 0 {int(val[row, 0])} "
                     f"{checksum} 0 {name}")
    meta = comments if comments is not None else {
        "Age": "74", "Sex": "Male", "Dx": "426783006", "Rx": "Unknown", "Hx": "Unknown",
        "Sx": "Unknown"}
    lines += [f"#{key}: {value}" for key, value in meta.items()]
    (out / f"{record_name}.hea").write_text("".join(f"{line}\n" for line in lines),
                                            encoding="ascii")
    return mat
