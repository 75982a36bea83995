"""Public CMR collections (ACDC, M&Ms) -> ED/ES NIfTI + label maps in OUR convention + manifest.

Both collections ship short-axis cine stacks with expert labels at end-diastole (ED) and
end-systole (ES). The converters pick the two frames, remap the labels to the project's
convention (0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool), measure the
phenotypes from the label maps (:func:`ecgcmr.data.phenotypes.measure_phenotypes`: disc summation,
LV mass at 1.05 g/mL) and write a **CMR-only** manifest (``ecg_path`` empty): it validates
with ``read_manifest(path, require_ecg=False)`` and serves the CMR encoders of stage A.

Output folder::

    manifest.csv                     one row per subject, paths relative to this folder
    cmr/<id>_ed.nii.gz, <id>_es.nii.gz            3D image at ED / ES (source intensities)
    cmr/<id>_ed_seg.nii.gz, <id>_es_seg.nii.gz    3D label maps, our convention (uint8)

Source layouts (facts of the collections, cited where they are used):

- **ACDC** (Bernard et al. 2018, IEEE TMI 37(11):2514-2525; challenge site
  creatis.insa-lyon.fr/Challenge/acdc): ``patientNNN/Info.cfg`` with ``key: value`` lines
  (``ED``, ``ES``, ``Group``, ``Height`` cm, ``NbFrame``, ``Weight`` kg), the cine
  ``patientNNN_4d.nii.gz`` (X, Y, Z, T), and for the ED and ES frames
  ``patientNNN_frameFF.nii.gz`` + ``patientNNN_frameFF_gt.nii.gz``. Frame numbers are
  **1-based**. Labels: 1 RV cavity, 2 myocardium, 3 LV cavity.
- **M&Ms** (Campello et al. 2021, IEEE TMI 40(12):3543-3554; ub.edu/mnms): a CSV with one
  row per subject (``External code``, ``VendorName``, ``Vendor``, ``Centre``, ``ED``, ``ES``,
  and in the later releases ``Pathology``, ``Sex``, ``Age``), frame indices **0-based**;
  ``<code>/<code>_sa.nii.gz`` 4D cine and ``<code>/<code>_sa_gt.nii.gz`` 4D labels (labelled
  at ED and ES only). Labels: 1 LV blood pool, 2 LV myocardium, 3 RV.

Subjects without ground truth (M&Ms' unlabelled vendor-C subjects, say) are converted as
images only, with empty phenotypes. Every inconsistency raises :class:`DataError` naming the
subject and the file; nothing is skipped silently.

One subject at a time (``ecgcmr convert cmr``, :mod:`ecgcmr.convert.cmr_any`):
:func:`convert_acdc_patient` and :func:`convert_mnms_subject`. An M&Ms subject folder given
without the information CSV takes ED and ES from its labels (``_sa_gt`` is labelled at ED and
ES only: ED = the labelled frame with the larger LV blood pool, ES = the smaller), and without
labels either ED = frame 0 and ES = the image-based estimate of
:func:`ecgcmr.convert.cmr_dicom.estimate_es_frame`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ecgcmr.constants import (
    LABEL_BACKGROUND,
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    PHENOTYPES,
)
from ecgcmr.convert.cmr_dicom import estimate_es_frame
from ecgcmr.data.cmr import (
    GRID_TOLERANCE_MM,
    affine_mm,
    load_cmr_canonical,
    load_labels_canonical,
    spacing_from_affine,
)
from ecgcmr.data.manifest import read_manifest
from ecgcmr.data.phenotypes import measure_phenotypes
from ecgcmr.data.writers import write_nifti
from ecgcmr.errors import DataError

#: Collection label -> our label. ACDC: 1 RV, 2 MYO, 3 LV (Bernard et al. 2018, section II-B).
ACDC_TO_OURS: Mapping[int, int] = {0: LABEL_BACKGROUND, 1: LABEL_RV_BLOOD, 2: LABEL_LV_MYO,
                                   3: LABEL_LV_BLOOD}
#: M&Ms: 1 LV blood pool, 2 LV myocardium, 3 RV (Campello et al. 2021, section II): ours already.
MNMS_TO_OURS: Mapping[int, int] = {0: LABEL_BACKGROUND, 1: LABEL_LV_BLOOD, 2: LABEL_LV_MYO,
                                   3: LABEL_RV_BLOOD}

_ACDC_INFO = "Info.cfg"
_MNMS_ID_COLUMN = "External code"
_MNMS_SEX = {"M": 1, "F": 0}  # to UK Biobank field 31 coding (0 female, 1 male)


@dataclass(frozen=True)
class _Phase:
    """One cardiac phase of one subject, in the source's voxel layout."""

    image: np.ndarray            # (X, Y, Z) source intensities
    labels: np.ndarray | None    # (X, Y, Z) uint8, OUR convention; None without ground truth
    affine: np.ndarray           # (4, 4) voxel -> world, mm


# ============================================================================================
# ACDC
# ============================================================================================


def convert_acdc(root: str | PathLike[str], out_dir: str | PathLike[str]) -> Path:
    """Convert every ``patient*/Info.cfg`` folder under ``root``; return the manifest path.

    Raises :class:`DataError` (naming subject and file) for an ``Info.cfg`` without ED/ES, a
    frame outside ``1..n_frames``, ED = ES, labels outside {0, 1, 2, 3}, a label map whose
    shape or affine differs from its image, a ``_4d`` cine that is not 4D, or missing files.
    """
    root, out = Path(root), Path(out_dir)
    folders = _acdc_patient_folders(root)
    rows = [_convert_acdc_patient(folder, out) for folder in folders]
    return _write_cmr_manifest(rows, out)


def _acdc_patient_folders(root: Path) -> list[Path]:
    folders = sorted(p.parent for p in root.rglob(_ACDC_INFO))
    if not folders:
        raise DataError("no ACDC patient folders found", path=root,
                        expected=f"patientNNN/{_ACDC_INFO} under this folder")
    _refuse_repeated_ids([f.name for f in folders], root)
    return folders


def read_acdc_info(path: str | PathLike[str], *, subject: str | None = None) -> dict[str, str]:
    """``Info.cfg`` as ``{key: value}`` (``"ED": "1"``, ...); ED and ES must be present."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {_ACDC_INFO} ({exc})", subject=subject, path=path) from exc
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    missing = [k for k in ("ED", "ES") if not info.get(k)]
    if missing:
        raise DataError(f"{_ACDC_INFO} has no {' or '.join(missing)} frame", subject=subject,
                        path=path, expected="lines 'ED: <frame>' and 'ES: <frame>' (1-based)",
                        found=", ".join(f"{k}: {v}" for k, v in info.items()) or "no entries")
    return info


def convert_acdc_patient(folder: str | PathLike[str], out_dir: str | PathLike[str], *,
                         name: str | None = None, subdir: str = "cmr") -> dict[str, object]:
    """Convert one ACDC ``patientNNN`` folder; return its manifest row (paths relative to
    ``out_dir``). Files: ``out_dir/<subdir>/<name>_ed.nii.gz`` ... (``name``: the folder's)."""
    return _convert_acdc_patient(Path(folder), Path(out_dir), name=name, subdir=subdir)


def _convert_acdc_patient(folder: Path, out: Path, *, name: str | None = None,
                          subdir: str = "cmr") -> dict[str, object]:
    pid = folder.name
    info_path = folder / _ACDC_INFO
    info = read_acdc_info(info_path, subject=pid)
    cine_path = folder / f"{pid}_4d.nii.gz"
    n_frames = _acdc_frame_count(cine_path, info, pid)
    frames = {phase: _frame_number(info[phase.upper()], phase.upper(), pid, info_path)
              for phase in ("ed", "es")}
    for phase, frame in frames.items():  # ACDC frames are 1-based
        _check_frame(frame, 1, n_frames, phase.upper(), pid, info_path)
    _check_distinct(frames, pid, info_path)
    phases = {phase: _acdc_phase(folder, pid, frame, cine_path)
              for phase, frame in frames.items()}
    extra = {"collection": "acdc", "source_ed_frame": frames["ed"],
             "source_es_frame": frames["es"], "group": info.get("Group", ""),
             "height_cm": _number_or_nan(info.get("Height")),
             "weight_kg": _number_or_nan(info.get("Weight"))}
    return _write_subject(out, pid, phases, extra, name=name, subdir=subdir)


def _acdc_frame_count(cine_path: Path, info: Mapping[str, str], pid: str) -> int | None:
    """Frames in the cine (its 4th dimension), else ``NbFrame``, else unknown (None)."""
    if cine_path.is_file():
        return _header_shape(cine_path, pid, ndim=4)[3]
    nb = info.get("NbFrame")
    return int(nb) if nb and nb.isdigit() else None


def _acdc_phase(folder: Path, pid: str, frame: int, cine_path: Path) -> _Phase:
    """One ED/ES frame: its ``_frameFF`` file, or the cine's frame when that file is absent."""
    image_path = folder / f"{pid}_frame{frame:02d}.nii.gz"
    labels_path = folder / f"{pid}_frame{frame:02d}_gt.nii.gz"
    if image_path.is_file():
        image, affine = _read_volume(image_path, pid, ndim=3)
    elif cine_path.is_file():
        cine, affine = _read_volume(cine_path, pid, ndim=4)
        image = cine[..., frame - 1]
        image_path = cine_path
    else:
        raise DataError("ACDC image missing", subject=pid, path=image_path,
                        expected=f"{image_path.name} or the cine {cine_path.name}")
    labels = None
    if labels_path.is_file():
        raw, label_affine = _read_volume(labels_path, pid, ndim=3)
        _check_same_grid(raw.shape, label_affine, image.shape, affine, pid, labels_path)
        labels = _remap(raw, ACDC_TO_OURS, "ACDC", pid, labels_path)
    return _Phase(image=image, labels=labels, affine=affine)


# ============================================================================================
# M&Ms
# ============================================================================================


def convert_mnms(root: str | PathLike[str], csv_path: str | PathLike[str],
                 out_dir: str | PathLike[str]) -> Path:
    """Convert every ``<code>/<code>_sa.nii.gz`` under ``root``; return the manifest path.

    ``csv_path``: the collection's information CSV (ED/ES frame indices, 0-based). Subjects
    listed in the CSV but absent under ``root`` are not converted (the CSV describes the whole
    collection); a subject folder missing from the CSV is an error. Raises
    :class:`DataError` as :func:`convert_acdc` does.
    """
    root, out, csv_path = Path(root), Path(out_dir), Path(csv_path)
    table = _read_mnms_csv(csv_path)
    cines = _mnms_cines(root)
    rows = []
    for code, cine_path in cines.items():
        if code not in table:
            raise DataError("subject is not in the M&Ms information CSV", subject=code,
                            path=csv_path, expected=f"a row with {_MNMS_ID_COLUMN} = {code}")
        rows.append(_convert_mnms_subject(code, cine_path, table[code], csv_path, out))
    return _write_cmr_manifest(rows, out)


def convert_mnms_subject(folder: str | PathLike[str], out_dir: str | PathLike[str], *,
                         csv_path: str | PathLike[str] | None = None, name: str | None = None,
                         subdir: str = "cmr") -> tuple[dict[str, object], str]:
    """Convert one M&Ms ``<code>`` folder; return its manifest row and how ED/ES were chosen.

    ED/ES come from ``csv_path`` (the information CSV; it must list the code), else from the
    ``_sa_gt`` labels, else ED = frame 0 and ES from the images (module docstring).
    """
    folder, out = Path(folder), Path(out_dir)
    code = folder.name
    cine_path = folder / f"{code}_sa.nii.gz"
    if not cine_path.is_file():
        raise DataError("M&Ms cine missing", subject=code, path=cine_path,
                        expected=f"{code}/{code}_sa.nii.gz")
    if csv_path is not None:
        table = _read_mnms_csv(Path(csv_path))
        if code not in table:
            raise DataError("subject is not in the M&Ms information CSV", subject=code,
                            path=csv_path, expected=f"a row with {_MNMS_ID_COLUMN} = {code}")
        row, how = table[code], f"ED/ES from {Path(csv_path).name}"
        source = Path(csv_path)
    else:
        ed, es, how = _mnms_frames_without_csv(code, cine_path)
        row, source = {"ED": str(ed), "ES": str(es)}, cine_path
    return _convert_mnms_subject(code, cine_path, row, source, out, name=name,
                                 subdir=subdir), how


def _mnms_frames_without_csv(code: str, cine_path: Path) -> tuple[int, int, str]:
    """``(ed, es, how)`` from the ``_sa_gt`` labels (labelled at ED and ES only), else frame 0
    and the image-based ES estimate."""
    labels_path = cine_path.with_name(f"{code}_sa_gt.nii.gz")
    if labels_path.is_file():
        labels, _ = _read_volume(labels_path, code, ndim=4)
        lv = (labels == LABEL_LV_BLOOD).sum(axis=(0, 1, 2))  # M&Ms label 1 = LV blood, as ours
        labelled = [int(t) for t in np.flatnonzero(lv)]
        if len(labelled) < 2:
            raise DataError("no information CSV and the labels cover fewer than two frames",
                            subject=code, path=labels_path,
                            expected="the M&Ms information CSV, or labels at ED and ES",
                            found=f"LV blood in frames {labelled}")
        ed = max(labelled, key=lambda t: (lv[t], -t))
        es = min(labelled, key=lambda t: (lv[t], t))
        return ed, es, "no M&Ms CSV: ED/ES = labelled frames of largest/smallest LV blood pool"
    cine, affine = _read_volume(cine_path, code, ndim=4)
    es = estimate_es_frame(cine, spacing_from_affine(affine))
    if es == 0:
        raise DataError("no information CSV, no labels, and the image-based ES estimate is "
                        "frame 0 (= ED)", subject=code, path=cine_path,
                        expected="the M&Ms information CSV or labels")
    return 0, es, "no M&Ms CSV or labels: ED = frame 0, ES = image-based estimate"


def _read_mnms_csv(csv_path: Path) -> dict[str, dict[str, str]]:
    """``{code: row}`` with every value as stripped text."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types; the user needs the file name
        raise DataError(f"M&Ms information CSV could not be parsed: {exc}", path=csv_path) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in (_MNMS_ID_COLUMN, "ED", "ES") if c not in df.columns]
    if missing:
        raise DataError(f"M&Ms information CSV lacks column(s) {', '.join(missing)}",
                        path=csv_path, expected=f"'{_MNMS_ID_COLUMN}', 'ED', 'ES'",
                        found=", ".join(df.columns))
    rows = [{k: str(v).strip() for k, v in row.items()} for row in df.to_dict("records")]
    _refuse_repeated_ids([r[_MNMS_ID_COLUMN] for r in rows], csv_path)
    return {r[_MNMS_ID_COLUMN]: r for r in rows}


def _mnms_cines(root: Path) -> dict[str, Path]:
    """``{code: <code>/<code>_sa.nii.gz}`` found anywhere under ``root``."""
    found = sorted(p for p in root.rglob("*_sa.nii.gz")
                   if p.name == f"{p.parent.name}_sa.nii.gz")
    if not found:
        raise DataError("no M&Ms subject folders found", path=root,
                        expected="<code>/<code>_sa.nii.gz under this folder")
    codes = [p.parent.name for p in found]
    _refuse_repeated_ids(codes, root)
    return dict(zip(codes, found, strict=True))


def _convert_mnms_subject(code: str, cine_path: Path, row: Mapping[str, str], csv_path: Path,
                          out: Path, *, name: str | None = None,
                          subdir: str = "cmr") -> dict[str, object]:
    cine, affine = _read_volume(cine_path, code, ndim=4)
    frames = {phase: _frame_number(row[phase.upper()], phase.upper(), code, csv_path)
              for phase in ("ed", "es")}
    for phase, frame in frames.items():  # M&Ms frames are 0-based
        _check_frame(frame, 0, cine.shape[3] - 1, phase.upper(), code, csv_path)
    _check_distinct(frames, code, csv_path)
    labels_path = cine_path.with_name(f"{code}_sa_gt.nii.gz")
    labels = None
    if labels_path.is_file():
        labels, label_affine = _read_volume(labels_path, code, ndim=4)
        _check_same_grid(labels.shape, label_affine, cine.shape, affine, code, labels_path)
    phases = {
        phase: _Phase(image=cine[..., frame], affine=affine,
                      labels=None if labels is None else
                      _remap(labels[..., frame], MNMS_TO_OURS, "M&Ms", code, labels_path))
        for phase, frame in frames.items()
    }
    extra = {"collection": "mnms", "source_ed_frame": frames["ed"],
             "source_es_frame": frames["es"], "vendor": row.get("Vendor", ""),
             "vendor_name": row.get("VendorName", ""), "centre": row.get("Centre", ""),
             "pathology": row.get("Pathology", ""),
             "sex": _MNMS_SEX.get(row.get("Sex", "").upper(), math.nan),
             "age_years": _number_or_nan(row.get("Age"))}
    return _write_subject(out, code, phases, extra, name=name, subdir=subdir)


# ============================================================================================
# Shared: reading, checks, writing
# ============================================================================================


def _read_volume(path: Path, subject: str, *, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine in mm)`` of a NIfTI that must have ``ndim`` dimensions."""
    img = _load(path, subject)
    _check_ndim(img.shape, ndim, subject, path)
    try:
        array = np.asanyarray(img.dataobj)  # scaled by slope/intercept if the header has them
    except Exception as exc:  # a truncated file fails here
        raise DataError(f"cannot read the voxel data ({type(exc).__name__}: {exc})",
                        subject=subject, path=path) from exc
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # intensities: float32 is plenty, half the disk
    try:
        affine = affine_mm(img, path)
    except DataError as exc:
        raise exc.with_context(subject=subject, path=path) from exc
    return array, affine


def _header_shape(path: Path, subject: str, *, ndim: int) -> tuple[int, ...]:
    shape = tuple(int(n) for n in _load(path, subject).shape)
    _check_ndim(shape, ndim, subject, path)
    return shape


def _load(path: Path, subject: str) -> nib.spatialimages.SpatialImage:
    if not path.is_file():
        raise DataError("NIfTI file not found", subject=subject, path=path)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel: ImageFileError, OSError, EOFError, zlib.error ...
        raise DataError(f"unreadable NIfTI file ({type(exc).__name__}: {exc})",
                        subject=subject, path=path) from exc


def _check_ndim(shape: tuple[int, ...], ndim: int, subject: str, path: Path) -> None:
    if len(shape) != ndim:
        what = "4D cine (X, Y, Z, T)" if ndim == 4 else "3D volume (X, Y, Z)"
        raise DataError(f"{ndim}D expected but {len(shape)}D found", subject=subject, path=path,
                        expected=f"a {what}", found=f"shape {shape}")


def _frame_number(text: str, name: str, subject: str, path: Path) -> int:
    if not re.fullmatch(r"\s*\d+\s*", str(text)):
        raise DataError(f"{name} frame is not a whole number", subject=subject, path=path,
                        expected="a frame number", found=repr(text))
    return int(text)


def _check_frame(frame: int, first: int, last: int | None, name: str, subject: str,
                 path: Path) -> None:
    if frame < first or (last is not None and frame > last):
        raise DataError(f"{name} frame out of range", subject=subject, path=path,
                        expected=f"{first}..{last if last is not None else ''}",
                        found=str(frame))


def _check_distinct(frames: Mapping[str, int], subject: str, path: Path) -> None:
    if frames["ed"] == frames["es"]:
        raise DataError("ED and ES are the same frame", subject=subject, path=path,
                        expected="two different frames", found=f"ED = ES = {frames['ed']}")


def _check_same_grid(label_shape: tuple[int, ...], label_affine: np.ndarray,
                     image_shape: tuple[int, ...], image_affine: np.ndarray, subject: str,
                     path: Path) -> None:
    if tuple(label_shape) != tuple(image_shape):
        raise DataError("label map shape differs from the image", subject=subject, path=path,
                        expected=f"{tuple(image_shape)}", found=f"{tuple(label_shape)}")
    offset = float(np.abs(label_affine - image_affine).max())
    if offset > GRID_TOLERANCE_MM:
        raise DataError("label map affine differs from the image", subject=subject, path=path,
                        expected=f"equal within {GRID_TOLERANCE_MM} mm",
                        found=f"largest difference {offset:.3g} mm")


def _remap(labels: np.ndarray, table: Mapping[int, int], collection: str, subject: str,
           path: Path) -> np.ndarray:
    """Collection labels -> ours (uint8); anything outside ``table`` is an error."""
    values = np.unique(labels)
    whole = np.all(values == np.round(values)) if values.dtype.kind == "f" else True
    unknown = [v for v in values.tolist() if not whole or v not in table]
    if unknown:
        raise DataError(f"label values outside the {collection} label set", subject=subject,
                        path=path, expected=f"{sorted(table)}", found=f"{unknown[:10]}")
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for source, ours in table.items():
        lut[source] = ours
    return lut[labels.astype(np.intp)]


def _write_subject(out: Path, sid: str, phases: Mapping[str, _Phase],
                   extra: Mapping[str, object], *, name: str | None = None,
                   subdir: str = "cmr") -> dict[str, object]:
    """Write the ED/ES files of one subject as ``<subdir>/<name>_<phase>...``; return its
    manifest row (``subject_id`` = ``name``, default ``sid``)."""
    name = sid if name is None else name
    prefix = f"{subdir}/{name}" if subdir else name
    (out / subdir).mkdir(parents=True, exist_ok=True)
    row: dict[str, object] = {"subject_id": name, "ecg_path": ""}
    labelled = [p.labels is not None for p in phases.values()]
    if any(labelled) and not all(labelled):
        raise DataError("ground truth for only one of ED and ES", subject=sid,
                        expected="label maps for both phases or for neither")
    for phase, data in phases.items():
        row[f"cmr_{phase}_path"] = write_nifti(out, f"{prefix}_{phase}.nii.gz", data.image,
                                                data.affine)
    if all(labelled):
        for phase, data in phases.items():
            row[f"cmr_{phase}_seg_path"] = write_nifti(
                out, f"{prefix}_{phase}_seg.nii.gz", data.labels, data.affine)
        ed, es = phases["ed"], phases["es"]
        row.update(measure_phenotypes(ed.labels, es.labels, spacing_from_affine(ed.affine)))
    else:
        row.update({f"cmr_{p}_seg_path": "" for p in phases})
        row.update({name: math.nan for name in PHENOTYPES})
    _check_loads(out, row, sid)
    return {**row, **extra}


def _check_loads(out: Path, row: Mapping[str, object], sid: str) -> None:
    """What was written must load with the project's own loaders (the data contract)."""
    for phase in ("ed", "es"):
        image = load_cmr_canonical(out / str(row[f"cmr_{phase}_path"]), subject=sid)
        seg = row.get(f"cmr_{phase}_seg_path")
        if seg:
            load_labels_canonical(out / str(seg), subject=sid, like=image)


def _write_cmr_manifest(rows: list[dict[str, object]], out: Path) -> Path:
    """manifest.csv of the converted subjects, validated as a CMR-only manifest."""
    path = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    read_manifest(path, require_ecg=False)
    return path


def _refuse_repeated_ids(ids: list[str], where: Path) -> None:
    seen = pd.Series(ids).value_counts()
    repeated = seen[seen > 1]
    if len(repeated):
        raise DataError("subject id appears more than once", path=where,
                        expected="one folder/row per subject",
                        found=", ".join(f"{sid} x{n}" for sid, n in repeated.items()))


def _number_or_nan(text: str | None) -> float:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan
