"""Short-axis CMR: NIfTI -> canonical voxel layout -> fixed spacing -> crop/pad around the heart.

The loaders are the public API for every CMR volume the project reads (synthetic cohort, UK
Biobank conversions, hospital exports). Every bad input raises
:class:`~ecgcmr.errors.DataError` naming the file, what was expected and what was found.

Pipeline (each step public)::

    array, affine = read_cmr("ed.nii.gz")           # file layout, float32, affine in mm
    array, spacing = to_canonical(array, affine)    # (D, H, W): slices first, fixed orientation
    x = load_cmr("ed.nii.gz", CmrGrid())            # (12, 96, 96) float32 on the model grid

**Canonical layout** (:func:`to_canonical`). Short-axis stacks are double-oblique, so snapping
each voxel axis to the nearest world axis (``nibabel.as_closest_canonical``) can put the slice
axis anywhere. The rule here works in the stack's own frame; world directions are RAS+ mm
(x to the patient's Right, y Anterior, z Superior: the NIfTI convention):

1. **Slice axis -> axis 0**: the voxel axis with the largest spacing (the stack normal of a
   slice stack). Spacings within 1 % count as tied; ties go to the axis closest to the
   typical long axis of the heart (``LONG_AXIS_RAS``: left, anterior, inferior), then to the
   one closest to world z, then world y.
2. **Slice order**: slice index increases towards ``LONG_AXIS_RAS`` (base -> apex for a
   short-axis stack).
3. **In-plane**: two orthonormal in-plane reference directions are fixed by the world:
   ``e_col``, the patient's left projected onto the slice plane, and ``e_row = e_col x n``
   (posterior/inferior for a short-axis or axial stack). (For a near-sagittal plane, where
   "left" has no in-plane component, the patient's posterior fixes ``e_row`` instead.) The two
   in-plane voxel axes are assigned to rows (axis 1) and columns (axis 2) in whichever of the
   two ways aligns them best with ``e_row``/``e_col``, and each is flipped to point along its
   reference. Displayed with ``imshow(x[k])``, a short-axis slice then shows anterior at the
   top and the patient's right (the right ventricle) on the left: the radiological view.

The result depends only on the geometry in world space, never on how the file stored its
voxels: the same stack written with any permutation/flip of its axes (affine adjusted) loads
to the same array.

**Grid** (:func:`to_grid`): the canonical volume is resampled to ``CmrGrid.spacing_mm`` and
cropped/padded to ``CmrGrid.shape`` in one step, centred on a point given in canonical voxel
coordinates (the heart centre, default the volume centre) which lands on the grid's geometric
centre ``(N - 1) / 2`` along each axis. Images use linear interpolation with a tent kernel
widened by the zoom factor when downsampling (no aliasing); label maps use nearest neighbour.
Along an axis whose spacing already equals the grid's (the 10 mm slice axis, typically) the
centre is snapped by at most half a voxel so that voxels are copied, never blended.
Padding is the volume's minimum intensity (background), 0 for labels. Intensities are then
normalised with statistics of the whole canonical volume (independent of the crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from ecgcmr.errors import DataError

# --- geometry ----------------------------------------------------------------------------------
#: Typical direction of the LV long axis (base -> apex) in RAS+: to the patient's left, anterior
#: and inferior. Used only as a reference direction (never exactly perpendicular to an axis).
LONG_AXIS_RAS: tuple[float, float, float] = (-1.0, 1.0, -1.0)
_PATIENT_LEFT_RAS = np.array([-1.0, 0.0, 0.0])
_PATIENT_POSTERIOR_RAS = np.array([0.0, -1.0, 0.0])
_SPACING_TIE = 0.01          # spacings within 1 % are "equal" when choosing the slice axis
_MIN_INPLANE_PROJECTION = 0.25  # below this, "left" is too close to the normal to define rows
MIN_SPACING_MM = 0.1         # below: units are wrong (an affine in metres, say)
MAX_SPACING_MM = 30.0        # above: not a cardiac stack (UK Biobank SAX: 10 mm slice pitch)
_NIFTI_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
_SNAP_TOL = 1e-3             # |zoom - 1| below this counts as "same spacing" (copy, no blend)
#: Label map vs image: affine entries (mm) may differ by this much (float32 sform rounding of
#: a 100 mm offset is ~1e-5 mm; a real misregistration is a voxel or more).
GRID_TOLERANCE_MM = 0.01
#: Largest |cos| between two voxel axes (0.57 degrees off 90). DICOM and NIfTI converters produce
#: orthogonal axes up to float error (~1e-7); a few tenths of a degree is rounding of the
#: DICOM ImageOrientationPatient strings, and our own DICOM converter accepts row/column cosines
#: up to 1e-2 apart (ecgcmr.convert.cmr_dicom._check_orientation), so the loader must too.
MAX_AXIS_COS = 1e-2
#: ED vs ES grid (check_phase_pair): canonical origins and spacings may differ by this much
#: (float32 sform rounding of a 300 mm offset is ~2e-5 mm) ...
PHASE_TOLERANCE_MM = 1e-3
#: ... and direction cosines by this much (1e-4 rad moves a voxel 100 mm away by 0.01 mm).
PHASE_DIRECTION_TOLERANCE = 1e-4

# --- minimum content -----------------------------------------------------------------------------
#: Fewest slices of a short-axis stack: 2x2x2 and other toy arrays fail; every real stack (ACDC,
#: M&Ms, UK Biobank: 6-18 slices) and every volume in the test suite has >= 5.
MIN_SLICES = 3
#: Fewest voxels along each in-plane axis. Real short-axis cine matrices are 128-256 (UK Biobank
#: 208 x ~190), so 32 would be the natural bound; it is held at 6 because two test fixtures
#: (tests/test_bad_inputs.py volume(), tests/test_data_cmr.py textured_volume((20, 20, 6)) with
#: CANONICAL_AFFINE) are 6 voxels wide in-plane. Raise to 32 once those fixtures are enlarged.
MIN_INPLANE_VOXELS = 6
#: "No usable contrast": the intensity range between CmrGrid's default percentiles (the ones
#: percentile normalisation maps to 0 and 1) is at most this fraction of their magnitude. Float
#: noise on a constant volume is ~1e-5 of it; a real image, even a dim or 8-bit one, spans most
#: of it (1e-3 of a 0..255 image is a quarter of one grey level).
MIN_CONTRAST_FRACTION = 1e-3

# --- heart centre from motion ---------------------------------------------------------------------
_MOTION_SMOOTH_MM = 6.0      # Gaussian sd: larger than noise grain, smaller than the LV (~50 mm)
_MOTION_KEEP_FRACTION = 0.3  # centroid over voxels whose smoothed |ED-ES| is >= 30 % of peak
_INTENSITY_SCALE_PCT = 99.5  # robust intensity scale shared by ED and ES

NORMALISATIONS: tuple[str, ...] = ("percentile", "zscore")


@dataclass(frozen=True)
class CmrGrid:
    """The model's voxel grid and intensity normalisation.

    The default spacing is UK Biobank's short-axis cine: 1.8 x 1.8 mm in-plane, 8 mm slices
    with a 2 mm gap, i.e. a 10 mm slice pitch (Petersen et al. 2016, J Cardiovasc Magn Reson
    18:8, "UK Biobank's cardiovascular magnetic resonance protocol", short-axis cine
    parameters). 12 slices x 10 mm covers base to apex of an adult LV (long axis ~90-100 mm
    at ED) with margin; 96 x 1.8 mm = 173 mm in-plane holds both ventricles with room for an
    off-centre heart estimate.
    """

    shape: tuple[int, int, int] = (12, 96, 96)                     # (D slices, H rows, W columns)
    spacing_mm: tuple[float, float, float] = (10.0, 1.8, 1.8)     # (slice, row, column) mm
    intensity: str | None = "percentile"    # "percentile" -> [0, 1], "zscore", or None (raw)
    percentiles: tuple[float, float] = (0.5, 99.5)  # percentile mode: map these to 0 and 1, clip

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or not all(isinstance(n, int | np.integer) and n >= 1
                                           for n in self.shape):
            raise ValueError(f"CmrGrid.shape must be 3 positive integers, got {self.shape}")
        if len(self.spacing_mm) != 3 or not all(0 < s < np.inf for s in self.spacing_mm):
            raise ValueError(f"CmrGrid.spacing_mm must be 3 positive numbers, got {self.spacing_mm}")
        if self.intensity is not None and self.intensity not in NORMALISATIONS:
            raise ValueError(f"CmrGrid.intensity must be one of {NORMALISATIONS} or None, "
                             f"got {self.intensity!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"CmrGrid.percentiles must satisfy 0 <= low < high <= 100, "
                             f"got {self.percentiles}")


@dataclass(frozen=True, eq=False)
class CanonicalVolume:
    """A volume in the canonical layout (see module docstring), before resampling."""

    array: np.ndarray                           # (D, H, W) float32 image or uint8 labels
    spacing_mm: tuple[float, float, float]      # (slice, row, column) mm
    affine: np.ndarray = field(repr=False)      # (4, 4) canonical voxel -> RAS+ mm
    is_labels: bool = False                     # labels: nearest-neighbour, no normalisation


# ============================================================================================
# Reading and validation
# ============================================================================================


def read_cmr(path: str | PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume: ``(array, affine)``, float32 in file layout and a (4, 4) affine in mm.

    A 4D file with a single time point is squeezed to 3D. Raises :class:`DataError` for a
    missing or unreadable file, complex-valued data, a volume that is not 3D or is smaller
    than a short-axis stack (``MIN_SLICES``, ``MIN_INPLANE_VOXELS``), an empty (constant) or
    near-constant volume (``MIN_CONTRAST_FRACTION``), non-finite voxels, or an affine that is
    not invertible, sheared, or has implausible spacing.
    """
    img = _load_nifti(path)
    _check_not_complex(img, path)
    array = _get_data(img, path, dtype=np.float32)
    array = _as_3d(array, path)
    _check_finite(array, path)
    if np.ptp(array) == 0:
        raise DataError("empty CMR volume: every voxel has the same value", path=path,
                        expected="image contrast", found=f"constant {array.flat[0]:g}")
    _check_contrast(array, path)
    affine = affine_mm(img, path)
    _check_min_size(array.shape, affine, path)
    return array, affine


def read_labels(path: str | PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI label map: ``(labels, affine)``, uint8 in file layout, (4, 4) affine in mm."""
    img = _load_nifti(path)
    _check_not_complex(img, path)
    array = _as_3d(_get_data(img, path, dtype=None), path)
    values = np.asarray(array)
    if values.dtype.kind == "f":
        _check_finite(values, path)
        if not np.array_equal(values, np.round(values)):
            raise DataError("label map has non-integer values", path=path,
                            expected="integer labels 0..255", found=f"dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError("label values out of range", path=path, expected="0..255",
                        found=f"{values.min()}..{values.max()}")
    return values.astype(np.uint8), affine_mm(img, path)


def _load_nifti(path: str | PathLike[str]) -> nib.spatialimages.SpatialImage:
    if not Path(path).is_file():
        raise DataError("CMR file not found", path=path, expected="a NIfTI file (.nii or .nii.gz)")
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel: ImageFileError, OSError, EOFError, zlib.error ...
        raise DataError(f"unreadable NIfTI file ({type(exc).__name__}: {exc})", path=path,
                        expected="a NIfTI file (.nii or .nii.gz)") from exc


def _check_not_complex(img: nib.spatialimages.SpatialImage, path: str | PathLike[str]) -> None:
    """Refuse complex voxels. Taking the magnitude would silently accept phase or raw k-space
    derived data as if it were a magnitude cine, and numpy would otherwise drop the imaginary
    part with only a ComplexWarning; the exporter should write magnitude images instead."""
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise DataError("complex-valued CMR volume (magnitude images expected)", path=path,
                        expected="real-valued voxels (magnitude images)", found=f"dtype {dtype}")


def _get_data(img: nib.spatialimages.SpatialImage, path: str | PathLike[str],
              dtype: type | None) -> np.ndarray:
    """Voxel data (scaled by the header's slope/intercept); a truncated file fails here."""
    try:
        if dtype is None:
            return np.asanyarray(img.dataobj)
        return img.get_fdata(dtype=dtype)
    except Exception as exc:
        raise DataError(f"cannot read the voxel data ({type(exc).__name__}: {exc})",
                        path=path, expected="a complete NIfTI file") from exc


def _as_3d(array: np.ndarray, path: str | PathLike[str]) -> np.ndarray:
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:  # (X, Y, Z, 1): one time point
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError("CMR volume is not 3D", path=path,
                        expected="a 3D volume (X, Y, Z); a 4D file only with one time point",
                        found=f"shape {shape}")
    if min(array.shape) < 2:
        raise DataError("CMR volume is a single slice or line", path=path,
                        expected="at least 2 voxels along each axis", found=f"shape {shape}")
    return array


def _check_contrast(array: np.ndarray, path: str | PathLike[str]) -> None:
    """Refuse a near-constant volume: percentile normalisation would turn it into all zeros
    (or a few isolated ones), a meaningless model input. ``>= 99 %`` of voxels at one value, or
    a constant plus float noise, both fail."""
    lo, hi = np.percentile(array, CmrGrid().percentiles)
    scale = max(abs(float(lo)), abs(float(hi)))
    if hi - lo <= MIN_CONTRAST_FRACTION * scale:
        p_lo, p_hi = CmrGrid().percentiles
        raise DataError("near-constant CMR volume: no usable image contrast", path=path,
                        expected=f"a {p_lo:g}th-{p_hi:g}th percentile intensity range above "
                                 f"{MIN_CONTRAST_FRACTION:g} x their magnitude",
                        found=f"{lo:.6g}..{hi:.6g} (range {hi - lo:.3g})")


def _check_min_size(shape: tuple[int, ...], affine: np.ndarray, path: str | PathLike[str]
                    ) -> None:
    """Refuse a volume smaller than a short-axis stack (slice axis as in the canonical layout)."""
    perm, _ = canonical_layout(affine)
    n_slices, rows, cols = (shape[axis] for axis in perm)
    if n_slices < MIN_SLICES or min(rows, cols) < MIN_INPLANE_VOXELS:
        raise DataError("CMR volume too small for a short-axis stack", path=path,
                        expected=f">= {MIN_SLICES} slices of >= {MIN_INPLANE_VOXELS} x "
                                 f"{MIN_INPLANE_VOXELS} voxels",
                        found=f"{n_slices} slices of {rows} x {cols} (file shape {tuple(shape)})")


def _check_finite(array: np.ndarray, path: str | PathLike[str]) -> None:
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError("CMR volume has non-finite voxels", path=path,
                        expected="finite intensities", found=f"{bad} NaN/inf voxels")


def affine_mm(img: nib.spatialimages.SpatialImage, path: str | PathLike[str]) -> np.ndarray:
    """The image's affine in mm, validated: finite, invertible, plausible spacing."""
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    unit = "mm"
    if hasattr(img.header, "get_xyzt_units"):
        unit = img.header.get_xyzt_units()[0] or "unknown"
    affine[:3, :] *= _NIFTI_UNIT_TO_MM.get(unit, 1.0)  # NIfTI allows metres and microns
    if not np.isfinite(affine).all():
        raise DataError("CMR affine has non-finite entries", path=path,
                        expected="a finite voxel-to-world affine", found=str(affine.tolist()))
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-9:
        raise DataError("CMR affine is not invertible", path=path,
                        expected="a non-singular 3x3 voxel-to-world matrix", found=f"det={det:g}")
    spacing = np.asarray(spacing_from_affine(affine))
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise DataError("implausible voxel spacing", path=path,
                        expected=f"{MIN_SPACING_MM}..{MAX_SPACING_MM} mm per axis",
                        found=f"{np.round(spacing, 4).tolist()} mm")
    _check_orthogonal(affine[:3, :3] / spacing, path)
    return affine


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the three array axes: the lengths of the affine's columns."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise DataError("invalid affine", expected="finite 4x4 matrix", found=f"shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise DataError("singular affine", expected="non-zero determinant",
                        found=np.array2string(a[:3, :3], precision=3))
    norms = np.linalg.norm(a[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def _check_orthogonal(dirs: np.ndarray, path: str | PathLike[str]) -> None:
    """Refuse a sheared affine: the canonical layout assumes perpendicular voxel axes."""
    for i, j in ((0, 1), (0, 2), (1, 2)):
        cos = float(dirs[:, i] @ dirs[:, j])
        if abs(cos) > MAX_AXIS_COS:
            limit = np.degrees(np.arcsin(MAX_AXIS_COS))
            raise DataError("CMR affine is sheared: voxel axes are not perpendicular", path=path,
                            expected=f"orthogonal voxel axes (within {limit:.2f} degrees of 90)",
                            found=f"axes {i} and {j} at {np.degrees(np.arccos(cos)):.2f} degrees")


# ============================================================================================
# Canonical layout
# ============================================================================================


def canonical_layout(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """``(perm, flips)``: canonical axis ``i`` is file axis ``perm[i]``, reversed if ``flips[i]``.

    See the module docstring for the rule.
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    dirs = m / spacing  # (3, 3): column j = world direction of file axis j
    long_axis = np.asarray(LONG_AXIS_RAS) / np.linalg.norm(LONG_AXIS_RAS)

    # 1. slice axis: largest spacing; ties by closeness to the long axis, then world z, then y
    tied = [j for j in range(3) if spacing[j] >= (1 - _SPACING_TIE) * spacing.max()]
    k = max(tied, key=lambda j: (round(abs(dirs[:, j] @ long_axis), 6),
                                 round(abs(dirs[2, j]), 6), round(abs(dirs[1, j]), 6)))
    # 2. slice order: towards the long axis (fall-backs only for an exactly perpendicular normal)
    n = dirs[:, k] * _sign_towards(dirs[:, k], (long_axis, (0, 0, -1), (0, 1, 0), (-1, 0, 0)))
    # 3. in-plane reference frame fixed by the world
    e_row, e_col = _inplane_frame(n)
    a, b = (j for j in range(3) if j != k)
    straight = abs(dirs[:, a] @ e_row) + abs(dirs[:, b] @ e_col)
    swapped = abs(dirs[:, b] @ e_row) + abs(dirs[:, a] @ e_col)
    row, col = (a, b) if straight >= swapped else (b, a)
    perm = (k, row, col)
    flips = (bool(dirs[:, k] @ n < 0), bool(dirs[:, row] @ e_row < 0),
             bool(dirs[:, col] @ e_col < 0))
    return perm, flips


def _sign_towards(v: np.ndarray, references: tuple) -> float:
    """+1 or -1: the sign that makes ``v`` point along the first reference it is not
    (numerically) perpendicular to."""
    for ref in references:
        dot = float(v @ np.asarray(ref, dtype=np.float64))
        if abs(dot) > 1e-3:
            return 1.0 if dot > 0 else -1.0
    return 1.0


def _inplane_frame(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal ``(e_row, e_col)`` spanning the plane normal to unit ``n``."""
    left = _PATIENT_LEFT_RAS - (_PATIENT_LEFT_RAS @ n) * n
    if np.linalg.norm(left) >= _MIN_INPLANE_PROJECTION:
        e_col = left / np.linalg.norm(left)
        return np.cross(e_col, n), e_col
    posterior = _PATIENT_POSTERIOR_RAS - (_PATIENT_POSTERIOR_RAS @ n) * n
    e_row = posterior / np.linalg.norm(posterior)
    return e_row, np.cross(n, e_row)


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorder a volume into the canonical layout: ``(array (D, H, W), spacing_mm (3,))``."""
    volume = _canonicalise(array, affine)
    return volume.array, volume.spacing_mm


def _canonicalise(array: np.ndarray, affine: np.ndarray, *, is_labels: bool = False
                  ) -> CanonicalVolume:
    perm, flips = canonical_layout(affine)
    out = np.transpose(array, perm)
    flip_axes = tuple(i for i in range(3) if flips[i])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    # canonical voxel c -> file voxel: file[perm[i]] = c[i], or n_i - 1 - c[i] when flipped
    to_file = np.zeros((4, 4))
    to_file[3, 3] = 1.0
    for i, (axis, flipped) in enumerate(zip(perm, flips, strict=True)):
        to_file[axis, i] = -1.0 if flipped else 1.0
        to_file[axis, 3] = array.shape[axis] - 1 if flipped else 0.0
    new_affine = np.asarray(affine, dtype=np.float64) @ to_file
    spacing = spacing_from_affine(new_affine)
    return CanonicalVolume(np.ascontiguousarray(out), spacing, new_affine, is_labels)  # type: ignore[arg-type]


def load_cmr_canonical(path: str | PathLike[str], *, subject: str | None = None) -> CanonicalVolume:
    """Read and reorder an image volume: float32 ``(D, H, W)`` in the canonical layout."""
    try:
        return _canonicalise(*read_cmr(path))
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc


def load_labels_canonical(path: str | PathLike[str], *, subject: str | None = None,
                          like: CanonicalVolume | None = None) -> CanonicalVolume:
    """Read and reorder a label map: uint8 ``(D, H, W)`` in the canonical layout.

    With ``like`` (the image the labels belong to), the label map must lie on the image's
    voxel grid, else :class:`DataError`: a map of another shape or position would put the
    heart centre, and every label, in the wrong place without any other sign.
    """
    try:
        labels = _canonicalise(*read_labels(path), is_labels=True)
        if like is not None:
            _check_same_grid(labels, like)
        return labels
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc


def _check_same_grid(labels: CanonicalVolume, image: CanonicalVolume) -> None:
    """Raise DataError unless ``labels`` and ``image`` share shape and voxel-to-world affine."""
    if labels.array.shape != image.array.shape:
        raise DataError("label map and image differ in shape",
                        expected=f"the image's canonical shape {image.array.shape}",
                        found=f"{labels.array.shape}")
    offset = np.abs(labels.affine - image.affine).max()
    if offset > GRID_TOLERANCE_MM:
        raise DataError("label map and image are not on the same voxel grid (affines differ)",
                        expected=f"affines equal within {GRID_TOLERANCE_MM} mm",
                        found=f"largest difference {offset:.3g} mm")


def check_phase_pair(ed: CanonicalVolume, es: CanonicalVolume, *, subject: str | None = None,
                     es_path: str | PathLike[str] | None = None) -> CanonicalVolume:
    """``es`` unchanged if it lies on ``ed``'s voxel grid, else :class:`DataError`.

    Rule: same canonical shape, and canonical affines equal within ``PHASE_TOLERANCE_MM``
    (origin, spacing) and ``PHASE_DIRECTION_TOLERANCE`` (direction cosines). An ES file that
    stores the same grid with its voxel axes permuted or flipped passes: canonicalisation has
    already made its array and affine match ED's. Any real difference of shape, spacing,
    origin or orientation is an error naming what differs; ES is never resampled, because the
    cache crops both phases around one heart centre in ED's voxel coordinates and ED and ES of
    one cine series always share a grid, so a difference means a wrong or mis-exported file.
    """
    differences = _grid_differences(ed, es)
    if differences:
        raise DataError("ES volume is not on the ED volume's voxel grid", subject=subject,
                        path=es_path,
                        expected=f"ED's shape {ed.array.shape}, spacing "
                                 f"{_mm(ed.spacing_mm)} mm, origin and orientation",
                        found="; ".join(differences))
    return es


def _grid_differences(ed: CanonicalVolume, es: CanonicalVolume) -> list[str]:
    """What differs between two canonical grids, in words (empty: the same grid)."""
    found = []
    if es.array.shape != ed.array.shape:
        found.append(f"shape {es.array.shape}")
    spacing_ed, spacing_es = np.asarray(ed.spacing_mm), np.asarray(es.spacing_mm)
    if np.abs(spacing_es - spacing_ed).max() > PHASE_TOLERANCE_MM:
        found.append(f"spacing {_mm(es.spacing_mm)} mm")
    offset = float(np.linalg.norm(es.affine[:3, 3] - ed.affine[:3, 3]))
    if offset > PHASE_TOLERANCE_MM:
        found.append(f"origin {offset:.3g} mm away")
    dirs_ed = ed.affine[:3, :3] / spacing_ed
    dirs_es = es.affine[:3, :3] / spacing_es
    if np.abs(dirs_es - dirs_ed).max() > PHASE_DIRECTION_TOLERANCE:
        relative = dirs_ed.T @ dirs_es  # rotation from ED's axes to ES's
        cos_angle = np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0)
        found.append(f"orientation rotated by {np.degrees(np.arccos(cos_angle)):.3g} degrees")
    return found


def _mm(values: tuple[float, ...]) -> list[float]:
    return [round(float(v), 4) for v in values]


# ============================================================================================
# Resample + crop/pad to the grid, normalise
# ============================================================================================


def to_grid(
    volume: CanonicalVolume,
    grid: CmrGrid = CmrGrid(),
    *,
    center_vox: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Resample, crop/pad (around ``center_vox``) and normalise: ``grid.shape`` array.

    ``center_vox`` is in the canonical voxel coordinates of ``volume`` (default: the volume
    centre) and lands on the grid centre ``(N - 1) / 2``. Images -> float32 normalised per
    ``grid.intensity``; labels -> uint8 (nearest neighbour, padded with 0).
    """
    src = volume.array
    center = _check_center(center_vox, src.shape)
    weights = [
        _axis_weights(src.shape[a], grid.shape[a], grid.spacing_mm[a] / volume.spacing_mm[a],
                      center[a], nearest=volume.is_labels)
        for a in range(3)
    ]
    if volume.is_labels:
        out = _apply_separable(src.astype(np.float32), weights)
        return np.rint(out).astype(np.uint8)
    fill = float(src.min())  # background: padding is the darkest intensity of the volume
    out = _apply_separable(src - np.float32(fill), weights) + np.float32(fill)
    return _normalise(out, src, grid).astype(np.float32)


def _check_center(center_vox: tuple[float, float, float] | None, shape: tuple[int, ...]
                  ) -> np.ndarray:
    if center_vox is None:
        return (np.asarray(shape, dtype=np.float64) - 1) / 2
    center = np.asarray(center_vox, dtype=np.float64)
    if center.shape != (3,) or not np.isfinite(center).all():
        raise DataError("invalid crop centre", expected="3 finite canonical voxel coordinates",
                        found=str(center_vox))
    return center


def _axis_weights(n_in: int, n_out: int, zoom: float, center: float, *, nearest: bool
                  ) -> np.ndarray:
    """``(n_out, n_in)`` interpolation matrix along one axis.

    Output voxel ``i`` samples input coordinate ``center + (i - (n_out - 1) / 2) * zoom``
    (``zoom`` = output spacing / input spacing). Input voxels cover ``[j - 0.5, j + 0.5]``;
    outside ``[-0.5, n_in - 0.5]`` a row is all zero (padding).
    """
    if abs(zoom - 1) < _SNAP_TOL:
        # same spacing: shift the centre by <= half a voxel so samples fall on voxel centres
        offset = center - (n_out - 1) / 2
        center = np.round(offset) + (n_out - 1) / 2
        zoom = 1.0
    coords = center + (np.arange(n_out) - (n_out - 1) / 2) * zoom  # (n_out,)
    inside = (coords >= -0.5) & (coords <= n_in - 0.5)
    taps = np.arange(n_in)
    if nearest:
        idx = np.clip(np.floor(coords + 0.5), 0, n_in - 1).astype(int)
        weights = (taps[None, :] == idx[:, None]).astype(np.float32)
    else:
        # tent kernel; widened to the output spacing when downsampling, which averages
        # over each output voxel's footprint instead of aliasing
        half_width = max(1.0, zoom)
        weights = np.maximum(0.0, 1.0 - np.abs(coords[:, None] - taps[None, :]) / half_width)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    weights[~inside] = 0.0
    return weights.astype(np.float32)


def _apply_separable(array: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """``out[a, b, c] = sum_ijk W0[a, i] W1[b, j] W2[c, k] array[i, j, k]``, axis by axis.

    Each row of a ``W`` has a few non-zero taps (a tent of half-width <= zoom), so every axis
    is a weighted sum of a few shifted copies rather than a dense product: far cheaper, and no
    multi-threaded BLAS call, which with one process per core oversubscribes the cores.
    """
    out = np.asarray(array, dtype=np.float32)
    for axis, w in enumerate(weights):
        out = _apply_axis(out, w, axis)
    return out


def _apply_axis(array: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``weights (n_out, n_in)`` applied along ``axis`` of ``array``, from its non-zero taps."""
    nonzero = weights != 0
    n_taps = int(nonzero.sum(axis=1).max(initial=0))
    # per output row, the columns of its non-zero taps (padded with weight-0 taps of column 0)
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :max(n_taps, 1)]
    w = np.take_along_axis(weights, order, axis=1)
    moved = np.moveaxis(array, axis, 0)
    if n_taps <= 1 and np.all((w == 0) | (w == 1)):  # a copy (nearest, or same spacing)
        out = moved[order[:, 0]] * w[:, 0].reshape(-1, *[1] * (moved.ndim - 1))
    else:
        out = np.zeros((weights.shape[0], *moved.shape[1:]), dtype=np.float32)
        for k in range(n_taps):
            out += moved[order[:, k]] * w[:, k].reshape(-1, *[1] * (moved.ndim - 1))
    return np.moveaxis(out, 0, axis)


def _normalise(out: np.ndarray, src: np.ndarray, grid: CmrGrid) -> np.ndarray:
    """Intensity normalisation with statistics of the whole canonical volume ``src``."""
    if grid.intensity is None:
        return out
    if grid.intensity == "percentile":
        lo, hi = np.percentile(src, grid.percentiles)
        if not hi > lo:
            lo, hi = float(src.min()), float(src.max())  # mostly-constant volume: full range
        return np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    mean, sd = float(src.mean()), float(src.std())
    return (out - mean) / sd  # sd > 0: read_cmr rejects constant volumes


def load_cmr(
    path: str | PathLike[str],
    grid: CmrGrid = CmrGrid(),
    *,
    center_vox: tuple[float, float, float] | None = None,
    subject: str | None = None,
) -> np.ndarray:
    """An image volume on the model grid: float32 ``grid.shape`` ``(D, H, W)``, normalised.

    read -> canonical layout -> resample to ``grid.spacing_mm`` -> crop/pad around
    ``center_vox`` (canonical voxel coordinates; default the volume centre) -> normalise.
    """
    volume = load_cmr_canonical(path, subject=subject)
    try:
        return to_grid(volume, grid, center_vox=center_vox)
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc


def load_labels(
    path: str | PathLike[str],
    grid: CmrGrid = CmrGrid(),
    center_vox: tuple[float, float, float] | None = None,
    *,
    subject: str | None = None,
) -> np.ndarray:
    """A label map on the model grid: uint8 ``grid.shape`` (nearest neighbour, 0 padding)."""
    volume = load_labels_canonical(path, subject=subject)
    try:
        return to_grid(volume, grid, center_vox=center_vox)
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc


# ============================================================================================
# Heart centre
# ============================================================================================


def heart_center(
    ed: np.ndarray,
    es: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float] = CmrGrid().spacing_mm,
) -> tuple[float, float, float]:
    """Heart centre in canonical voxel coordinates, from the images alone (no labels needed).

    In-plane: the heart is what moves between end-diastole and end-systole. Within one
    breath-hold cine the chest wall, liver and spine stay put while the ventricles empty, so
    the estimate is the centroid of ``|ED - ES|`` (both scaled by ED's 99.5th intensity
    percentile), Gaussian-smoothed with sd ``_MOTION_SMOOTH_MM``, over the voxels at least
    ``_MOTION_KEEP_FRACTION`` of its peak (drops scattered noise). Only the central half of
    the slices is used: in basal slices the atria and outflow tracts move through the plane
    as the base descends, which pulls the centroid off the ventricles.
    Along the slices: the centre of the stack, because a short-axis stack is planned to span
    the ventricles from base to apex. (The motion centroid is no good here: the base moves
    most, so it sits 2-3 slices basal of the heart's middle; measured on the synthetic cohort,
    the stack centre is within one slice of the labelled heart's mid-extent.)

    ``ed``/``es``: ``(D, H, W)`` canonical arrays of one series; ``spacing_mm`` their spacing
    (default: UK Biobank's, as in :class:`CmrGrid`).
    """
    ed = np.asarray(ed, dtype=np.float32)
    es = np.asarray(es, dtype=np.float32)
    if ed.ndim != 3 or ed.shape != es.shape:
        raise DataError("ED and ES volumes differ in shape", expected="two (D, H, W) arrays "
                        "of one series", found=f"{ed.shape} and {es.shape}")
    scale = float(np.percentile(np.abs(ed), _INTENSITY_SCALE_PCT)) or 1.0
    motion = np.abs(ed - es) / scale
    sigma = [_MOTION_SMOOTH_MM / s for s in spacing_mm]
    motion = gaussian_filter(motion, sigma=sigma, mode="constant")
    n_slices = ed.shape[0]
    central = slice(n_slices // 4, n_slices - n_slices // 4)  # never empty
    motion = motion[central]
    peak = float(motion.max())
    if not peak > 0:
        raise DataError("ED and ES are identical: no motion to locate the heart by",
                        expected="two different cardiac phases")
    weight = np.where(motion >= _MOTION_KEEP_FRACTION * peak, motion, 0.0)
    _, row, col = _centroid(weight)
    return (n_slices - 1) / 2, row, col


def center_from_labels(labels: np.ndarray) -> tuple[float, float, float]:
    """Centroid of every labelled (non-zero) voxel, canonical voxel coordinates."""
    mask = np.asarray(labels) > 0
    if mask.ndim != 3 or not mask.any():
        raise DataError("label map has no labelled voxels", expected="a (D, H, W) map with "
                        "LV/myocardium/RV labels", found=f"shape {mask.shape}, all background")
    return _centroid(mask.astype(np.float64))


def _centroid(weight: np.ndarray) -> tuple[float, float, float]:
    total = weight.sum()
    return tuple(  # type: ignore[return-value]
        float((weight.sum(axis=tuple(b for b in range(3) if b != a))
               * np.arange(weight.shape[a])).sum() / total)
        for a in range(3)
    )
