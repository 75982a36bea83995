"""Cardiac phenotypes measured from ED/ES label maps by disc summation, as clinical analysis does.

One measurement for every label map the project meets: the synthetic cohort's, converted ACDC /
M&Ms segmentations, a user's own. Labels follow :mod:`ecgcmr.constants` (``LABEL_LV_BLOOD``,
``LABEL_LV_MYO``, ``LABEL_RV_BLOOD``); the voxel spacing comes from the image's affine
(:func:`ecgcmr.data.cmr.spacing_from_affine`).
"""

from __future__ import annotations

import math

import numpy as np

from ecgcmr.constants import (
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    MYOCARDIAL_DENSITY_G_PER_ML,
    PHENOTYPES,
)
from ecgcmr.errors import DataError

__all__ = ["MM3_PER_ML", "measure_phenotypes"]

MM3_PER_ML = 1000.0


def measure_phenotypes(
    labels_ed: np.ndarray,
    labels_es: np.ndarray,
    spacing_mm: tuple[float, float, float],
) -> dict[str, float]:
    """LV/RV volumes, stroke volumes, EFs and LV mass from ED/ES label maps (disc summation).

    Volume = voxel count x voxel volume, the voxel volume being in-plane spacing squared times
    the *slice spacing* (thickness + gap), as clinical disc summation counts each slice for the
    whole distance to the next. LV mass = ED myocardial volume x 1.05 g/mL.

    Args:
        labels_ed, labels_es: ``(X, Y, Z)`` integer label maps with
            :data:`~ecgcmr.constants.LABEL_LV_BLOOD`, ``LABEL_LV_MYO``, ``LABEL_RV_BLOOD``
            (other values are ignored); float arrays holding whole numbers are accepted.
        spacing_mm: voxel spacing ``(x, y, z)`` in mm, z being the slice spacing.

    Returns:
        ``{name: value}`` for exactly :data:`~ecgcmr.constants.PHENOTYPES` (mL, %, g); an EF
        is NaN when its EDV is 0.
    """
    ed, es = _as_label_map(labels_ed, "labels_ed"), _as_label_map(labels_es, "labels_es")
    if ed.shape != es.shape:
        raise DataError("ED and ES label maps differ in shape", expected="equal shapes",
                        found=f"{ed.shape} vs {es.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError("invalid voxel spacing", expected="three positive mm values",
                        found=str(spacing_mm))
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / MM3_PER_ML

    def volume(labels: np.ndarray, value: int) -> float:
        return float(np.count_nonzero(labels == value)) * voxel_ml

    lvedv, lvesv = volume(ed, LABEL_LV_BLOOD), volume(es, LABEL_LV_BLOOD)
    rvedv, rvesv = volume(ed, LABEL_RV_BLOOD), volume(es, LABEL_RV_BLOOD)
    out = {
        "lvedv_ml": lvedv,
        "lvesv_ml": lvesv,
        "lvsv_ml": lvedv - lvesv,
        "lvef_pct": _ef_pct(lvedv, lvesv),
        "lvm_g": volume(ed, LABEL_LV_MYO) * MYOCARDIAL_DENSITY_G_PER_ML,
        "rvedv_ml": rvedv,
        "rvesv_ml": rvesv,
        "rvsv_ml": rvedv - rvesv,
        "rvef_pct": _ef_pct(rvedv, rvesv),
    }
    return {name: out[name] for name in PHENOTYPES}


def _ef_pct(edv: float, esv: float) -> float:
    return 100.0 * (edv - esv) / edv if edv > 0 else float("nan")


def _as_label_map(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise DataError(f"{name} must be a 3-D label map", expected="(X, Y, Z)",
                        found=f"shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must hold whole-number labels",
                            expected="integer labels 0/1/2/3", found=f"dtype {arr.dtype}")
    return arr
