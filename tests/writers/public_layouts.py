"""Test folders in the layouts of public CMR collections (ACDC, M&Ms), from a box phantom.

:func:`box_phantom` makes a small cine whose label volumes are known in closed form (boxes of
whole voxels), so a converter's phenotypes can be checked exactly against voxel counts x voxel
volume. :func:`write_acdc_patient` and :func:`write_mnms_subject` write it (or any cine with
labels in OUR convention) the way each collection ships its data; the label maps are remapped
to the collection's own label values on write. See :mod:`ecgcmr.convert.public_cmr` for the
layouts and their sources.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ecgcmr.constants import LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD
from ecgcmr.convert.public_cmr import ACDC_TO_OURS, MNMS_TO_OURS
from ecgcmr.data.writers import write_nifti

#: Columns of the M&Ms information CSV written here (the collection's, in its order).
MNMS_CSV_COLUMNS: tuple[str, ...] = (
    "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology", "Sex", "Age",
)


@dataclass(frozen=True)
class BoxGeometry:
    """Where the phantom's structures are, in voxels; every size is a whole number of voxels.

    Per phase: the LV blood pool is a square of side ``lv_side`` on ``lv_slices``, the
    myocardium a frame ``wall`` voxels wide around it, the RV blood pool a rectangle
    ``rv_width x rv_height`` on ``rv_slices``, one voxel right of the myocardium (array axis 0).
    """

    lv_side: dict[str, int]         # {"ed": 16, "es": 10}
    wall: dict[str, int]            # myocardial thickness: thickens in systole
    rv_width: dict[str, int]
    rv_height: int = 16
    lv_slices: tuple[int, int] = (1, 5)   # [first, stop) along array axis 2
    rv_slices: tuple[int, int] = (1, 4)
    lv_centre: tuple[int, int] = (18, 24)  # (axis 0, axis 1) voxel the LV square is centred on

    def voxel_counts(self, phase: str) -> dict[int, int]:
        """``{our label: voxel count}`` of one phase, in closed form."""
        n_lv = self.lv_slices[1] - self.lv_slices[0]
        n_rv = self.rv_slices[1] - self.rv_slices[0]
        side, wall = self.lv_side[phase], self.wall[phase]
        return {LABEL_LV_BLOOD: n_lv * side**2,
                LABEL_LV_MYO: n_lv * ((side + 2 * wall) ** 2 - side**2),
                LABEL_RV_BLOOD: n_rv * self.rv_width[phase] * self.rv_height}


DEFAULT_GEOMETRY = BoxGeometry(lv_side={"ed": 16, "es": 10}, wall={"ed": 2, "es": 3},
                               rv_width={"ed": 10, "es": 6})
#: 1.5625 x 1.5625 x 10 mm: an ACDC-like spacing whose voxel volume (24.4140625 mm^3) is exact
#: in binary floating point, so expected volumes are exact too.
DEFAULT_SPACING_MM: tuple[float, float, float] = (1.5625, 1.5625, 10.0)

# intensities of a bright-blood (SSFP) cine: blood > myocardium > background
_INTENSITY = {0: 100, LABEL_LV_BLOOD: 1000, LABEL_LV_MYO: 300, LABEL_RV_BLOOD: 900}


@dataclass(frozen=True)
class Phantom:
    """A small cine with labels in OUR convention."""

    cine: np.ndarray      # (X, Y, Z, T) int16
    labels: np.ndarray    # (X, Y, Z, T) uint8: 0 background, 1 LV blood, 2 LV myo, 3 RV blood
    affine: np.ndarray    # (4, 4) voxel -> world, mm
    ed_index: int         # 0-based frame of end-diastole
    es_index: int         # 0-based frame of end-systole
    geometry: BoxGeometry

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def box_phantom(
    shape: tuple[int, int, int] = (48, 48, 6),
    n_frames: int = 10,
    *,
    ed_index: int = 0,
    es_index: int = 4,
    geometry: BoxGeometry = DEFAULT_GEOMETRY,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    seed: int = 0,
) -> Phantom:
    """A box-shaped heart: ED geometry at ``ed_index``, ES at ``es_index``, ED elsewhere.

    The frames between are not a realistic contraction (only ED and ES are ever labelled in
    the collections); intensities carry seeded noise so no two frames are identical.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((*shape, n_frames), dtype=np.uint8)
    for t in range(n_frames):
        labels[..., t] = _box_labels(shape, geometry, "es" if t == es_index else "ed")
    lut = np.array([_INTENSITY[k] for k in range(4)], dtype=np.float64)
    cine = lut[labels] + rng.normal(0.0, 20.0, labels.shape)
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = (-40.0, -35.0, 20.0)
    return Phantom(cine=np.rint(cine).astype(np.int16), labels=labels, affine=affine,
                   ed_index=ed_index, es_index=es_index, geometry=geometry)


def _box_labels(shape: tuple[int, int, int], g: BoxGeometry, phase: str) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    side, wall = g.lv_side[phase], g.wall[phase]
    c0, c1 = g.lv_centre
    lo0, lo1 = c0 - side // 2, c1 - side // 2
    z_lv = slice(*g.lv_slices)
    outer = (slice(lo0 - wall, lo0 + side + wall), slice(lo1 - wall, lo1 + side + wall))
    out[outer[0], outer[1], z_lv] = LABEL_LV_MYO
    out[lo0:lo0 + side, lo1:lo1 + side, z_lv] = LABEL_LV_BLOOD
    rv0 = lo0 + side + wall + 1
    rv1 = c1 - g.rv_height // 2
    out[rv0:rv0 + g.rv_width[phase], rv1:rv1 + g.rv_height, slice(*g.rv_slices)] = LABEL_RV_BLOOD
    return out


def write_acdc_patient(
    root: str | PathLike[str],
    pid: str,
    cine_4d: np.ndarray,
    labels_4d: np.ndarray,
    affine: np.ndarray,
    ed_frame: int,
    es_frame: int,
    *,
    group: str = "NOR",
    height_cm: float = 175.0,
    weight_kg: float = 75.0,
) -> Path:
    """Write ``root/<pid>/`` as ACDC ships it; return that folder.

    ``ed_frame``/``es_frame`` are ACDC's **1-based** frame numbers. ``labels_4d`` is in OUR
    convention; the ED and ES frames are written as ``_frameFF_gt`` with ACDC's values.
    """
    folder = Path(root) / pid
    folder.mkdir(parents=True, exist_ok=True)
    info = {"ED": ed_frame, "ES": es_frame, "Group": group, "Height": height_cm,
            "NbFrame": cine_4d.shape[3], "Weight": weight_kg}
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    write_nifti(folder, f"{pid}_4d.nii.gz", cine_4d, affine)
    to_acdc = _inverse(ACDC_TO_OURS)
    for frame in (ed_frame, es_frame):
        write_nifti(folder, f"{pid}_frame{frame:02d}.nii.gz", cine_4d[..., frame - 1], affine)
        write_nifti(folder, f"{pid}_frame{frame:02d}_gt.nii.gz",
                     to_acdc[labels_4d[..., frame - 1]], affine)
    return folder


def write_mnms_subject(
    root: str | PathLike[str],
    code: str,
    cine_4d: np.ndarray,
    labels_4d: np.ndarray,
    affine: np.ndarray,
    ed_frame: int,
    es_frame: int,
    *,
    csv_path: str | PathLike[str],
    vendor: str = "A",
    vendor_name: str = "Siemens",
    centre: int = 1,
    pathology: str = "NOR",
    sex: str = "M",
    age: int = 50,
) -> Path:
    """Write ``root/<code>/`` as M&Ms ships it and append its row to ``csv_path``.

    ``ed_frame``/``es_frame`` are M&Ms' **0-based** indices. ``labels_4d`` is in OUR
    convention; as in the collection, only the ED and ES frames of ``_sa_gt`` are labelled.
    The CSV is created with its header if it does not exist. Returns the subject folder.
    """
    folder = Path(root) / code
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder, f"{code}_sa.nii.gz", cine_4d, affine)
    to_mnms = _inverse(MNMS_TO_OURS)
    gt = np.zeros(labels_4d.shape, dtype=np.uint8)
    for frame in (ed_frame, es_frame):
        gt[..., frame] = to_mnms[labels_4d[..., frame]]
    write_nifti(folder, f"{code}_sa_gt.nii.gz", gt, affine)
    csv_path = Path(csv_path)
    new = not csv_path.is_file()
    with csv_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(MNMS_CSV_COLUMNS)
        writer.writerow([code, vendor_name, vendor, centre, ed_frame, es_frame, pathology,
                         sex, age])
    return folder


def _inverse(to_ours: Mapping[int, int]) -> np.ndarray:
    """Lookup table OUR label -> collection label (uint8)."""
    lut = np.zeros(max(to_ours.values()) + 1, dtype=np.uint8)
    for source, ours in to_ours.items():
        lut[ours] = source
    return lut
