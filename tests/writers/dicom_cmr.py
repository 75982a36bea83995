"""Test inputs for the DICOM converter: a small synthetic SAX cine and a DICOM writer for it.

:func:`synthetic_sax_cine` draws a 4D short-axis cine phantom with a *known* LV volume curve
(the blood pool shrinks linearly from ED, frame 0, to ES and recovers), label maps in our
convention and a double-oblique affine. :func:`write_sax_cine_dicoms` writes any 4D volume
``(X, Y, slice, time)`` with its NIfTI affine (RAS+, mm) as an MR cine the way UK Biobank's
short-axis field 20209 arrives: one DICOM file per slice and frame, one series per slice
(``CINE_segmented_SAX_b1``, ``_b2``, ...), in a folder or a zip.

DICOM geometry (PS3.3 C.7.6.2.1.1, Image Plane Module): ``ImageOrientationPatient`` holds the
direction cosines of the first row (direction of increasing column index) and of the first
column (increasing row index); ``ImagePositionPatient`` is the centre of the first transmitted
pixel; ``PixelSpacing`` is (row spacing, column spacing), i.e. (distance between rows,
distance between columns). Patient coordinates are LPS (x to the patient's Left, y Posterior,
z Superior; PS3.3 C.7.6.2.1.1), NIfTI's are RAS: x and y change sign. NIfTI voxel axis 0 is
stored as the DICOM column index and axis 1 as the row index, so ``pixel_array == vol[:, :, k,
t].T``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from ecgcmr.constants import LABEL_BACKGROUND, LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD
from ecgcmr.data.cmr import spacing_from_affine

#: NIfTI RAS+ <-> DICOM LPS: negate x and y (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_ORTHOGONAL_TOL = 1e-6

# --- phantom (mm, relative intensities with blood = 1) --------------------------------------
_LV_ENDO_RADIUS_MM = 22.0     # ED blood-pool radius at the base
_LV_EPI_RADIUS_MM = 29.0      # ED epicardial radius at the base (myocardial area conserved)
_RV_RADIUS_MM = 22.0          # ED RV disc radius at the base
_RV_OFFSET_MM = 30.0          # RV disc centre from the LV centre, along voxel axis 0
_LV_ES_RADIUS_FRACTION = 0.62  # endocardial radius at ES / at ED  (EF ~ 60 %)
_RV_ES_RADIUS_FRACTION = 0.72
_END_DIASTOLE_RECOVERY = 0.97  # radius fraction in the last frame (the next beat's ED is 1)
_INTENSITY = {"air": 0.0, "body": 0.45, "lung": 0.06, "myo": 0.25, "lv": 1.0, "rv": 0.9}
_SUPERSAMPLE = 3              # in-plane sub-samples per axis for partial volume


@dataclass(frozen=True, eq=False)
class SyntheticCine:
    """A synthetic SAX cine: NIfTI voxel order ``(X, Y, slice, time)``."""

    image: np.ndarray            # (X, Y, Z, T) float32, integer values (scanner-like units)
    labels: np.ndarray           # (X, Y, Z, T) uint8: 0 bg, 1 LV blood, 2 LV myo, 3 RV blood
    affine: np.ndarray           # (4, 4) voxel -> RAS+ mm
    trigger_times_ms: np.ndarray  # (T,) ms after the R wave
    es_frame: int                # frame of the smallest LV blood pool (by construction)
    lv_volume_ml: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) from labels


def oblique_affine(
    spacing_mm: tuple[float, float, float] = (1.8, 1.8, 10.0),
    *,
    azimuth_deg: float = 40.0,
    elevation_deg: float = 35.0,
    inplane_deg: float = 25.0,
    origin_mm: tuple[float, float, float] = (31.5, -12.25, 48.0),
) -> np.ndarray:
    """A double-oblique SAX affine (RAS+ mm) with orthogonal axes; axis 2 is the stack normal.

    The normal points to the patient's left (rotated ``azimuth_deg`` towards anterior) and
    ``elevation_deg`` downwards, like an LV long axis; the in-plane axes are rotated by
    ``inplane_deg`` about it. No axis is parallel to a world axis.
    """
    az, el, rot = np.deg2rad([azimuth_deg, elevation_deg, inplane_deg])
    normal = np.array([-np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), -np.sin(el)])
    first = np.cross(normal, [0.0, 0.0, 1.0])
    first /= np.linalg.norm(first)
    second = np.cross(normal, first)
    e0 = np.cos(rot) * first + np.sin(rot) * second
    e1 = np.cross(normal, e0)  # e0 x e1 = normal: slice index increases along the normal
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([e0, e1, normal]) * np.asarray(spacing_mm)
    affine[:3, 3] = origin_mm
    return affine


def synthetic_sax_cine(
    *,
    matrix: tuple[int, int] = (64, 64),
    n_slices: int = 8,
    n_frames: int = 20,
    es_frame: int = 7,
    affine: np.ndarray | None = None,
    rr_ms: float = 1000.0,
    noise_sd: float = 0.02,
    scale: float = 1000.0,
    seed: int = 0,
) -> SyntheticCine:
    """A small SAX cine phantom whose LV blood pool is smallest at ``es_frame``.

    Per slice (base at slice 0, apex at the last): a disc of LV blood inside a ring of
    myocardium (area conserved, so the wall thickens in systole), an RV crescent beside it,
    inside a static body with a dark lung. Radii taper towards the apex. The endocardial
    radius shrinks *linearly* from ED (frame 0) to ``es_frame`` and grows linearly back, so
    the LV volume has a unique minimum at ``es_frame``. Rician-like noise (``|x + noise|``),
    values rounded to integers, like scanner output. ``affine`` defaults to
    :func:`oblique_affine`; the phantom is drawn in voxel space, so any affine fits.
    """
    if not 0 < es_frame < n_frames - 1:
        raise ValueError(f"es_frame must be inside (0, n_frames - 1), got {es_frame}")
    affine = oblique_affine() if affine is None else np.asarray(affine, dtype=np.float64)
    spacing = np.asarray(spacing_from_affine(affine))
    rng = np.random.default_rng(seed)
    lv_fraction = _radius_curve(n_frames, es_frame, _LV_ES_RADIUS_FRACTION)
    rv_fraction = _radius_curve(n_frames, es_frame, _RV_ES_RADIUS_FRACTION)
    shape = (*matrix, n_slices, n_frames)
    image = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    for k in range(n_slices):
        taper = float(np.sqrt(1.0 - ((k + 0.5) / (n_slices + 0.5)) ** 2))
        for t in range(n_frames):
            radii = _slice_radii(taper, lv_fraction[t], rv_fraction[t])
            image[:, :, k, t], labels[:, :, k, t] = _render_slice(matrix, spacing[:2], radii)
    noisy = np.abs(image + rng.normal(0.0, noise_sd, shape))
    image = np.rint(noisy * scale).astype(np.float32)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lv_ml = (labels == LABEL_LV_BLOOD).sum(axis=(0, 1, 2)) * voxel_ml
    times = np.arange(n_frames) * rr_ms / n_frames
    return SyntheticCine(image=image, labels=labels, affine=affine, trigger_times_ms=times,
                         es_frame=es_frame, lv_volume_ml=lv_ml)


def _radius_curve(n_frames: int, es_frame: int, es_fraction: float) -> np.ndarray:
    """(T,) radius / ED radius: 1 at frame 0, linear to ``es_fraction`` at ES, linear back."""
    frames = np.arange(n_frames, dtype=np.float64)
    systole = 1.0 - (1.0 - es_fraction) * frames / es_frame
    recovery = (frames - es_frame) / (n_frames - 1 - es_frame)
    diastole = es_fraction + (_END_DIASTOLE_RECOVERY - es_fraction) * recovery
    return np.where(frames <= es_frame, systole, diastole)


def _slice_radii(taper: float, lv_fraction: float, rv_fraction: float) -> dict[str, float]:
    endo = _LV_ENDO_RADIUS_MM * taper * lv_fraction
    myo_area = (_LV_EPI_RADIUS_MM**2 - _LV_ENDO_RADIUS_MM**2) * taper**2
    return {"endo": endo, "epi": float(np.sqrt(endo**2 + myo_area)),
            "rv": _RV_RADIUS_MM * taper * rv_fraction}


def _render_slice(matrix: tuple[int, int], pixel_mm: np.ndarray, radii: dict[str, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One slice: image (partial volume by supersampling) and labels at the voxel centres."""
    n = _SUPERSAMPLE
    offsets = (np.arange(n) + 0.5) / n - 0.5
    image = np.zeros(matrix, dtype=np.float64)
    for dx in offsets:
        for dy in offsets:
            tissue = _tissue_at(matrix, pixel_mm, radii, (dx, dy))
            image += np.select([tissue == name for name in _INTENSITY],
                               list(_INTENSITY.values()))
    tissue = _tissue_at(matrix, pixel_mm, radii, (0.0, 0.0))
    labels = np.select([tissue == "lv", tissue == "myo", tissue == "rv"],
                       [LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD], LABEL_BACKGROUND)
    return (image / n**2).astype(np.float32), labels.astype(np.uint8)


def _tissue_at(matrix: tuple[int, int], pixel_mm: np.ndarray, radii: dict[str, float],
               offset: tuple[float, float]) -> np.ndarray:
    """Tissue name at voxel positions shifted by ``offset`` voxels; (X, Y) array of str."""
    centre = (np.asarray(matrix) - 1) / 2
    x = (np.arange(matrix[0]) + offset[0] - centre[0])[:, None] * pixel_mm[0]  # mm from centre
    y = (np.arange(matrix[1]) + offset[1] - centre[1])[None, :] * pixel_mm[1]
    lv_x = x + 8.0                      # the LV sits 8 mm off the field-of-view centre
    lv_r = np.hypot(lv_x, y)
    rv_r = np.hypot(lv_x - _RV_OFFSET_MM, y + 4.0)
    body = (x / 56.0) ** 2 + (y / 50.0) ** 2 <= 1.0
    lung = ((x + 30.0) / 16.0) ** 2 + ((y - 30.0) / 12.0) ** 2 <= 1.0
    return np.select(
        [lv_r <= radii["endo"], lv_r <= radii["epi"], rv_r <= radii["rv"], lung, body],
        ["lv", "myo", "rv", "lung", "body"], "air")


# ============================================================================================
# DICOM writer
# ============================================================================================


def sax_cine_datasets(
    volume_4d: np.ndarray,
    affine: np.ndarray,
    *,
    trigger_times_ms: Sequence[float] | np.ndarray,
    one_series_per_slice: bool = True,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    patient_id: str = "SYNTH0001",
    uid_seed: str = "ecgcmr-synthetic",
) -> list[Dataset]:
    """One MR Image Storage dataset per (slice, frame), in slice-major order.

    ``volume_4d``: ``(X, Y, Z, T)`` physical values; stored as 16-bit integers
    ``round((value - intercept) / slope)`` with that RescaleSlope/RescaleIntercept (they must
    fit). ``affine``: NIfTI voxel -> RAS+ mm; its first two columns must be orthogonal (DICOM
    stores unit direction cosines and two spacings). ``trigger_times_ms``: ``(T,)`` or
    ``(Z, T)``. UIDs are derived from ``uid_seed`` (same inputs -> same files).
    """
    volume = np.asarray(volume_4d, dtype=np.float64)
    if volume.ndim != 4:
        raise ValueError(f"volume_4d must be (X, Y, Z, T), got shape {volume.shape}")
    _, _, n_z, n_t = volume.shape
    times = np.broadcast_to(np.asarray(trigger_times_ms, dtype=np.float64), (n_z, n_t))
    geometry = _dicom_geometry(np.asarray(affine, dtype=np.float64), n_z)
    stored, signed = _stored_values(volume, rescale_slope, rescale_intercept)
    study = generate_uid(entropy_srcs=[uid_seed, "study"])
    frame_of_reference = generate_uid(entropy_srcs=[uid_seed, "frame"])
    datasets = []
    for k in range(n_z):
        series_key = str(k) if one_series_per_slice else "all"
        for t in range(n_t):
            ds = _base_dataset(uid_seed, f"{k}/{t}", patient_id, study, frame_of_reference)
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series", series_key])
            ds.SeriesNumber = 100 + k if one_series_per_slice else 100
            ds.SeriesDescription = (f"CINE_segmented_SAX_b{k + 1}" if one_series_per_slice
                                    else "CINE_segmented_SAX")
            ds.InstanceNumber = t + 1 if one_series_per_slice else k * n_t + t + 1
            ds.TriggerTime = f"{times[k, t]:.3f}"
            ds.CardiacNumberOfImages = n_t
            ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry["positions"][k]]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in geometry["orientation"]]
            ds.PixelSpacing = [f"{v:.6f}" for v in geometry["pixel_spacing"]]
            ds.SliceThickness = f"{geometry['slice_step']:.4f}"
            ds.SliceLocation = f"{geometry['slice_locations'][k]:.6f}"
            _set_pixels(ds, stored[:, :, k, t].T, signed, rescale_slope, rescale_intercept)
            datasets.append(ds)
    return datasets


def dicom_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, ``DICM``, file meta), in memory."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_sax_cine_dicoms(
    out: str | PathLike[str],
    volume_4d: np.ndarray,
    affine: np.ndarray,
    *,
    trigger_times_ms: Sequence[float] | np.ndarray,
    one_series_per_slice: bool = True,
    shuffle_seed: int | None = None,
    **dataset_options: object,
) -> Path:
    """Write the cine as DICOM files into a folder, or a zip if ``out`` ends in ``.zip``.

    Files are named ``<SOPInstanceUID>.dcm`` (flat, as in UK Biobank zips); with
    ``shuffle_seed`` they are written in a random order. ``dataset_options`` go to
    :func:`sax_cine_datasets`. Returns ``out``.
    """
    datasets = sax_cine_datasets(volume_4d, affine, trigger_times_ms=trigger_times_ms,
                                 one_series_per_slice=one_series_per_slice,
                                 **dataset_options)  # type: ignore[arg-type]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(datasets))
        datasets = [datasets[i] for i in order]
    members = [(f"{ds.SOPInstanceUID}.dcm", dicom_bytes(ds)) for ds in datasets]
    out = Path(out)
    if out.suffix.lower() == ".zip":
        write_zip(out, members)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in members:
            (out / name).write_bytes(content)
    return out


def write_zip(path: str | PathLike[str], members: Sequence[tuple[str, bytes]]) -> Path:
    """Write ``(name, content)`` members into a deflated zip at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return path


def _dicom_geometry(affine: np.ndarray, n_slices: int) -> dict[str, np.ndarray]:
    """Orientation, pixel spacing and per-slice positions (LPS) from a NIfTI affine."""
    lps = RAS_TO_LPS @ affine[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    along_row, along_col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    if abs(float(along_row @ along_col)) > _ORTHOGONAL_TOL:
        raise ValueError("the affine's in-plane axes are not orthogonal; DICOM cannot store it")
    normal = np.cross(along_row, along_col)
    positions = np.array([lps[:, 3] + k * lps[:, 2] for k in range(n_slices)])
    return {
        "orientation": np.concatenate([along_row, along_col]),
        # PixelSpacing = (distance between rows, distance between columns): rows are
        # stepped along voxel axis 1, columns along voxel axis 0
        "pixel_spacing": np.array([spacing[1], spacing[0]]),
        "positions": positions,
        "slice_locations": positions @ normal,
        "slice_step": np.array(spacing[2]),
    }


def _stored_values(volume: np.ndarray, slope: float, intercept: float
                   ) -> tuple[np.ndarray, bool]:
    if slope == 0:
        raise ValueError("rescale_slope must be non-zero")
    stored = np.rint((volume - intercept) / slope)
    signed = bool(stored.min() < 0)
    info = np.iinfo(np.int16 if signed else np.uint16)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"values do not fit 16 bits with slope {slope} and intercept "
                         f"{intercept}: stored range {stored.min()}..{stored.max()}")
    return stored.astype(np.int16 if signed else np.uint16), signed


def _base_dataset(uid_seed: str, key: str, patient_id: str, study: str,
                  frame_of_reference: str) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[uid_seed, "instance", key])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Modality = "MR"
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, signed: bool, slope: float,
                intercept: float) -> None:
    """Image Pixel Module (PS3.3 C.7.6.3) for one 16-bit greyscale frame (Rows, Columns)."""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = f"{slope:.10g}"  # DS: at most 16 characters
    ds.RescaleIntercept = f"{intercept:.10g}"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2" if signed else "<u2").tobytes()
