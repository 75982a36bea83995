"""UK Biobank short-axis cine (DICOM) -> 3D NIfTI volumes at end-diastole and end-systole.

**Input.** UK Biobank showcase field 20209 ("Short axis heart images - DICOM", category 102,
imaging visit) is one zip per participant and visit (``<eid>_20209_2_0.zip``) of DICOM files:
a balanced-SSFP cine with ~50 frames per cardiac cycle at every slice position of a short-axis
stack from base to apex, 8 mm slices 10 mm apart, 1.8 x 1.8 mm pixels (Petersen SE et al.,
J Cardiovasc Magn Reson 2016;18:8). Typically each slice is its own series
(``CINE_segmented_SAX_b1``, ``_b2``, ...), sometimes all slices share one series, and
sometimes one slice was acquired twice (two series at one position; Bai W et al.,
J Cardiovasc Magn Reson 2018;20:65, whose public converter ``ukbb_cardiac`` handles the same
three cases). The zip also holds a ``manifest.csv``; members that are not DICOM Part 10 files
(no ``DICM`` marker, PS3.10 section 7.1) are skipped. It may also hold the scanner's derived
``CINE_segmented_SAX_InlineVF`` series (Siemens inline ventricular-function images of the same
slices, all in one series; the Broad Institute's ``ml4h`` tensorizer for fields 20208/20209
lists it beside ``CINE_segmented_SAX_b1..b11``): series whose ``SeriesDescription`` matches
``DERIVED_SERIES`` are skipped (noted), or they would collide with the acquired images.

**Reading** (:func:`read_sax_cine`). Files may arrive in any order. Geometry follows the Image
Plane Module (DICOM PS3.3 C.7.6.2): ``ImageOrientationPatient`` = direction cosines of a row
(increasing column index) and of a column (increasing row index), ``ImagePositionPatient`` =
centre of the first pixel, ``PixelSpacing`` = (row spacing, column spacing), all in LPS
patient coordinates (x Left, y Posterior, z Superior). Files are grouped

* by **slice**: the position projected on the slice normal ``row x column`` (slices closer than
  ``SAME_POSITION_MM`` are one slice); slices are ordered along the normal, their pitch is
  *measured* from the positions (``SliceThickness`` is the slab width, not the pitch: UKB
  has 8 mm slices with 2 mm gaps). A gap (a missing slice), uneven pitch, slices shifted
  in-plane, or any difference in orientation, pixel spacing or matrix size raise
  :class:`DataError`;
* by **series** within a slice: a slice acquired twice keeps the series with the highest
  ``SeriesNumber`` (the repeat, acquired because the first was unusable; noted in
  ``SaxCine.notes``);
* by **time** within a slice: ``TriggerTime`` (ms after the R wave), else (missing, or the
  same value in every file) ``InstanceNumber``.
  Two files at one slice and time: identical pixels -> one is kept (noted), different
  pixels -> :class:`DataError`. All slices must have the same number of frames; frame ``t``
  of every slice forms volume ``t`` (each slice is its own breath-hold, so trigger times
  differ slightly between slices; they are returned per slice).

**Short-axis only** (:func:`series_view`, :func:`long_axis_angle_deg`). Long-axis cines
(2/3/4-chamber, LVOT: UK Biobank field 20208, ``CINE_segmented_LAX_2Ch`` ...) have the same
file structure and used to convert silently as if they were short-axis. Now, before grouping:

* ``SeriesDescription`` words (lower-cased, split at non-alphanumerics): ``lax``, ``la``,
  ``lvot``, ``hla``, ``vla``, ``2ch``/``3ch``/``4ch`` (also ``2 ch``, ``4 chamber``, ``two
  chamber``), ``long axis`` mark a **long-axis** series; ``sax``, ``sa``, ``short axis`` a
  **short-axis** one (both or neither: no verdict). Long-axis series beside other series are
  skipped (noted); when every image is in one, the input is refused with the description.
* Otherwise the geometry decides: the angle between the slice normal (``row x column``) and
  the typical LV long axis ``LONG_AXIS_RAS`` (left, anterior, inferior; base -> apex; the
  sign of the normal is ignored). A short-axis stack is planned perpendicular to the
  patient's own long axis, which lies within ~40 degrees of that reference (azimuth 20-60
  degrees left of anterior, 5-50 degrees below the horizontal), so its normal is within
  ~40 degrees; a long-axis view *contains* the long axis, so its normal is >= ~50 degrees
  away, and plain transverse, sagittal or coronal stacks are at 54.7. Above
  ``SAX_MAX_ANGLE_DEG`` = 45 (the middle of that gap) the stack is refused as not
  short-axis, unless its ``SeriesDescription`` says short axis (then kept, noted: a
  description is the operator's statement, and a heart pointing elsewhere, dextrocardia
  say, would otherwise be lost).
* A single slice position (typical for long-axis cines) is refused too (below).

Pixel values are scaled by ``RescaleSlope``/``RescaleIntercept`` (PS3.3 C.11.1.1.2). The
result is a ``(X, Y, slice, time)`` float32 array (X = DICOM column index, Y = row index)
and a NIfTI affine in RAS+ mm: ``affine[:3, 0] = row cosine x column spacing``,
``affine[:3, 1] = column cosine x row spacing``, ``affine[:3, 2] = normal x measured pitch``,
translation = first slice's ``ImagePositionPatient``, with x and y negated (LPS -> RAS).

**ED / ES** (:func:`choose_ed_es`).

* ED = frame 0 (``ed_rule="first"``): the cine is ECG-triggered on the R wave (Petersen
  2016), and the R wave marks end-diastole. With label maps, ``ed_rule="largest"`` takes the
  frame of the largest LV blood pool instead.
* ES from label maps when given (``es_method="labels"``): the labelled frame with the smallest
  LV blood pool (label 1). Label maps must be on the cine's grid; a frame whose map has no LV
  voxel counts as unlabelled (label sets often cover only ED and ES).
* ES from the images otherwise (``es_method="image"``, :func:`estimate_es_frame`): the
  ventricles are where the image changes over the cycle. The temporal standard deviation of
  every voxel (intensities scaled by the 99.5th percentile), smoothed in-plane with a
  ``MOTION_SMOOTH_MM`` Gaussian, above ``MOTION_KEEP_FRACTION`` of its maximum and with holes
  filled slice by slice, marks the region of the ventricles; chest wall, liver and spine
  barely change within one breath-hold. Inside it, voxels brighter than the Otsu threshold of
  the region's intensities over all frames are blood (bSSFP blood is bright, myocardium
  dark). ES is the frame with the fewest blood voxels (curve smoothed circularly with
  weights 1-2-1 against noise). On the phantom of ``tests/writers/dicom_cmr.py`` it is within
  one frame of the truth. Limits: it counts RV and LV blood together (both empty together in
  a normal heart; a dyssynchronous RV could pull it), and basal slices where the atria move
  into the plane at ES add bright voxels. Label maps are better when available.

**Output** (:func:`convert_cmr_zip`, :func:`convert_cmr_dicom_folder`): ``<subject>_ed.nii.gz``
and ``<subject>_es.nii.gz`` (float32, 3D, qform/sform code 1 = scanner coordinates), plus
``<subject>_ed_seg.nii.gz`` / ``_es_seg.nii.gz`` when labels were given for those frames: the
names and layout the synthetic cohort uses, read by :func:`ecgcmr.data.cmr.read_cmr`.
Nothing is written unless the whole conversion succeeds. Zips are read in memory through
:func:`ecgcmr.convert.safe_zip.iter_zip_members` (bounded sizes, no extraction).
"""

from __future__ import annotations

import io
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from scipy.ndimage import binary_fill_holes, gaussian_filter

from ecgcmr.constants import LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD
from ecgcmr.convert.safe_zip import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_BYTES,
    iter_zip_members,
)
from ecgcmr.data.cmr import LONG_AXIS_RAS, spacing_from_affine

# The cohort's NIfTI writer (qform/sform code 1, mm): converted files must look the same.
from ecgcmr.data.writers import write_nifti
from ecgcmr.errors import DataError

# --- geometry tolerances ----------------------------------------------------------------------
SAME_POSITION_MM = 0.1      # slice positions closer than this along the normal: one slice
_ORIENTATION_TOL = 1e-3     # direction cosines (~0.06 degrees); DICOM writes ~8 digits
_SPACING_TOL_MM = 1e-3      # pixel spacing
_INPLANE_SHIFT_TOL_MM = 0.1  # slices of one stack share their in-plane origin
_PITCH_REL_TOL = 0.05       # slice pitches within 5 % (or 0.1 mm) of the median are "even"
_PITCH_ABS_TOL_MM = 0.1
_TIME_TOL_MS = 1e-3         # TriggerTime values closer than this: the same frame
MAX_DICOM_BYTES = 64 * 2**20  # one cine image is ~0.1 MB; refuse absurd files from a folder
_MAX_MATRIX = 2048
_DICOM_MAGIC_OFFSET = 128   # PS3.10 7.1: 128-byte preamble, then "DICM"
_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # multi-frame Enhanced MR Image Storage (PS3.4)
_DICOMDIR = "1.2.840.10008.1.3.10"          # Media Storage Directory Storage (a CD's index)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# --- image-based ES ------------------------------------------------------------------------------
MOTION_SMOOTH_MM = 3.0      # in-plane Gaussian sd: merges the moving endo/epicardial bands
MOTION_KEEP_FRACTION = 0.3  # region = smoothed temporal sd >= 30 % of its maximum
_INTENSITY_SCALE_PCT = 99.5
_OTSU_BINS = 256

# --- short-axis check (module docstring) -----------------------------------------------------
#: Largest angle (degrees) between the slice normal and LONG_AXIS_RAS of a short-axis stack.
SAX_MAX_ANGLE_DEG = 45.0
_LAX_WORDS = re.compile(r"\b(?:lax|la|lvot|hla|vla|[234] ?ch(?:amber)?s?"
                        r"|(?:two|three|four) ?ch(?:amber)?s?|long ?axis)\b")
_SAX_WORDS = re.compile(r"\b(?:sax|sa|short ?axis)\b")
LONG, SHORT = "long", "short"

ED_RULES = ("first", "largest")
#: SeriesDescription of derived (not acquired) series in UKB SAX zips: skipped.
DERIVED_SERIES = re.compile(r"inlinevf", re.IGNORECASE)
_SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: A DICOM input: raw bytes, ``(name, bytes)`` (e.g. from a zip) or a file path.
DicomInput = bytes | tuple[str, bytes] | str | PathLike[str]
#: Label maps: a 4D NIfTI path or ``(X, Y, Z, T)`` array on the cine grid, or per-frame maps
#: ``{frame: 3D NIfTI path or (X, Y, Z) array}``.
LabelsInput = (str | PathLike[str] | np.ndarray
               | Mapping[int, str | PathLike[str] | np.ndarray])


@dataclass(frozen=True, eq=False)
class SaxCine:
    """A short-axis cine read from DICOM."""

    image: np.ndarray                  # (X, Y, Z, T) float32, rescaled values
    affine: np.ndarray                 # (4, 4) voxel (X, Y, Z) -> RAS+ mm
    trigger_times_ms: np.ndarray | None  # (Z, T) ms after the R wave; None if not recorded
    source: str                        # zip/folder the files came from (for messages)
    notes: tuple[str, ...] = ()        # skipped members, dropped duplicates and repeats

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[2])

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[3])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(X, Y, slice pitch) in mm."""
        return spacing_from_affine(self.affine)


@dataclass(frozen=True)
class CmrConversion:
    """What :func:`convert_cmr_zip` wrote and how it chose the frames."""

    ed: Path                   # 3D NIfTI at end-diastole
    es: Path                   # 3D NIfTI at end-systole
    ed_frame: int              # 0-based frame index in the cine
    es_frame: int
    es_method: str             # "labels" or "image"
    ed_seg: Path | None = None  # label maps of those frames, when labels were given
    es_seg: Path | None = None
    n_slices: int = 0
    n_frames: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class _Image:
    """One DICOM image (one slice at one time) with what grouping needs."""

    name: str
    position: np.ndarray       # (3,) LPS mm, centre of the first pixel
    orientation: np.ndarray    # (6,) row cosine, column cosine
    pixel_spacing: np.ndarray  # (2,) row spacing, column spacing (mm)
    time_ms: float | None
    instance: int | None
    series_uid: str
    series_number: int
    series_description: str
    pixels: np.ndarray         # (rows, columns) float32 after rescale


# ============================================================================================
# Conversion
# ============================================================================================


def convert_cmr_zip(
    zip_path: str | PathLike[str],
    out_dir: str | PathLike[str],
    subject_id: str,
    *,
    labels_4d: LabelsInput | None = None,
    ed_rule: str = "first",
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> CmrConversion:
    """Convert a UK Biobank SAX cine zip (field 20209) to ED and ES NIfTI files in ``out_dir``.

    The zip is read in memory with the bounds of :func:`~ecgcmr.convert.safe_zip.iter_zip_members`.
    ``labels_4d``: optional label maps on the cine's grid (see :data:`LabelsInput`); with them
    ES (and ED for ``ed_rule="largest"``) come from the LV blood-pool volume, otherwise ES is
    estimated from the images. Raises :class:`DataError` naming the subject, the zip and the
    member for any problem; writes nothing then.
    """
    _check_subject_id(subject_id)
    try:
        members = iter_zip_members(zip_path, max_total_bytes=max_total_bytes,
                                   max_ratio=max_ratio, max_members=max_members)
        cine = read_sax_cine(members, source=str(zip_path))
    except DataError as exc:
        raise exc.with_context(subject=subject_id, path=zip_path) from exc
    return convert_sax_cine(cine, out_dir, subject_id, labels_4d=labels_4d, ed_rule=ed_rule)


def convert_cmr_dicom_folder(
    folder: str | PathLike[str],
    out_dir: str | PathLike[str],
    subject_id: str,
    *,
    labels_4d: LabelsInput | None = None,
    ed_rule: str = "first",
    max_files: int = DEFAULT_MAX_MEMBERS,
) -> CmrConversion:
    """Like :func:`convert_cmr_zip` for a folder of DICOM files (searched recursively).

    Symbolic links are not followed (skipped, noted); files over ``MAX_DICOM_BYTES`` or more
    than ``max_files`` files raise :class:`DataError`.
    """
    _check_subject_id(subject_id)
    try:
        files, skipped = _list_dicom_folder(folder, max_files)
        cine = read_sax_cine(files, source=str(folder))
    except DataError as exc:
        raise exc.with_context(subject=subject_id, path=folder) from exc
    cine = SaxCine(cine.image, cine.affine, cine.trigger_times_ms, cine.source,
                   cine.notes + tuple(f"skipped symbolic link {s}" for s in skipped))
    return convert_sax_cine(cine, out_dir, subject_id, labels_4d=labels_4d, ed_rule=ed_rule)


def convert_sax_cine(
    cine: SaxCine,
    out_dir: str | PathLike[str],
    subject_id: str,
    *,
    labels_4d: LabelsInput | None = None,
    ed_rule: str = "first",
    frames: tuple[int, int, str] | None = None,
) -> CmrConversion:
    """Choose ED/ES frames of a read cine and write them (and their labels) as 3D NIfTI.

    ``frames``: ``(ed, es, method)`` chosen by the caller (0-based; e.g. from a sidecar), in
    place of :func:`choose_ed_es`.
    """
    _check_subject_id(subject_id)
    try:
        labels = None if labels_4d is None else read_cine_labels(labels_4d, cine)
        if frames is None:
            ed, es, method = choose_ed_es(cine.image, cine.spacing_mm, labels=labels,
                                          ed_rule=ed_rule)
        else:
            ed, es, method = _check_frames(frames, cine.n_frames)
    except DataError as exc:
        raise exc.with_context(subject=subject_id, path=cine.source) from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {}
    for phase, frame in (("ed", ed), ("es", es)):
        paths[phase] = out / write_nifti(out, f"{subject_id}_{phase}.nii.gz",
                                          cine.image[..., frame], cine.affine)
        seg = None if labels is None else labels.get(frame)
        paths[f"{phase}_seg"] = None if seg is None else out / write_nifti(
            out, f"{subject_id}_{phase}_seg.nii.gz", seg, cine.affine)
    return CmrConversion(ed=paths["ed"], es=paths["es"], ed_frame=ed,  # type: ignore[arg-type]
                         es_frame=es, es_method=method, ed_seg=paths["ed_seg"],
                         es_seg=paths["es_seg"], n_slices=cine.n_slices,
                         n_frames=cine.n_frames, notes=cine.notes)


def _check_frames(frames: tuple[int, int, str], n_frames: int) -> tuple[int, int, str]:
    ed, es, method = int(frames[0]), int(frames[1]), str(frames[2])
    for name, frame in (("ED", ed), ("ES", es)):
        if not 0 <= frame < n_frames:
            raise DataError(f"{name} frame out of range ({method})",
                            expected=f"0..{n_frames - 1}", found=str(frame))
    if ed == es:
        raise DataError("ED and ES fall on the same frame", expected="two different frames",
                        found=f"frame {ed} ({method})")
    return ed, es, method


def _check_subject_id(subject_id: str) -> None:
    # the id becomes part of file names: no separators, no leading dot
    if not isinstance(subject_id, str) or not _SUBJECT_ID.match(subject_id):
        raise DataError("invalid subject id for file names", subject=str(subject_id),
                        expected="letters, digits, '_', '-', '.' (not first), <= 128 chars")


def _list_dicom_folder(folder: str | PathLike[str], max_files: int
                       ) -> tuple[list[Path], list[Path]]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError("DICOM folder not found", path=folder, expected="a folder of DICOM files")
    files, links = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(filenames):
            path = Path(dirpath) / name
            (links if path.is_symlink() else files).append(path)
        dirnames.sort()
        if len(files) > max_files:
            raise DataError("too many files in the DICOM folder", path=folder,
                            expected=f"at most {max_files}", found=f"more than {max_files}")
    return files, links


# ============================================================================================
# Reading DICOM
# ============================================================================================


def read_sax_cine(dicoms: Iterable[DicomInput], *, source: str | None = None) -> SaxCine:
    """Group DICOM images of a short-axis cine into a 4D volume with a RAS+ affine.

    ``dicoms``: raw bytes, ``(name, bytes)`` pairs or file paths, in any order. Non-DICOM
    members (no Part 10 ``DICM`` marker) are skipped and noted. Raises :class:`DataError`
    naming the file for unreadable DICOM, missing geometry, inconsistent orientation / pixel
    spacing / matrix, conflicting duplicates, a missing slice, unequal frame counts, a single
    slice or a single frame. See the module docstring for the rules.
    """
    where = source or "DICOM input"
    images, notes = [], []
    derived: dict[str, int] = defaultdict(int)
    for name, content in _named_contents(dicoms, source):
        image = _parse_dicom(name, content)
        if image is None:
            notes.append(f"skipped non-DICOM member {name}")
        elif not isinstance(image, _Image):  # _DIRECTORY
            notes.append(f"skipped DICOMDIR {name}")
        elif DERIVED_SERIES.search(image.series_description):
            derived[image.series_description] += 1
        else:
            images.append(image)
    notes.extend(f"skipped {n} images of derived series {d}" for d, n in derived.items())
    if not images:
        raise DataError("no DICOM images found", path=where,
                        expected="DICOM Part 10 files of a short-axis cine")
    images = _drop_long_axis_series(images, where, notes)
    _check_consistent_geometry(images)
    _check_short_axis(images, where, notes)
    normal = _slice_normal(images[0].orientation)
    slices = _group_by_position(images, normal)
    if len(slices) < 2:
        raise DataError("only one slice position: not a short-axis stack", path=where,
                        expected="a stack of >= 2 parallel slices", found=f"{len(images)} "
                        "images at one position (a long-axis view or a single slice?)")
    timelines = []
    for slice_images in slices:
        chosen, note = _pick_series(slice_images)
        notes.extend(note)
        ordered, dropped = _order_in_time(chosen)
        notes.extend(dropped)
        timelines.append(ordered)
    _check_frame_counts(timelines, normal, where)
    positions = np.array([tl[0].position for tl in timelines])
    pitch = _slice_pitch(positions, normal, where)
    _check_inplane_alignment(positions, normal, timelines)
    return SaxCine(image=_stack(timelines),
                   affine=_affine(timelines[0][0], normal, pitch),
                   trigger_times_ms=_trigger_times(timelines), source=where,
                   notes=tuple(notes))


def _named_contents(dicoms: Iterable[DicomInput], source: str | None
                    ) -> Iterator[tuple[str, bytes]]:
    prefix = f"{source}: " if source else ""
    for index, item in enumerate(dicoms):
        if isinstance(item, bytes | bytearray):
            yield f"{prefix}item {index}", bytes(item)
        elif isinstance(item, tuple):
            yield f"{prefix}{item[0]}", item[1]
        else:
            yield str(item), _read_file(Path(item))


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise DataError("DICOM file not found", path=path)
    size = path.stat().st_size
    if size > MAX_DICOM_BYTES:
        raise DataError("file too large for one cine image", path=path,
                        expected=f"at most {MAX_DICOM_BYTES} bytes", found=f"{size} bytes")
    return path.read_bytes()


_DIRECTORY = object()  # _parse_dicom's answer for a DICOMDIR (a CD's index, no image)


def _parse_dicom(name: str, content: bytes) -> _Image | object | None:
    """One image, None when ``content`` is not a DICOM Part 10 file, ``_DIRECTORY`` for a
    DICOMDIR."""
    if content[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] != b"DICM":
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(content))
        meta = getattr(ds, "file_meta", None)
        if str(getattr(meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR:
            return _DIRECTORY
        return _image_from_dataset(name, ds)
    except DataError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed data
        raise DataError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path=name,
                        expected="a DICOM MR image") from exc


def _image_from_dataset(name: str, ds: pydicom.Dataset) -> _Image:
    modality = ds.get("Modality")
    if modality is not None and modality != "MR":
        raise DataError("not an MR image", path=name, expected="Modality MR",
                        found=str(modality))
    if str(ds.get("SOPClassUID", "")) == _ENHANCED_MR or int(ds.get("NumberOfFrames", 1)) > 1:
        raise DataError("multi-frame (Enhanced MR) DICOM is not supported", path=name,
                        expected="one image per file (MR Image Storage, as UK Biobank)")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "Rows", "Columns", "PixelData"):
        if keyword not in ds:
            raise DataError(f"DICOM image lacks {keyword}", path=name,
                            expected="Image Plane and Image Pixel modules (PS3.3 C.7.6.2-3)")
    position = _finite_vector(ds.ImagePositionPatient, 3, "ImagePositionPatient", name)
    orientation = _finite_vector(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", name)
    spacing = _finite_vector(ds.PixelSpacing, 2, "PixelSpacing", name)
    _check_orientation(orientation, name)
    if not (spacing > 0).all():
        raise DataError("non-positive PixelSpacing", path=name, found=str(spacing.tolist()))
    if not (0 < ds.Rows <= _MAX_MATRIX and 0 < ds.Columns <= _MAX_MATRIX):
        raise DataError("implausible image matrix", path=name,
                        expected=f"1..{_MAX_MATRIX} rows and columns",
                        found=f"{ds.Rows} x {ds.Columns}")
    time = ds.get("TriggerTime")
    instance = ds.get("InstanceNumber")
    return _Image(
        name=name, position=position, orientation=orientation, pixel_spacing=spacing,
        time_ms=None if time in (None, "") else float(time),
        instance=None if instance in (None, "") else int(instance),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_number=int(ds.get("SeriesNumber") or 0),
        series_description=str(ds.get("SeriesDescription", "")),
        pixels=_rescaled_pixels(ds, name),
    )


def _finite_vector(value: object, n: int, keyword: str, name: str) -> np.ndarray:
    vector = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    if vector.shape != (n,) or not np.isfinite(vector).all():
        raise DataError(f"invalid {keyword}", path=name, expected=f"{n} finite numbers",
                        found=str(list(value)))  # type: ignore[call-overload]
    return vector


def _check_orientation(orientation: np.ndarray, name: str) -> None:
    row, col = orientation[:3], orientation[3:]
    unit = abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(col) - 1) < 1e-2
    if not unit or abs(float(row @ col)) > 1e-2:
        raise DataError("ImageOrientationPatient is not two orthogonal unit vectors", path=name,
                        found=str(orientation.tolist()))


def _rescaled_pixels(ds: pydicom.Dataset, name: str) -> np.ndarray:
    pixels = ds.pixel_array
    if pixels.shape != (ds.Rows, ds.Columns):
        raise DataError("pixel data is not one greyscale image", path=name,
                        expected=f"shape ({ds.Rows}, {ds.Columns})", found=f"{pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise DataError("non-finite RescaleSlope/RescaleIntercept", path=name)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


# --- short axis or long axis -------------------------------------------------------------------


def series_view(description: str) -> str | None:
    """``"long"``, ``"short"`` or None: what a SeriesDescription (or file name) says of the
    view (module docstring: words, not substrings; both or neither -> None)."""
    text = re.sub(r"[^a-z0-9]+", " ", str(description).lower())
    lax, sax = bool(_LAX_WORDS.search(text)), bool(_SAX_WORDS.search(text))
    if lax == sax:
        return None
    return LONG if lax else SHORT


def long_axis_angle_deg(orientation: np.ndarray) -> float:
    """Angle in degrees (0..90) between the slice normal of an ``ImageOrientationPatient``
    (LPS) and the typical LV long axis ``LONG_AXIS_RAS``; the normal's sign is ignored."""
    normal_ras = LPS_TO_RAS @ _slice_normal(np.asarray(orientation, dtype=np.float64))
    axis = np.asarray(LONG_AXIS_RAS, dtype=np.float64) / np.linalg.norm(LONG_AXIS_RAS)
    return float(np.degrees(np.arccos(min(1.0, abs(float(normal_ras @ axis))))))


def _drop_long_axis_series(images: list[_Image], where: str, notes: list[str]) -> list[_Image]:
    """Images of series described as long-axis views are skipped (noted); all of them: refused."""
    lax: dict[str, int] = defaultdict(int)
    kept = []
    for image in images:
        if series_view(image.series_description) == LONG:
            lax[image.series_description] += 1
        else:
            kept.append(image)
    if lax and not kept:
        raise DataError(f"long-axis series (SeriesDescription {', '.join(sorted(lax))}): not a "
                        "short-axis stack", path=where,
                        expected="a short-axis cine stack (SAX); long-axis views (2/3/4-chamber, "
                                 "LVOT) are not converted")
    notes.extend(f"skipped {n} images of long-axis series {d}" for d, n in sorted(lax.items()))
    return kept


def _check_short_axis(images: list[_Image], where: str, notes: list[str]) -> None:
    """Refuse a stack whose normal is far from the LV long axis, unless described as SAX."""
    angle = long_axis_angle_deg(images[0].orientation)
    if angle <= SAX_MAX_ANGLE_DEG:
        return
    said = sorted({im.series_description for im in images
                   if series_view(im.series_description) == SHORT})
    if said:
        notes.append(f"slice normal is {angle:.0f} degrees from the typical LV long axis "
                     f"(short-axis stacks: <= {SAX_MAX_ANGLE_DEG:.0f}); kept because "
                     f"SeriesDescription says short axis ({said[0]})")
        return
    normal_ras = LPS_TO_RAS @ _slice_normal(images[0].orientation)
    raise DataError(
        f"slice normal is {angle:.0f} degrees from the LV long axis: a long-axis view "
        "(2/3/4-chamber, LVOT) or a transverse/sagittal/coronal stack, not a short-axis stack",
        path=where,
        expected=f"a short-axis stack: slice normal within {SAX_MAX_ANGLE_DEG:.0f} degrees of the "
                 "LV long axis (left, anterior, inferior), or a SeriesDescription saying short "
                 "axis (SAX)",
        found=f"ImageOrientationPatient {images[0].orientation.round(4).tolist()} in "
              f"{images[0].name} (normal {normal_ras.round(3).tolist()} RAS), SeriesDescription "
              f"{images[0].series_description!r}")


# --- geometry ---------------------------------------------------------------------------------


def _check_consistent_geometry(images: list[_Image]) -> None:
    """Every image has the first image's orientation, pixel spacing and matrix."""
    ref = images[0]
    for image in images[1:]:
        if np.abs(image.orientation - ref.orientation).max() > _ORIENTATION_TOL:
            raise DataError("inconsistent ImageOrientationPatient between images", path=image.name,
                            expected=f"{ref.orientation.round(6).tolist()} as in {ref.name}",
                            found=str(image.orientation.round(6).tolist()))
        if np.abs(image.pixel_spacing - ref.pixel_spacing).max() > _SPACING_TOL_MM:
            raise DataError("inconsistent PixelSpacing between images", path=image.name,
                            expected=f"{ref.pixel_spacing.tolist()} as in {ref.name}",
                            found=str(image.pixel_spacing.tolist()))
        if image.pixels.shape != ref.pixels.shape:
            raise DataError("inconsistent image size between images", path=image.name,
                            expected=f"{ref.pixels.shape} as in {ref.name}",
                            found=str(image.pixels.shape))


def _slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal ``row x column`` (LPS)."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _group_by_position(images: list[_Image], normal: np.ndarray) -> list[list[_Image]]:
    """Images grouped by position along ``normal``, groups in increasing order."""
    ordered = sorted(images, key=lambda im: float(im.position @ normal))
    groups: list[list[_Image]] = [[ordered[0]]]
    for image in ordered[1:]:
        if float((image.position - groups[-1][-1].position) @ normal) > SAME_POSITION_MM:
            groups.append([])
        groups[-1].append(image)
    return groups


def _pick_series(images: list[_Image]) -> tuple[list[_Image], list[str]]:
    """One series per slice: a repeated slice keeps the highest SeriesNumber."""
    by_series: dict[tuple[int, str], list[_Image]] = defaultdict(list)
    for image in images:
        by_series[(image.series_number, image.series_uid)].append(image)
    if len(by_series) == 1:
        return images, []
    keep = max(by_series)
    dropped = [key for key in by_series if key != keep]
    note = (f"slice at {images[0].name} was acquired {len(by_series)} times; kept series "
            f"number {keep[0]} ({keep[1]}), dropped {[k[0] for k in dropped]}")
    return by_series[keep], [note]


def _order_in_time(images: list[_Image]) -> tuple[list[_Image], list[str]]:
    """Images of one slice sorted by TriggerTime (else InstanceNumber), duplicates resolved."""
    keys, unit = _time_keys(images)
    kept: dict[int, _Image] = {}
    notes = []
    for key, image in zip(keys, images, strict=True):
        first = kept.setdefault(key, image)
        if first is image:
            continue
        if not np.array_equal(first.pixels, image.pixels):
            raise DataError(f"two different images at the same slice and {unit}",
                            path=image.name, expected="one image per slice and frame",
                            found=f"conflicts with {first.name}")
        notes.append(f"dropped duplicate {image.name} (identical to {first.name})")
    return [kept[k] for k in sorted(kept)], notes


def _time_keys(images: list[_Image]) -> tuple[list[int], str]:
    """Integer sort keys: TriggerTime in ``_TIME_TOL_MS`` steps if it varies, else instance."""
    times = [None if im.time_ms is None else round(im.time_ms / _TIME_TOL_MS) for im in images]
    if None not in times and len(set(times)) > 1:
        return times, "TriggerTime"  # type: ignore[return-value]
    instances = [im.instance for im in images]
    if None in instances:
        missing = images[instances.index(None)]
        raise DataError("image lacks InstanceNumber and the slice has no usable TriggerTime",
                        path=missing.name, expected="a time order for the cine frames")
    return instances, "InstanceNumber"  # type: ignore[return-value]


def _check_frame_counts(timelines: list[list[_Image]], normal: np.ndarray, where: str) -> None:
    counts = [len(tl) for tl in timelines]
    if len(set(counts)) > 1:
        detail = ", ".join(f"{float(tl[0].position @ normal):.1f} mm: {len(tl)}"
                           for tl in timelines)
        raise DataError("slices have different numbers of frames", path=where,
                        expected="the same number of cine frames at every slice",
                        found=f"frames per slice position ({detail})")
    if counts[0] < 2:
        raise DataError("a single frame per slice: not a cine", path=where,
                        expected="a cine with >= 2 frames per slice", found="1 frame")


def _slice_pitch(positions: np.ndarray, normal: np.ndarray, where: str) -> float:
    """Even slice pitch from positions along the normal; a gap or uneven pitch raises."""
    along = positions @ normal
    steps = np.diff(along)
    median = float(np.median(steps))
    tolerance = max(_PITCH_REL_TOL * median, _PITCH_ABS_TOL_MM)
    for i, step in enumerate(steps):
        if abs(step - median) <= tolerance:
            continue
        ratio = step / median
        between = f"between slice positions {along[i]:.2f} and {along[i + 1]:.2f} mm"
        if ratio > 1.5 and abs(ratio - round(ratio)) * median <= tolerance:
            raise DataError(f"missing slice: a gap of {step:.2f} mm {between}", path=where,
                            expected=f"an even pitch of {median:.2f} mm",
                            found=f"{round(ratio) - 1} slice(s) missing")
        raise DataError(f"uneven slice pitch: {step:.2f} mm {between}", path=where,
                        expected=f"an even pitch of {median:.2f} mm")
    return float((along[-1] - along[0]) / (len(along) - 1))


def _check_inplane_alignment(positions: np.ndarray, normal: np.ndarray,
                             timelines: list[list[_Image]]) -> None:
    """All slices share the in-plane origin (one affine must describe the stack)."""
    inplane = positions - np.outer(positions @ normal, normal)
    shift = np.linalg.norm(inplane - inplane[0], axis=1)
    worst = int(np.argmax(shift))
    if shift[worst] > _INPLANE_SHIFT_TOL_MM:
        raise DataError("slice is shifted in-plane relative to the first slice",
                        path=timelines[worst][0].name,
                        expected=f"aligned slices (<= {_INPLANE_SHIFT_TOL_MM} mm)",
                        found=f"{shift[worst]:.2f} mm")


def _affine(first: _Image, normal: np.ndarray, pitch: float) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+ mm."""
    row_spacing, col_spacing = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * col_spacing  # along a row: the column index grows
    lps[:3, 1] = first.orientation[3:] * row_spacing  # down a column: the row index grows
    lps[:3, 2] = normal * pitch
    lps[:3, 3] = first.position
    ras = lps.copy()
    ras[:3, :] = LPS_TO_RAS @ lps[:3, :]
    return ras


def _stack(timelines: list[list[_Image]]) -> np.ndarray:
    rows, cols = timelines[0][0].pixels.shape
    volume = np.empty((cols, rows, len(timelines), len(timelines[0])), dtype=np.float32)
    for k, timeline in enumerate(timelines):
        for t, image in enumerate(timeline):
            volume[:, :, k, t] = image.pixels.T  # (rows, cols) -> (X = column, Y = row)
    return volume


def _trigger_times(timelines: list[list[_Image]]) -> np.ndarray | None:
    if any(im.time_ms is None for tl in timelines for im in tl):
        return None
    return np.array([[im.time_ms for im in tl] for tl in timelines], dtype=np.float64)


# ============================================================================================
# Labels, ED and ES
# ============================================================================================


def read_cine_labels(labels: LabelsInput, cine: SaxCine) -> dict[int, np.ndarray]:
    """Label maps per frame ``{frame: (X, Y, Z) uint8}`` on the cine's grid.

    Accepts a 4D NIfTI path / ``(X, Y, Z, T)`` array, or ``{frame: 3D path or array}``.
    NIfTI affines must match the cine's (corner positions within 0.1 mm). Frames without any
    LV blood voxel are treated as unlabelled and left out. Raises :class:`DataError` for a
    shape or grid mismatch, labels outside {0, 1, 2, 3}, or fewer than one labelled frame.
    """
    grid = cine.image.shape[:3]
    if isinstance(labels, Mapping):
        maps = {int(t): _label_volume(v, cine, ndim=3) for t, v in labels.items()}
    else:
        volume = _label_volume(labels, cine, ndim=4)
        maps = {t: volume[..., t] for t in range(volume.shape[3])}
    for frame, label_map in maps.items():
        where = f"label map of frame {frame}"
        if label_map.shape != grid:
            raise DataError(f"{where} is not on the cine grid", expected=f"shape {grid}",
                            found=f"shape {label_map.shape}")
        if not 0 <= frame < cine.n_frames:
            raise DataError(f"{where}: no such frame", expected=f"0..{cine.n_frames - 1}")
    if isinstance(labels, np.ndarray | str | PathLike) and len(maps) != cine.n_frames:
        raise DataError("4D label map has a different number of frames than the cine",
                        expected=str(cine.n_frames), found=str(len(maps)))
    labelled = {t: m for t, m in maps.items() if (m == LABEL_LV_BLOOD).any()}
    if not labelled:
        raise DataError("label maps contain no LV blood pool (label 1) in any frame",
                        expected="labels 0 bg, 1 LV blood, 2 LV myo, 3 RV blood")
    return labelled


def _label_volume(value: str | PathLike[str] | np.ndarray, cine: SaxCine, *, ndim: int
                  ) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array, where = value, "label array"
    else:
        array, where = _read_label_nifti(value, cine), str(value)
    if array.ndim == ndim + 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != ndim:
        raise DataError("label map has the wrong number of dimensions", path=where,
                        expected=f"{ndim}D", found=f"shape {array.shape}")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError("label map has non-integer values", path=where)
    allowed = (0, LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD)
    bad = np.setdiff1d(np.unique(array), allowed)
    if bad.size:
        raise DataError("label map has values outside our convention", path=where,
                        expected="0 bg, 1 LV blood, 2 LV myo, 3 RV blood",
                        found=str(bad[:5].tolist()))
    return array.astype(np.uint8)


def _read_label_nifti(path: str | PathLike[str], cine: SaxCine) -> np.ndarray:
    if not Path(path).is_file():
        raise DataError("label file not found", path=path, expected="a NIfTI label map")
    try:
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise DataError(f"unreadable NIfTI label map ({type(exc).__name__}: {exc})",
                        path=path) from exc
    shape = np.array(cine.image.shape[:3])
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    offset = np.abs(affine @ corners - cine.affine @ corners).max()
    if offset > 0.1:
        raise DataError("label map is not on the cine's grid (affines differ)", path=path,
                        expected="the affine of the converted cine",
                        found=f"voxel corners up to {offset:.2f} mm apart")
    return array


def lv_blood_voxels(labels: Mapping[int, np.ndarray]) -> dict[int, int]:
    """Number of LV blood-pool voxels (label 1) per labelled frame."""
    return {t: int((m == LABEL_LV_BLOOD).sum()) for t, m in labels.items()}


def choose_ed_es(
    image_4d: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    labels: Mapping[int, np.ndarray] | None = None,
    ed_rule: str = "first",
) -> tuple[int, int, str]:
    """``(ed_frame, es_frame, es_method)`` for a ``(X, Y, Z, T)`` cine (module docstring).

    ``ed_rule``: ``"first"`` (frame 0, the R wave) or ``"largest"`` (largest LV blood pool in
    ``labels``; needs labels). ES: smallest LV blood pool in ``labels`` (``"labels"``), else
    :func:`estimate_es_frame` (``"image"``).
    """
    if ed_rule not in ED_RULES:
        raise ValueError(f"ed_rule must be one of {ED_RULES}, got {ed_rule!r}")
    if ed_rule == "largest" and not labels:
        raise ValueError("ed_rule='largest' needs label maps (labels_4d)")
    if labels:
        volumes = lv_blood_voxels(labels)
        es = min(volumes, key=lambda t: (volumes[t], t))
        ed = 0 if ed_rule == "first" else max(volumes, key=lambda t: (volumes[t], -t))
        method = "labels"
    else:
        ed, es, method = 0, estimate_es_frame(image_4d, spacing_mm), "image"
    if ed == es:
        raise DataError("ED and ES fall on the same frame", expected="two different frames",
                        found=f"frame {ed} ({method}); are the label maps only of one frame?")
    return ed, es, method


def blood_pool_curve(image_4d: np.ndarray, spacing_mm: tuple[float, float, float]
                     ) -> np.ndarray:
    """``(T,)`` number of bright (blood) voxels per frame inside the moving-heart region."""
    image = np.asarray(image_4d, dtype=np.float32)
    if image.ndim != 4 or image.shape[3] < 2:
        raise DataError("not a cine", expected="(X, Y, Z, T) with T >= 2",
                        found=f"shape {image.shape}")
    scale = float(np.percentile(image, _INTENSITY_SCALE_PCT)) or 1.0
    image = image / scale
    motion = gaussian_filter(image.std(axis=3),
                             sigma=[MOTION_SMOOTH_MM / spacing_mm[0],
                                    MOTION_SMOOTH_MM / spacing_mm[1], 0.0])
    if not motion.max() > 0:
        raise DataError("the cine does not change over time: cannot find end-systole",
                        expected="a moving heart")
    region = motion >= MOTION_KEEP_FRACTION * motion.max()
    # fill the blood pool's static core slice by slice (structure without through-plane links)
    region = binary_fill_holes(region, structure=np.ones((3, 3, 1), dtype=bool))
    values = image[region]  # (N, T)
    threshold = otsu_threshold(values.ravel())
    return (values > threshold).sum(axis=0)


def estimate_es_frame(image_4d: np.ndarray, spacing_mm: tuple[float, float, float]) -> int:
    """End-systole from the images alone: the minimum of the smoothed :func:`blood_pool_curve`."""
    curve = blood_pool_curve(image_4d, spacing_mm).astype(np.float64)
    # the cine is one cardiac cycle: smooth circularly (last frame neighbours the first)
    smooth = (np.roll(curve, 1) + 2 * curve + np.roll(curve, -1)) / 4
    return int(np.argmin(smooth))


def otsu_threshold(values: np.ndarray, bins: int = _OTSU_BINS) -> float:
    """Threshold maximising the between-class variance of ``values`` (Otsu 1979)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # thresholds anywhere in an empty gap between the classes tie: take the gap's middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)
