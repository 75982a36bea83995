"""The preprocessing cache: every subject's model-ready arrays, built once, memory-mapped.

Training reads tens of thousands of (ECG, ED, ES) triples per epoch; decoding WFDB and
resampling NIfTI each time would starve any GPU. The cache holds them preprocessed in three
``.npy`` files that ``numpy.load(mmap_mode="r")`` maps without reading them into memory::

    spec.json        what the arrays were made with (preprocessing parameters, grid, dtype)
    ecg.npy          (N, 12, 5000)  preprocessed ECG (z-scored by default)
    cmr_ed.npy       (N, D, H, W)   ED volume on the fixed grid, intensities normalised
    cmr_es.npy       (N, D, H, W)   ES volume
    index.csv        the manifest's rows + ``row`` (array index) + ``ok`` (passed QC)
    qc_report.csv    every rejected record: subject_id, modality, file, reason
    status.json      per-subject progress, so an interrupted build resumes

A record that fails QC is reported in ``qc_report.csv`` and left out (``ok`` = False); the
build continues. Nothing is silently used: the arrays of a rejected subject stay zero and the
dataset never serves them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.constants import ECG_N_SAMPLES, LEADS
from ecgcmr.data.cmr import (
    CmrGrid,
    center_from_labels,
    heart_center,
    load_cmr_canonical,
    load_labels_canonical,
    to_grid,
)
from ecgcmr.data.ecg import EcgPreprocessing, load_ecg, preprocess_ecg
from ecgcmr.errors import DataError
from ecgcmr.files import exclusive, write_text_atomic
from ecgcmr.parallel import map_subjects

_CHECKPOINT_EVERY = 64  # subjects between progress checkpoints (flush arrays + status)
_OK = "ok"


@dataclass(frozen=True)
class CacheSpec:
    """How records become model-ready arrays; the cache is valid for exactly one spec."""

    ecg: EcgPreprocessing = field(default_factory=EcgPreprocessing)
    grid: CmrGrid = field(default_factory=CmrGrid)
    # float16 halves disk and read bandwidth; values are z-scored ECG / [0, 1] images, for
    # which float16's ~3 significant digits are far below the noise. Models compute in fp32.
    dtype: str = "float16"

    def to_json(self) -> dict[str, object]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Cache:
    """An open cache: memory-mapped arrays plus the subject index."""

    root: Path
    index: pd.DataFrame          # one row per manifest subject; ``row`` indexes the arrays
    ecg: np.ndarray              # (N, 12, 5000)
    cmr_ed: np.ndarray           # (N, D, H, W)
    cmr_es: np.ndarray           # (N, D, H, W)
    qc_report: pd.DataFrame

    def rows(self, split: str | None = None) -> pd.DataFrame:
        """Subjects that passed QC, optionally of one split."""
        ok = self.index[self.index["ok"]]
        return ok if split is None else ok[ok["split"] == split]


def open_cache(cache_dir: str | Path) -> Cache:
    """Open a finished cache read-only (arrays are memory-mapped, nothing is loaded)."""
    root = Path(cache_dir)
    if not (root / "index.csv").is_file():
        raise DataError("not a finished preprocessing cache (no index.csv); "
                        "build it with `ecgcmr preprocess` or notebook 01", path=root)
    index = pd.read_csv(root / "index.csv", dtype={"subject_id": str})
    qc = pd.read_csv(root / "qc_report.csv", dtype={"subject_id": str})
    arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r")
              for name in ("ecg", "cmr_ed", "cmr_es")}
    return Cache(root=root, index=index, qc_report=qc, **arrays)


def build_cache(
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    spec: CacheSpec = CacheSpec(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> Cache:
    """Preprocess every subject of a (validated) manifest into ``cache_dir``; resumable.

    ``manifest`` is what :func:`ecgcmr.data.read_manifest` returns (absolute paths).
    """
    root = Path(cache_dir)
    with exclusive(root):
        _build(manifest, root, spec, workers, progress)
    return open_cache(root)


def _build(manifest: pd.DataFrame, root: Path, spec: CacheSpec, workers: int,
           progress: bool) -> None:
    _claim(root, spec)
    n = len(manifest)
    arrays = _open_arrays(root, n, spec)
    status = _read_status(root)
    todo = [i for i, sid in enumerate(manifest["subject_id"]) if sid not in status]
    records = manifest.to_dict("records")
    jobs = ((records[i], spec) for i in todo)
    bar = tqdm(total=len(todo), desc="preprocessing", unit="subj", disable=not progress)
    with bar:
        for k, (i, (result, problems)) in enumerate(zip(todo, map_subjects(_preprocess_packed, jobs, workers, chunksize=4), strict=True)):
            sid = records[i]["subject_id"]
            if problems:
                status[sid] = problems
            else:
                for name, array in zip(("ecg", "cmr_ed", "cmr_es"), result, strict=True):
                    arrays[name][i] = array
                status[sid] = _OK
            bar.update()
            if (k + 1) % _CHECKPOINT_EVERY == 0:
                _checkpoint(root, arrays, status)
    _checkpoint(root, arrays, status)
    _write_index(root, manifest, status)


def _preprocess_packed(job: tuple[dict, CacheSpec]) -> tuple:
    return preprocess_subject(*job)


def preprocess_subject(
    record: dict[str, object], spec: CacheSpec
) -> tuple[tuple[np.ndarray, ...] | None, list[dict[str, str]]]:
    """Load and preprocess one subject; returns ``((ecg, ed, es), [])`` or ``(None, problems)``.

    Each modality is tried even when another failed, so the QC report lists every problem of
    the subject at once.
    """
    sid = str(record["subject_id"])
    problems: list[dict[str, str]] = []

    def attempt(modality: str, file: object, load):  # noqa: ANN001, ANN202 - local helper
        try:
            return load()
        except DataError as exc:
            problems.append({"modality": modality, "file": str(file), "reason": str(exc)})
            return None

    if has_ecg(record):
        ecg = attempt("ecg", record["ecg_path"], lambda: preprocess_ecg(
            load_ecg(record["ecg_path"], subject=sid), spec.ecg))
    else:   # a CMR-only manifest (e.g. ACDC): zeros that no ECG dataset ever reads
        ecg = np.zeros((len(LEADS), ECG_N_SAMPLES), dtype=np.float32)
    ed = attempt("cmr_ed", record["cmr_ed_path"],
                 lambda: load_cmr_canonical(record["cmr_ed_path"], subject=sid))
    es = attempt("cmr_es", record["cmr_es_path"],
                 lambda: load_cmr_canonical(record["cmr_es_path"], subject=sid))
    if ed is not None and es is not None:
        center = attempt("cmr_ed", record["cmr_ed_path"], lambda: _heart_center(record, ed, es))
        if center is not None:
            ed = to_grid(ed, spec.grid, center_vox=center)
            es = to_grid(es, spec.grid, center_vox=center)
    if problems:
        return None, problems
    return (ecg, ed, es), []


def has_ecg(record: dict[str, object]) -> bool:
    """Whether a manifest row names an ECG (CMR-only manifests leave ``ecg_path`` empty)."""
    path = record.get("ecg_path")
    return isinstance(path, str | Path) and str(path) != ""


def _heart_center(record: dict[str, object], ed, es) -> tuple[float, float, float]:  # noqa: ANN001
    """From the ED label map when the manifest has one, else estimated from the images."""
    seg = record.get("cmr_ed_seg_path")
    if isinstance(seg, str) and seg:
        labels = load_labels_canonical(seg, subject=str(record["subject_id"]), like=ed)
        return center_from_labels(labels.array)
    return heart_center(ed.array, es.array, spacing_mm=ed.spacing_mm)


def _claim(root: Path, spec: CacheSpec) -> None:
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "spec.json"
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != spec.to_json():
            raise DataError("cache folder was built with other preprocessing settings; "
                            "use a new cache folder", path=marker,
                            expected=json.dumps(spec.to_json()), found=json.dumps(found))
    else:
        write_text_atomic(marker, json.dumps(spec.to_json(), indent=2))


def _open_arrays(root: Path, n: int, spec: CacheSpec) -> dict[str, np.ndarray]:
    shapes = {"ecg": (n, len(LEADS), ECG_N_SAMPLES),
              "cmr_ed": (n, *spec.grid.shape), "cmr_es": (n, *spec.grid.shape)}
    arrays = {}
    for name, shape in shapes.items():
        file = root / f"{name}.npy"
        if file.is_file():
            arr = np.load(file, mmap_mode="r+")
            if arr.shape != shape:
                raise DataError("cache array has the wrong shape for this manifest; "
                                "use a new cache folder", path=file,
                                expected=str(shape), found=str(arr.shape))
        else:
            arr = np.lib.format.open_memmap(file, mode="w+", dtype=spec.dtype, shape=shape)
        arrays[name] = arr
    return arrays


def _read_status(root: Path) -> dict[str, object]:
    file = root / "status.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _checkpoint(root: Path, arrays: dict[str, np.ndarray], status: dict[str, object]) -> None:
    # arrays first: a subject is marked done only once its data is on disk
    for arr in arrays.values():
        arr.flush()
    write_text_atomic(root / "status.json", json.dumps(status))


def _write_index(root: Path, manifest: pd.DataFrame, status: dict[str, object]) -> None:
    index = manifest.copy()
    index.insert(1, "row", np.arange(len(index)))
    index.insert(2, "ok", [status.get(s) == _OK for s in index["subject_id"]])
    index.insert(3, "has_ecg", [has_ecg(r) for r in manifest.to_dict("records")])
    # atomic: other runs may be reading the index of this shared cache right now
    index.to_csv(root / "index.csv.tmp", index=False)
    os.replace(root / "index.csv.tmp", root / "index.csv")
    qc_rows = [{"subject_id": sid, **problem}
               for sid, value in status.items() if value != _OK for problem in value]
    pd.DataFrame(qc_rows, columns=["subject_id", "modality", "file", "reason"]).to_csv(
        root / "qc_report.csv", index=False)

