"""Any short-axis cine CMR inputs -> ED/ES NIfTI volumes (``ecgcmr convert cmr``).

Inputs are files or folders (searched recursively; hidden files and the output folder
skipped). What each is, is told from content and layout:

=================  =========================================================================
ACDC patient       a folder holding ``Info.cfg`` (+ ``<folder>_4d.nii.gz`` / ``_frameFF``
                   files): ED/ES from ``Info.cfg`` (:func:`~ecgcmr.convert.public_cmr.
                   convert_acdc_patient`), labels remapped to ours
M&Ms subject       a folder ``<code>`` holding ``<code>_sa.nii.gz`` (+ ``_sa_gt``): ED/ES from
                   the collection's information CSV (a ``.csv`` with an ``External code``
                   column among the inputs or in the two folders above the subject), else
                   from its labels (:func:`~ecgcmr.convert.public_cmr.convert_mnms_subject`)
DICOM zip          a zip archive (UK Biobank field 20209 style; :func:`~ecgcmr.convert.
                   cmr_dicom.convert_cmr_zip`)
DICOM series       DICOM Part 10 files (``DICM`` at byte 128) anywhere among the inputs,
                   grouped by ``StudyInstanceUID`` and ``ImageOrientationPatient`` (one stack
                   per study and plane: a study's long-axis views fall into groups of their
                   own and are refused one by one); DICOM that is not an MR image is reported
                   file by file
NIfTI 4D           any other ``.nii``/``.nii.gz``: a cine ``(X, Y, Z, T)``; see below
=================  =========================================================================

**4D NIfTI: ED and ES.** Optional companions beside ``<base>.nii.gz``: label maps
``<base>_seg.nii.gz`` or ``<base>_gt.nii.gz`` (4D, on the cine's grid, OUR convention 0 bg,
1 LV blood, 2 LV myocardium, 3 RV blood; frames without LV blood count as unlabelled) and a
sidecar ``<base>.json`` with ``{"ED": e, "ES": s}`` (**0-based** frame indices, either or
both). ED = the sidecar's ``ED``, else **frame 0** (cines are triggered on the R wave, which
marks end-diastole). ES = the sidecar's ``ES``, else the labelled frame with the **smallest LV
blood pool**, else the **image-based estimate** of
:func:`~ecgcmr.convert.cmr_dicom.estimate_es_frame` (the frame with the fewest bright
blood voxels in the moving-heart region); ED = ES is refused. A 3D volume (one phase), a
single slice, a single frame, or a file name saying long axis
(:func:`~ecgcmr.convert.cmr_dicom.series_view`: ``LA``, ``LAX``, ``4CH`` ...) is refused. The
slice orientation of a NIfTI is *not* tested against the long axis: collections such as ACDC
store no patient orientation in their affines. DICOM inputs are tested
(:mod:`ecgcmr.convert.cmr_dicom`, "Short-axis only").

**Output.** ``<out>/<name>_ed.nii.gz`` and ``_es.nii.gz`` (+ ``_ed_seg`` / ``_es_seg`` where
labels cover those frames), ``<name>`` the input's file or folder name, made safe and unique
in the run; the names :func:`ecgcmr.manifests.folders.build_folder_manifest` matches by
default. ``<out>/convert_report.csv`` lists every input: ``converted`` with ``record`` (the
output prefix ``<out>/<name>``) and in ``reason`` the frames chosen and how, or ``skipped``
with the reason (not a CMR input, a long-axis view, a malformed file ...). A bad or foreign
input is reported and the others go on; a conversion that fails leaves no files behind.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from tqdm.auto import tqdm

from ecgcmr.convert.batch import (
    CONVERTED,
    SKIPPED,
    collect_inputs,
    read_head,
    write_report,
)
from ecgcmr.convert.batch import report_row as _row
from ecgcmr.convert.cmr_dicom import (
    LONG,
    MAX_DICOM_BYTES,
    CmrConversion,
    SaxCine,
    convert_cmr_zip,
    convert_sax_cine,
    estimate_es_frame,
    lv_blood_voxels,
    read_cine_labels,
    read_sax_cine,
    series_view,
)
from ecgcmr.convert.public_cmr import convert_acdc_patient, convert_mnms_subject
from ecgcmr.convert.safe_zip import DEFAULT_MAX_MEMBERS
from ecgcmr.data.cmr import affine_mm
from ecgcmr.errors import DataError, OutputError

ACDC, MNMS, DICOM_ZIP, DICOM_SERIES, NIFTI_4D = ("ACDC patient", "M&Ms subject", "DICOM zip",
                                                 "DICOM series", "NIfTI 4D")
OUTPUT_SUFFIXES = ("_ed.nii.gz", "_es.nii.gz", "_ed_seg.nii.gz", "_es_seg.nii.gz")
LABEL_SUFFIXES = ("_seg", "_gt")   # <base>_seg.nii.gz / <base>_gt.nii.gz beside <base>.nii.gz
_ACDC_INFO = "Info.cfg"
_MNMS_ID_COLUMN = "External code"
_SNIFF_BYTES = 132
_DICOM_MAGIC_AT, _DICOM_MAGIC = 128, b"DICM"
_DICOMDIR = "1.2.840.10008.1.3.10"
_ORIENTATION_GROUP_TOL = 1e-2     # direction cosines: one plane (cmr_dicom checks 1e-3 after)
_MAX_NOTES = 3                    # notes copied into a converted row's reason
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")
_NOT_CMR = ("not a CMR input (expected a DICOM zip or DICOM files of a short-axis cine, an "
            "ACDC patient folder, an M&Ms subject folder or a 4D NIfTI cine)")


@dataclass
class _Item:
    """One input to convert (or one file that is not one) to report."""

    input: Path | str
    format: str = ""
    reason: str = ""                     # set when skipped before conversion
    files: list[Path] = field(default_factory=list)  # DICOM series: its files
    labels: Path | None = None           # NIfTI 4D: <base>_seg / _gt
    sidecar: Path | None = None          # NIfTI 4D: <base>.json
    csv: Path | None = None              # M&Ms: the information CSV
    name: str = ""                       # base of the output names


def convert_cmrs(
    inputs: Iterable[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Convert every short-axis cine among ``inputs`` (files or folders) into ED/ES NIfTI.

    Returns the report (also written to ``out_dir/convert_report.csv``): one row per input
    found, columns :data:`REPORT_COLUMNS` (``status`` ``converted`` with ``record`` the output
    prefix and the frame choice in ``reason``, or ``skipped`` with ``reason``). A bad or
    foreign input is skipped and reported; the others go on. Raises
    :class:`~ecgcmr.errors.OutputError` when the output cannot be written.
    """
    out = Path(out_dir)
    files, rows = collect_inputs(inputs, out)
    items = _classify(files)
    protected = {p.resolve() for p in files}       # never overwrite an input
    taken: set[str] = set()
    for item in tqdm(items, desc="CMRs", unit="input", disable=not progress):
        rows.append(_convert_one(item, out, taken, protected))
    return write_report(rows, out)




# ============================================================================================
# Finding and recognising the inputs
# ============================================================================================




def _classify(files: list[Path]) -> list[_Item]:
    """One item per ACDC patient, M&Ms subject, zip, DICOM stack, 4D NIfTI or foreign file."""
    items: list[_Item] = []
    claimed: set[Path] = set()

    def claim_folder(folder: Path) -> None:
        claimed.update(p for p in files if folder in p.parents)

    for p in files:   # ACDC first: its folder may also hold NIfTI that look like M&Ms'
        if p.name == _ACDC_INFO and p not in claimed:
            items.append(_Item(p.parent, ACDC, name=p.parent.name))
            claim_folder(p.parent)
    mnms = []
    for p in files:
        if p not in claimed and p.name == f"{p.parent.name}_sa.nii.gz":
            mnms.append(item := _Item(p.parent, MNMS, name=p.parent.name))
            items.append(item)
            claim_folder(p.parent)
    rest = [p for p in files if p not in claimed]
    csvs = [p for p in rest if p.suffix.lower() == ".csv" and _is_mnms_csv(p)]
    used = _attach_mnms_csvs(mnms, csvs)
    items.extend(_Item(p, "M&Ms information CSV", reason="an M&Ms information CSV, but none of "
                       "its subjects' folders is among the inputs") for p in csvs if p not in used)
    rest = [p for p in rest if p not in csvs]
    dicoms, niftis, jsons = [], [], []
    for p in rest:
        head = _head(p)
        if head[_DICOM_MAGIC_AT:_DICOM_MAGIC_AT + 4] == _DICOM_MAGIC:
            dicoms.append(p)
        elif p.name.lower().endswith((".nii", ".nii.gz")):
            niftis.append(p)
        elif head.startswith(b"PK") and zipfile.is_zipfile(p):
            items.append(_Item(p, DICOM_ZIP, name=_stem(p)))
        elif p.suffix.lower() == ".json":
            jsons.append(p)
        else:
            items.append(_Item(p, "", reason=_NOT_CMR))
    items.extend(_nifti_items(niftis, jsons))
    items.extend(_dicom_items(dicoms))
    return sorted(items, key=lambda item: str(item.input))


def _head(path: Path) -> bytes:
    return read_head(path, _SNIFF_BYTES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".zip", ".json"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def _is_mnms_csv(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return False
    return _MNMS_ID_COLUMN in header


def _attach_mnms_csvs(subjects: list[_Item], csvs: list[Path]) -> set[Path]:
    """Each M&Ms subject gets the first information CSV (among the inputs, then in the two
    folders above it) that lists its code; returns the input CSVs used."""
    codes: dict[Path, set[str]] = {}

    def codes_of(path: Path) -> set[str]:
        if path not in codes:
            try:
                table = pd.read_csv(path, dtype=str, keep_default_na=False)
                table.columns = [str(c).strip() for c in table.columns]
                codes[path] = set(table[_MNMS_ID_COLUMN].str.strip())
            except Exception:  # noqa: BLE001 - a broken CSV is a CSV that lists no one
                codes[path] = set()
        return codes[path]

    used: set[Path] = set()
    for item in subjects:
        folder = Path(item.input)
        nearby = [c for up in (folder.parent, folder.parent.parent)
                  for c in sorted(up.glob("*.csv")) if _is_mnms_csv(c)]
        for candidate in [*csvs, *nearby]:
            if folder.name in codes_of(candidate):
                item.csv = candidate
                used.add(candidate)
                break
    return used


def _nifti_items(niftis: list[Path], jsons: list[Path]) -> list[_Item]:
    """4D NIfTI cines with their ``_seg``/``_gt`` labels and ``.json`` sidecars."""
    by_base = {(p.parent, _stem(p)): p for p in niftis}
    labels_of: dict[Path, Path] = {}
    for (folder, base), p in by_base.items():
        for suffix in LABEL_SUFFIXES:
            if base.endswith(suffix) and (folder, base[:-len(suffix)]) in by_base:
                labels_of.setdefault(by_base[(folder, base[:-len(suffix)])], p)
    is_label = set(labels_of.values())
    json_of = {(p.parent, _stem(p)): p for p in jsons}
    items, used_json = [], set()
    for (folder, base), p in sorted(by_base.items(), key=lambda kv: str(kv[1])):
        if p in is_label:
            continue
        if base.endswith(LABEL_SUFFIXES):
            items.append(_Item(p, NIFTI_4D, reason="a label map without its cine (expected "
                               f"{base.rsplit('_', 1)[0]}.nii.gz beside it)"))
            continue
        sidecar = json_of.get((folder, base))
        if sidecar is not None:
            used_json.add(sidecar)
        items.append(_Item(p, NIFTI_4D, labels=labels_of.get(p), sidecar=sidecar, name=base))
    items.extend(_Item(p, "JSON", reason=f"{_NOT_CMR}; a JSON sidecar must sit beside its "
                       "<base>.nii.gz as <base>.json") for p in jsons if p not in used_json)
    return items


def _dicom_items(files: list[Path]) -> list[_Item]:
    """DICOM images grouped into one stack per study and plane; other DICOM file by file."""
    groups: dict[str, list[tuple[np.ndarray, list[Path], set[str]]]] = defaultdict(list)
    items = []
    for p in files:
        info = _dicom_header(p)
        if isinstance(info, str):
            items.append(_Item(p, "DICOM", reason=info))
            continue
        study, orientation, description = info
        for ref, members, descriptions in groups[study]:
            if np.abs(ref - orientation).max() <= _ORIENTATION_GROUP_TOL:
                members.append(p)
                descriptions.add(description)
                break
        else:
            groups[study].append((orientation, [p], {description}))
    stacks = [(members, descriptions) for study in groups.values()
              for _, members, descriptions in study]
    folders = [_common_folder(members) for members, _ in stacks]
    for (members, descriptions), folder in zip(stacks, folders, strict=True):
        label: Path | str = folder
        if folders.count(folder) > 1:   # several planes in one folder: say which
            label = f"{folder} [SeriesDescription {', '.join(sorted(descriptions))}]"
        items.append(_Item(label, DICOM_SERIES, files=sorted(members), name=folder.name))
    return items


def _dicom_header(path: Path) -> tuple[str, np.ndarray, str] | str:
    """``(study key, orientation, SeriesDescription)`` of an MR image, else why not one."""
    try:
        if path.stat().st_size > MAX_DICOM_BYTES:
            return f"DICOM file too large for one cine image (over {MAX_DICOM_BYTES} bytes)"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed data
        return f"unreadable DICOM file ({type(exc).__name__}: {exc})"
    meta = getattr(ds, "file_meta", None)
    if str(getattr(meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR:
        return "a DICOMDIR (the index of a DICOM medium): no image"
    modality = ds.get("Modality")
    if modality not in (None, "MR"):
        return f"DICOM, but not an MR image (Modality {modality}): {_NOT_CMR}"
    try:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if orientation.shape != (6,) or not np.isfinite(orientation).all():
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        return "DICOM without a valid ImageOrientationPatient: not an image of a cine stack"
    study = str(ds.get("StudyInstanceUID", "")) or f"folder:{path.parent}"
    return study, orientation, str(ds.get("SeriesDescription", ""))


def _common_folder(paths: list[Path]) -> Path:
    parts = [p.parent.parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path(".")


# ============================================================================================
# Converting
# ============================================================================================


def _convert_one(item: _Item, out: Path, taken: set[str], protected: set[Path]) -> dict:
    if item.reason:
        return _row(item.input, item.format, SKIPPED, reason=item.reason)
    if item.format == DICOM_SERIES and len(item.files) > DEFAULT_MAX_MEMBERS:
        return _row(item.input, item.format, SKIPPED,
                    reason=f"more than {DEFAULT_MAX_MEMBERS} DICOM files in one stack")
    name = _output_name(item.name, out, taken, protected)
    before = {s: (out / f"{name}{s}").exists() for s in OUTPUT_SUFFIXES}
    try:
        how = _CONVERTERS[item.format](item, out, name)
    except (DataError, OSError) as exc:
        for suffix, existed in before.items():   # a failed conversion leaves nothing behind
            if not existed:
                (out / f"{name}{suffix}").unlink(missing_ok=True)
        if isinstance(exc, OSError) and _is_under(exc.filename, out):
            raise OutputError.from_os_error(exc, fallback=out / name) from exc
        if isinstance(exc, OSError):
            return _row(item.input, item.format, SKIPPED,
                        reason=f"cannot read {exc.filename or item.input}: "
                               f"{exc.strerror or exc}")
        return _row(item.input, item.format, SKIPPED, reason=str(exc))
    taken.add(name)
    return _row(item.input, item.format, CONVERTED, record=out / name, reason=how)


def _is_under(filename: object, folder: Path) -> bool:
    if not filename:
        return False
    path = Path(str(filename)).resolve()
    return path == folder.resolve() or folder.resolve() in path.parents


def _output_name(base: str, out: Path, taken: set[str], protected: set[Path]) -> str:
    """``base`` made safe for file names (as cmr_dicom requires), unique among this run's
    outputs and never the name of an input file."""
    safe = _SAFE_NAME.sub("_", base).lstrip("._-")[:120] or "cmr"
    name, k = safe, 1
    while name in taken or any((out / f"{name}{s}").resolve() in protected
                               for s in OUTPUT_SUFFIXES):
        k += 1
        name = f"{safe}_{k}"
    return name


def _frames_text(conversion: CmrConversion, ed_how: str = "frame 0") -> str:
    how = {"labels": "smallest LV blood pool in the labels", "image": "image-based estimate",
           "sidecar": "sidecar"}.get(conversion.es_method, conversion.es_method)
    notes = list(conversion.notes[:_MAX_NOTES])
    if len(conversion.notes) > _MAX_NOTES:
        notes.append(f"{len(conversion.notes) - _MAX_NOTES} more notes")
    return "; ".join([f"ED frame {conversion.ed_frame}, ES frame {conversion.es_frame} "
                      f"(0-based; ED: {ed_how}; ES: {how})", *notes])


def _dicom_zip(item: _Item, out: Path, name: str) -> str:
    return _frames_text(convert_cmr_zip(item.input, out, name))


def _dicom_series(item: _Item, out: Path, name: str) -> str:
    cine = read_sax_cine(item.files, source=str(item.input))
    return _frames_text(convert_sax_cine(cine, out, name))


def _acdc(item: _Item, out: Path, name: str) -> str:
    row = convert_acdc_patient(item.input, out, name=name, subdir="")
    return (f"ED frame {row['source_ed_frame']}, ES frame {row['source_es_frame']} "
            f"(1-based, from {_ACDC_INFO})")


def _mnms(item: _Item, out: Path, name: str) -> str:
    row, how = convert_mnms_subject(item.input, out, csv_path=item.csv, name=name, subdir="")
    return f"ED frame {row['source_ed_frame']}, ES frame {row['source_es_frame']} (0-based; {how})"


def _nifti(item: _Item, out: Path, name: str) -> str:
    """A 4D NIfTI cine (module docstring: the ED/ES rule)."""
    path = Path(item.input)
    if series_view(_stem(path)) == LONG:
        raise DataError("the file name says long axis: not a short-axis stack", path=path,
                        expected="a short-axis cine (SA/SAX)")
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # nibabel: ImageFileError, OSError, EOFError, zlib.error ...
        raise DataError(f"unreadable NIfTI file ({type(exc).__name__}: {exc})",
                        path=path) from exc
    if len(shape) == 5 and shape[4] == 1:
        shape = shape[:4]
    if len(shape) != 4:
        what = "a 3D volume (one phase)" if len(shape) == 3 else f"{len(shape)}D"
        raise DataError(f"{what}: ED and ES need a cine", path=path,
                        expected="a 4D cine (X, Y, Z, T)", found=f"shape {shape}")
    if shape[2] < 2:
        raise DataError("only one slice: not a short-axis stack (a long-axis cine?)", path=path,
                        expected="a stack of >= 2 short-axis slices", found=f"shape {shape}")
    if shape[3] < 2:
        raise DataError("a single frame: not a cine", path=path, expected="T >= 2",
                        found=f"shape {shape}")
    try:
        image = np.asarray(np.asanyarray(img.dataobj), dtype=np.float32).reshape(shape)
    except Exception as exc:  # a truncated file fails here
        raise DataError(f"cannot read the voxel data ({type(exc).__name__}: {exc})",
                        path=path) from exc
    cine = SaxCine(image=image, affine=affine_mm(img, path), trigger_times_ms=None,
                   source=str(path))
    labels = None
    if item.labels is not None:
        try:
            labels = read_cine_labels(item.labels, cine)
        except DataError as exc:
            raise exc.with_context(path=item.labels) from exc
    given = _read_sidecar(item.sidecar) if item.sidecar is not None else {}
    ed = given.get("ED", 0)
    if "ES" in given:
        es, method = given["ES"], "sidecar"
    elif labels:
        volumes = lv_blood_voxels(labels)
        es, method = min(volumes, key=lambda t: (volumes[t], t)), "labels"
    else:
        es, method = estimate_es_frame(cine.image, cine.spacing_mm), "image"
    conversion = convert_sax_cine(cine, out, name, labels_4d=labels, frames=(ed, es, method))
    return _frames_text(conversion, "sidecar" if "ED" in given else "frame 0")


def _read_sidecar(path: Path) -> dict[str, int]:
    """``{"ED": e, "ES": s}`` (0-based, either or both) from a JSON sidecar."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable JSON sidecar ({exc})", path=path,
                        expected='{"ED": <0-based frame>, "ES": <0-based frame>}') from exc
    if not isinstance(data, dict):
        raise DataError("JSON sidecar is not an object", path=path,
                        expected='{"ED": <0-based frame>, "ES": <0-based frame>}')
    frames = {}
    for key, value in data.items():
        upper = str(key).upper()
        if upper not in ("ED", "ES"):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"sidecar {key} is not a whole number", path=path,
                            expected="a 0-based frame index", found=repr(value))
        frames[upper] = value
    return frames


_CONVERTERS: dict[str, Callable[[_Item, Path, str], str]] = {
    DICOM_ZIP: _dicom_zip,
    DICOM_SERIES: _dicom_series,
    ACDC: _acdc,
    MNMS: _mnms,
    NIFTI_4D: _nifti,
}

