"""The preprocessing cache: every subject's model-ready arrays, built once, memory-mapped.

Training reads tens of thousands of (ECG, ED, ES) triples per epoch; decoding WFDB and
resampling NIfTI each time would starve any GPU. A cache folder holds them preprocessed::

    spec.json        the preprocessing settings; a cache holds exactly one spec
    ecg.bin          rows of (12, 5000)  preprocessed ECG (z-scored by default), spec.dtype
    cmr_ed.bin       rows of (D, H, W)   ED volume on the fixed grid, intensities normalised
    cmr_es.bin       rows of (D, H, W)   ES volume
    entries.jsonl    one line per subject ever preprocessed here: its input key, its row or
                     its QC problems, and its input files (path, size, mtime, sha256)
    index.csv        the current manifest's rows + ``row``, ``ok``, ``has_ecg``, ``has_cmr``,
                     ``input_key`` and ``input_files`` (each file's path, size and mtime when it
                     was hashed)
    qc_report.csv    the current manifest's rejected records: subject_id, modality, file, reason

A subject without an ECG (a CMR-only manifest) or without CMR (an ECG-only manifest) gets a row
of zeros in the fields it lacks; ``has_ecg`` / ``has_cmr`` say so, and no dataset serves those
zeros (:class:`ecgcmr.data.dataset.PairedDataset`).

Integrity, the rules this module exists to keep:

* **Arrays are addressed by what they were made from, never by position.** A subject's
  *input key* is the sha256 of the cache format, the spec, its subject id and the sha256 of the
  content of every input file (the WFDB header and signal files, the volumes, the label maps).
  A re-sorted, extended or shrunk manifest reuses exactly the subjects whose key is already
  here and preprocesses the rest; an edited file (same path, new content) gets a new key and
  is rebuilt. Row numbers are storage only.
* **Rows are append-only**: a committed row never changes, so anything derived from rows (the
  stage-C trunk features) stays true for as long as the cache exists. Rows of subjects that
  left the manifest stay as unreferenced storage.
* **Commit order**: rows are appended to the ``.bin`` files and fsynced, then their entry
  lines are appended to ``entries.jsonl`` and fsynced. A crash or a full disk can leave rows
  past the last committed entry, or a torn last line; both are cut off when the cache is next
  opened for writing, so nothing half written is ever read as good. Free space is checked
  before a build starts.
* **One bad record never stops a build**: any exception while loading one subject, expected
  or not, becomes a QC row with its type and message. Only the output failing (disk full, a
  read-only folder) stops it, as :class:`~ecgcmr.errors.OutputError` naming the path.
* **A cache that cannot prove it matches refuses** (:func:`check_matches`): opened for a
  manifest, every subject, path and file (size and modification time) must be what the build
  saw, else a :class:`DataError` says what differs and how to rebuild (which reuses everything
  unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.constants import ECG_N_SAMPLES, LEADS
from ecgcmr.data.cmr import (
    CmrGrid,
    center_from_labels,
    check_phase_pair,
    heart_center,
    load_cmr_canonical,
    load_labels_canonical,
    to_grid,
)
from ecgcmr.data.ecg import EcgPreprocessing, load_ecg, preprocess_ecg, record_signal_files
from ecgcmr.data.manifest import sha256_file
from ecgcmr.errors import DataError, OutputError
from ecgcmr.files import exclusive, write_text_atomic
from ecgcmr.parallel import map_subjects

#: Bump whenever loading, QC or preprocessing code changes what a row holds or which records
#: are rejected: every key changes with it, so no row made by older code is ever reused.
CACHE_FORMAT = 2
FIELDS: tuple[str, ...] = ("ecg", "cmr_ed", "cmr_es")
#: Manifest columns whose files a subject's rows are made from.
INPUT_COLUMNS: tuple[str, ...] = ("ecg_path", "cmr_ed_path", "cmr_es_path", "cmr_ed_seg_path",
                                  "cmr_es_seg_path")
_COMMIT_EVERY = 64          # subjects between commits (fsync of rows, then of their entries)
_SPACE_MARGIN_BYTES = 64 << 20   # free space kept beyond the rows a build will append


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

    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one subject's array in each field."""
        return {"ecg": (len(LEADS), ECG_N_SAMPLES), "cmr_ed": self.grid.shape,
                "cmr_es": self.grid.shape}

    def field_bytes(self, name: str) -> int:
        """Bytes of one subject's array in field ``name``."""
        return int(np.prod(self.row_shapes()[name])) * np.dtype(self.dtype).itemsize

    def row_bytes(self) -> int:
        """Bytes one subject adds to the cache (all fields)."""
        return sum(self.field_bytes(name) for name in FIELDS)


@dataclass
class Cache:
    """An open cache: memory-mapped arrays plus the subject index."""

    root: Path
    index: pd.DataFrame          # one row per manifest subject; ``row`` indexes the arrays
    ecg: np.ndarray              # (rows, 12, 5000)
    cmr_ed: np.ndarray           # (rows, D, H, W)
    cmr_es: np.ndarray           # (rows, D, H, W)
    qc_report: pd.DataFrame

    def rows(self, split: str | None = None) -> pd.DataFrame:
        """Subjects that passed QC, optionally of one split."""
        ok = self.index[self.index["ok"]]
        return ok if split is None else ok[ok["split"] == split]

    def content_key(self) -> str:
        """sha256 of what the cache holds for its manifest: every subject's id, split, QC
        verdict and input key (its files' content and the preprocessing), in order. Paths,
        machines and folder names do not enter it: two caches with one key hold the same
        arrays for the same subjects (what shipped weights check they were trained on)."""
        lines = (f"{r.subject_id}|{r.split}|{bool(r.ok)}|{r.input_key}"
                 for r in self.index.itertuples())
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def arrays_of(self, subject_id: str) -> dict[str, np.ndarray]:
        """One subject's arrays by field, found through its id (never a row position)."""
        match = self.index[self.index["subject_id"] == str(subject_id)]
        if len(match) != 1 or not match["ok"].iloc[0]:
            raise KeyError(f"subject {subject_id} is not in the cache or failed QC")
        row = int(match["row"].iloc[0])
        return {f: getattr(self, f)[row] for f in FIELDS}


# ============================================================================================
# Opening
# ============================================================================================


def open_cache(cache_dir: str | Path, manifest: pd.DataFrame | None = None) -> Cache:
    """Open a finished cache read-only (arrays are memory-mapped, nothing is loaded).

    With ``manifest`` (what :func:`ecgcmr.data.read_manifest` returns), the cache must be the
    one built for it: see :func:`check_matches`.
    """
    root = Path(cache_dir)
    _refuse_old_format(root)
    if not (root / "index.csv").is_file():
        raise DataError("not a finished preprocessing cache (no index.csv); "
                        "build it with `ecgcmr preprocess` or notebook 01", path=root)
    spec = read_spec(root)
    index = pd.read_csv(root / "index.csv", dtype={"subject_id": str, "input_key": str})
    qc = pd.read_csv(root / "qc_report.csv", dtype={"subject_id": str})
    n_rows = _committed_rows(_read_entries(root)[0])
    cache = Cache(root=root, index=index, qc_report=qc,
                  **{f: _map(root, f, spec, n_rows) for f in FIELDS})
    if manifest is not None:
        check_matches(cache, manifest)
    return cache


def _map(root: Path, name: str, spec: CacheSpec, n_rows: int) -> np.ndarray:
    shape = (n_rows, *spec.row_shapes()[name])
    if n_rows == 0:   # numpy cannot map an empty file
        return np.zeros(shape, dtype=spec.dtype)
    return np.memmap(root / f"{name}.bin", dtype=spec.dtype, mode="r", shape=shape)


def check_matches(cache: Cache, manifest: pd.DataFrame) -> None:
    """Raise :class:`DataError` unless ``cache`` was built from ``manifest`` as it is now.

    Compared: the subjects and their order, every input path, and every input file's size and
    modification time against what the build hashed (a stat per file: cheap enough to run
    each time a notebook opens the cache; the build itself compares content hashes).
    """
    where = manifest.attrs.get("manifest_path", "the manifest")
    rebuild = (f"rerun `ecgcmr preprocess --manifest {where}` (or notebook 01): it reuses "
               "every subject whose files are unchanged")
    index = cache.index
    if list(index["subject_id"]) != [str(s) for s in manifest["subject_id"]]:
        ids_now, ids_then = set(manifest["subject_id"].astype(str)), set(index["subject_id"])
        raise DataError(
            f"the cache was built for another version of the manifest: "
            f"{len(ids_now - ids_then)} subject(s) added, {len(ids_then - ids_now)} removed"
            f"{', or the rows re-ordered' if ids_now == ids_then else ''}; {rebuild}",
            path=cache.root)
    for rec, built in zip(manifest.to_dict("records"), index.to_dict("records"), strict=True):
        sid = str(rec["subject_id"])
        for col in INPUT_COLUMNS:
            if _path_or_none(rec.get(col)) != _path_or_none(built.get(col)):
                raise DataError(f"{col} changed since the cache was built "
                                f"(was {built.get(col)!r}); {rebuild}",
                                subject=sid, path=rec.get(col))
        for path, size, mtime_ns in json.loads(built["input_files"]):
            if _stat(Path(path)) != (None if size is None else (size, mtime_ns)):
                raise DataError(f"input file changed since the cache was built; {rebuild}",
                                subject=sid, path=path)


def _refuse_old_format(root: Path) -> None:
    if (root / "ecg.npy").is_file():
        raise DataError("this cache folder was built by an earlier ecgcmr, which addressed "
                        "arrays by row position (a re-sorted manifest could read another "
                        "subject's arrays); delete the folder and rebuild it with "
                        "`ecgcmr preprocess` or notebook 01", path=root)


# ============================================================================================
# Building
# ============================================================================================


def build_cache(
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    spec: CacheSpec = CacheSpec(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> Cache:
    """Preprocess every subject of a (validated) manifest into ``cache_dir``; resumable.

    ``manifest`` is what :func:`ecgcmr.data.read_manifest` returns (absolute paths). Subjects
    whose input key is already in the cache are reused, the others preprocessed; ``index.csv``
    and ``qc_report.csv`` then describe exactly this manifest.
    """
    root = Path(cache_dir)
    try:
        with exclusive(root):
            _build(manifest, root, spec, workers, progress)
    except OSError as exc:   # the output failed: nothing about any record
        raise OutputError.from_os_error(exc, fallback=root) from exc
    return open_cache(root, manifest)


def _build(manifest: pd.DataFrame, root: Path, spec: CacheSpec, workers: int,
           progress: bool) -> None:
    _refuse_old_format(root)
    _claim(root, spec)
    records = manifest.to_dict("records")
    prints = list(tqdm(map_subjects(_fingerprint_packed, ((r, spec) for r in records), workers,
                                    chunksize=16),
                       total=len(records), desc="hashing inputs", unit="subj",
                       disable=not progress))
    with _Store(root, spec) as store:
        todo = [i for i, (key, _) in enumerate(prints) if key not in store.entries]
        _check_free_space(root, len(todo) * spec.row_bytes())
        jobs = ((records[i], spec) for i in todo)
        results = map_subjects(_preprocess_guarded, jobs, workers, chunksize=4)
        for i, (arrays, problems) in tqdm(zip(todo, results, strict=True), total=len(todo),
                                          desc="preprocessing", unit="subj",
                                          disable=not progress):
            key, inputs = prints[i]
            store.add(key, str(records[i]["subject_id"]), inputs, arrays, problems)
        store.commit()
        _write_index(root, manifest, prints, store.entries)


def _fingerprint_packed(job: tuple[dict, CacheSpec]) -> tuple[str, dict]:
    return fingerprint(*job)


def _preprocess_guarded(job: tuple[dict, CacheSpec]) -> tuple:
    """:func:`preprocess_subject`, with any exception it did not expect turned into a QC
    problem: one record nobody anticipated must not stop a build of thousands."""
    record, spec = job
    try:
        return preprocess_subject(record, spec)
    except Exception as exc:  # noqa: BLE001 - reported per record, never swallowed
        return None, [{"modality": "subject", "file": "",
                       "reason": f"subject {record.get('subject_id')}: unexpected "
                                 f"{type(exc).__name__} while preprocessing: {exc}"}]


def _check_free_space(root: Path, needed: int) -> None:
    free = shutil.disk_usage(root).free
    if needed and free < needed + _SPACE_MARGIN_BYTES:
        raise OutputError(f"not enough free disk space for the cache: the new rows need "
                          f"{(needed + _SPACE_MARGIN_BYTES) / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB is free", path=root)


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
    if not has_cmr(record):   # an ECG-only manifest: zeros that no CMR dataset ever reads
        if problems:
            return None, problems
        empty = np.zeros(spec.grid.shape, dtype=np.float32)
        return (ecg, empty, empty), []
    ed = attempt("cmr_ed", record["cmr_ed_path"],
                 lambda: load_cmr_canonical(record["cmr_ed_path"], subject=sid))
    es = attempt("cmr_es", record["cmr_es_path"],
                 lambda: load_cmr_canonical(record["cmr_es_path"], subject=sid))
    if ed is not None and es is not None:   # both phases are cropped around one centre
        es = attempt("cmr_es", record["cmr_es_path"], lambda: check_phase_pair(
            ed, es, subject=sid, es_path=record["cmr_es_path"]))
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
    return _path_or_none(record.get("ecg_path")) is not None


def has_cmr(record: dict[str, object]) -> bool:
    """Whether a manifest row names CMR (ECG-only manifests leave the CMR paths empty or out).

    A row with one phase only counts as having CMR: the missing phase is then a QC problem.
    """
    return any(_path_or_none(record.get(c)) is not None for c in ("cmr_ed_path", "cmr_es_path"))


def _heart_center(record: dict[str, object], ed, es) -> tuple[float, float, float]:  # noqa: ANN001
    """From the ED label map when the manifest has one, else estimated from the images."""
    seg = _path_or_none(record.get("cmr_ed_seg_path"))
    if seg is not None:
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


def read_spec(root: Path) -> CacheSpec:
    """The preprocessing settings a cache folder was built with (its ``spec.json``)."""
    raw = json.loads((root / "spec.json").read_text())
    return CacheSpec(ecg=EcgPreprocessing(**raw["ecg"]),
                     grid=CmrGrid(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in raw["grid"].items()}),
                     dtype=raw["dtype"])


# ============================================================================================
# Input keys
# ============================================================================================


def fingerprint(record: dict[str, object], spec: CacheSpec) -> tuple[str, dict[str, list]]:
    """``(input_key, inputs)`` of one manifest row.

    ``inputs`` maps each input column to its files, each ``{path, size, mtime_ns, sha256}``
    (``{path, missing: True}`` for a file that does not exist: the loader reports it, and the
    key changes once the file appears). The key covers the content, not the path: a moved but
    unchanged file keeps its rows.
    """
    inputs = {col: [_describe(f) for f in input_files(record, col)]
              for col in INPUT_COLUMNS if _path_or_none(record.get(col)) is not None}
    key_material = {
        "format": CACHE_FORMAT, "spec": spec.to_json(), "subject_id": str(record["subject_id"]),
        "inputs": {col: [f.get("sha256", "missing") for f in files]
                   for col, files in inputs.items()},
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()
    return key, inputs


def input_files(record: dict[str, object], column: str) -> list[Path]:
    """The files a manifest cell stands for: a WFDB record is its header and the signal files
    the header names; anything else is the one file."""
    path = Path(str(record[column]))
    if column != "ecg_path":
        return [path]
    base = path.with_suffix("") if path.suffix in (".hea", ".dat") else path
    hea = base.with_name(base.name + ".hea")
    if not hea.is_file():
        return [path]
    return [hea, *(base.parent / name for name in record_signal_files(hea))]


def _describe(path: Path) -> dict[str, object]:
    try:
        size, mtime_ns = _stat(path)
        return {"path": str(path), "size": size, "mtime_ns": mtime_ns,
                "sha256": sha256_file(path)}
    except OSError:
        return {"path": str(path), "missing": True}


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns



def _path_or_none(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value)
    return text or None


# ============================================================================================
# The append-only store
# ============================================================================================


class _Store:
    """The ``.bin`` row files and ``entries.jsonl``, opened for appending (see the module
    docstring for the commit order)."""

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.root, self.spec = root, spec
        entries, good_bytes = _read_entries(root)
        self.entries: dict[str, dict] = {e["key"]: e for e in entries}
        n_rows = _committed_rows(entries)
        self._next_row = n_rows                              # rows written, committed or not
        self._pending: list[dict] = []
        log = root / "entries.jsonl"
        if log.is_file() and log.stat().st_size != good_bytes:
            os.truncate(log, good_bytes)                      # a torn last line
        self._files = {}
        for name in FIELDS:
            path = root / f"{name}.bin"
            path.touch()
            committed = n_rows * spec.field_bytes(name)
            size = path.stat().st_size
            if size < committed:
                raise DataError(f"cache damaged: {name}.bin holds fewer rows than "
                                f"entries.jsonl commits; delete the folder and rebuild",
                                path=path, expected=f">= {committed} bytes",
                                found=f"{size} bytes")
            os.truncate(path, committed)                      # rows nobody committed
            fh = open(path, "r+b")  # noqa: SIM115 - closed in __exit__
            fh.seek(committed)
            self._files[name] = fh

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in self._files.values():
            fh.close()

    def add(self, key: str, subject_id: str, inputs: dict, arrays: tuple | None,
            problems: list[dict[str, str]]) -> None:
        entry = {"key": key, "subject_id": subject_id, "row": None, "problems": problems,
                 "inputs": inputs}
        if arrays is not None:
            for name, array in zip(FIELDS, arrays, strict=True):
                data = np.ascontiguousarray(array, dtype=self.spec.dtype)
                if data.shape != self.spec.row_shapes()[name]:
                    raise ValueError(f"{name} row of {subject_id} has shape {data.shape}")
                self._files[name].write(data.tobytes())
            entry["row"] = self._next_row
            self._next_row += 1
        self._pending.append(entry)
        if len(self._pending) >= _COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        """Rows to disk first, then the entries that point at them."""
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.root / "entries.jsonl", "a") as log:
            log.writelines(json.dumps(e) + "\n" for e in self._pending)
            log.flush()
            os.fsync(log.fileno())
        for e in self._pending:
            self.entries[e["key"]] = e
        self._pending = []


def _read_entries(root: Path) -> tuple[list[dict], int]:
    """The committed entries and the byte length of the log's well-formed part (a torn last
    line, from a crash mid-write, is not part of it)."""
    log = root / "entries.jsonl"
    if not log.is_file():
        return [], 0
    entries, good = [], 0
    with open(log, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
    return entries, good


def _committed_rows(entries: list[dict]) -> int:
    rows = sorted(e["row"] for e in entries if e["row"] is not None)
    if rows != list(range(len(rows))):
        raise DataError("cache damaged: entries.jsonl does not number its rows 0, 1, 2, ...; "
                        "delete the folder and rebuild")
    return len(rows)


def _write_index(root: Path, manifest: pd.DataFrame, prints: list[tuple[str, dict]],
                 entries: dict[str, dict]) -> None:
    keys = [key for key, _ in prints]
    rows = [entries[k]["row"] for k in keys]
    index = manifest.copy()
    index.insert(1, "row", [-1 if r is None else r for r in rows])
    index.insert(2, "ok", [r is not None for r in rows])
    index.insert(3, "has_ecg", [has_ecg(r) for r in manifest.to_dict("records")])
    index.insert(4, "has_cmr", [has_cmr(r) for r in manifest.to_dict("records")])
    index.insert(5, "input_key", keys)
    index["input_files"] = [json.dumps([[f["path"], f.get("size"), f.get("mtime_ns")]
                                        for files in inputs.values() for f in files])
                            for _, inputs in prints]
    # atomic: other runs may be reading the index of this shared cache right now
    write_text_atomic(root / "index.csv", index.to_csv(index=False))
    qc_rows = [{"subject_id": entries[k]["subject_id"], **problem}
               for k in keys for problem in entries[k]["problems"]]
    write_text_atomic(root / "qc_report.csv", pd.DataFrame(
        qc_rows, columns=["subject_id", "modality", "file", "reason"]).to_csv(index=False))
