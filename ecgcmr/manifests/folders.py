"""Any folders of WFDB records and NIfTI ED/ES volumes -> manifest.

Files are matched to subjects by one regular expression per manifest path column, with a named
group ``id``. Each pattern must match the *whole* path of a file relative to its folder (posix
``/`` separators), so subject subfolders work too (``(?P<id>[^/]+)/sa_ed\\.nii\\.gz``).
The defaults (:data:`DEFAULT_PATTERNS`, case-insensitive, at any depth) cover::

    ecg_dir/<id>.hea (+ its .dat)      cmr_dir/<id>_ed.nii.gz     cmr_dir/<id>_es.nii.gz
    cmr_dir/<id>_ed_seg.nii.gz         cmr_dir/<id>_es_seg.nii.gz (``.nii`` also accepted)

A subject is kept when it has exactly one file for each required column (ECG, CMR ED, CMR ES)
and its ECG header holds the 12 standard leads by name, in any order or case (checked with the
project's own loader, :func:`ecgcmr.data.ecg.read_ecg`, so what passes here loads later).
Without a CMR folder the manifest is ECG-only (only ``ecg_path`` required); without an ECG
folder it is CMR-only (see :data:`ecgcmr.data.manifest.KINDS`).
Everything else is listed in ``build_report.csv`` (subject, file, reason), never dropped
silently: subjects lacking a file, several files for one column, unreadable or incomplete ECGs,
table rows without files, and files that match no pattern (a typo in a name shows up there).

An optional table (CSV or parquet) of phenotypes, outcomes, covariates or a ``split`` is joined
by subject id; its columns follow ``data_manifests/README.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.data.ecg import read_ecg, record_signal_files
from ecgcmr.data.manifest import (
    KIND_PATHS,
    PATH_COLUMNS,
    ManifestError,
    validate_manifest,
)
from ecgcmr.errors import DataError
from ecgcmr.manifests.ukb import BuildReport, write_csv_atomic

_NIFTI = r"\.nii(?:\.gz)?"
#: Default file patterns per manifest column (matched against the path relative to the folder).
DEFAULT_PATTERNS: dict[str, str] = {
    "ecg_path": r"(?i)(?:.*/)?(?P<id>[^/]+)\.hea",
    "cmr_ed_path": rf"(?i)(?:.*/)?(?P<id>[^/]+)_ed{_NIFTI}",
    "cmr_es_path": rf"(?i)(?:.*/)?(?P<id>[^/]+)_es{_NIFTI}",
    "cmr_ed_seg_path": rf"(?i)(?:.*/)?(?P<id>[^/]+)_ed_seg{_NIFTI}",
    "cmr_es_seg_path": rf"(?i)(?:.*/)?(?P<id>[^/]+)_es_seg{_NIFTI}",
}

Found = dict[str, dict[str, list[Path]]]        # column -> subject id -> matching files


def build_folder_manifest(
    ecg_dir: str | Path | None,
    cmr_dir: str | Path | None,
    out_dir: str | Path,
    *,
    table: str | Path | pd.DataFrame | None = None,
    patterns: Mapping[str, str | re.Pattern[str] | None] | None = None,
    id_column: str = "subject_id",
    progress: bool = True,
) -> Path:
    """Match the files of ``ecg_dir`` and ``cmr_dir`` to subjects and write the manifest.

    ``cmr_dir=None`` builds an ECG-only manifest, ``ecg_dir=None`` a CMR-only one.
    ``patterns`` overrides :data:`DEFAULT_PATTERNS` per column (``None`` switches an optional
    label-map column off). ``table`` (a CSV/parquet path or a DataFrame) is joined on
    ``id_column``. Writes ``out_dir/manifest.csv`` (paths relative to ``out_dir``) and
    ``out_dir/build_report.csv``; returns the manifest path. Raises :class:`DataError` for bad
    arguments or when no subject is complete, and :class:`ManifestError` when the result fails
    validation (after writing both files, so they can be inspected).
    """
    if ecg_dir is None and cmr_dir is None:
        raise DataError("no folder given", expected="an ECG folder, a CMR folder or both")
    kind = "paired" if ecg_dir is not None and cmr_dir is not None else \
        "ecg_only" if ecg_dir is not None else "cmr_only"
    ecg_dir = None if ecg_dir is None else Path(ecg_dir)
    cmr_dir, out = None if cmr_dir is None else Path(cmr_dir), Path(out_dir)
    compiled = _compile_patterns(patterns, kind)
    side_table = None if table is None else _read_side_table(table, id_column)
    report = BuildReport()
    found = _match_files(ecg_dir, cmr_dir, compiled, out, report)
    rows = []
    subjects = sorted(set().union(*(found[c] for c in compiled)))
    for sid in tqdm(subjects, desc="subjects", unit="subj", disable=not progress):
        files = _subject_files(sid, found, report, KIND_PATHS[kind])
        if files is not None:
            rows.append({"subject_id": sid,
                         **{col: _relative(path, out, col) for col, path in files.items()}})
    if side_table is not None:
        with_files = set(subjects)
        for sid in side_table["subject_id"]:
            if sid not in with_files:
                report.add(sid, "", "in the table but no file matches this id")
    report.write(out / "build_report.csv")
    return _write_manifest(out, rows, side_table, kind)


# ============================================================================================
# Patterns and matching
# ============================================================================================


def _compile_patterns(
    patterns: Mapping[str, str | re.Pattern[str] | None] | None, kind: str = "paired",
) -> dict[str, re.Pattern[str]]:
    unknown = sorted(set(patterns or {}) - set(PATH_COLUMNS))
    if unknown:
        raise DataError(f"patterns given for unknown column(s): {', '.join(unknown)}",
                        expected=f"some of {', '.join(PATH_COLUMNS)}")
    searched = [c for c in PATH_COLUMNS if kind == "paired"
                or (c == "ecg_path") == (kind == "ecg_only")]   # columns with a folder
    absent = sorted(c for c, p in (patterns or {}).items() if c not in searched and p is not None)
    if absent:
        raise DataError(f"pattern(s) given for {', '.join(absent)} but no folder to search",
                        expected="--ecg-dir for ecg_path, --cmr-dir for the CMR columns")
    merged: dict[str, str | re.Pattern[str] | None] = {
        c: p for c, p in {**DEFAULT_PATTERNS, **(patterns or {})}.items() if c in searched}
    compiled = {}
    for column, pattern in merged.items():
        if pattern is None:
            if column in KIND_PATHS[kind]:
                raise DataError(f"the pattern of required column {column} cannot be switched off")
            continue
        try:
            regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise DataError(f"pattern for {column} is not a regular expression ({exc})",
                            found=repr(pattern)) from exc
        if "id" not in regex.groupindex:
            raise DataError(f"pattern for {column} has no named group 'id'",
                            expected=r"e.g. '(?P<id>[^/]+)\.hea'", found=repr(regex.pattern))
        compiled[column] = regex
    return compiled


def _folder_files(folder: Path, out: Path) -> list[Path]:
    """Files under ``folder``, skipping hidden ones and the builder's own output folder."""
    if not folder.is_dir():
        raise DataError("folder not found", path=folder, expected="a folder of data files")
    out = out.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and out not in path.resolve().parents:
            files.append(path)
    return files


def _match_files(ecg_dir: Path | None, cmr_dir: Path | None,
                 patterns: Mapping[str, re.Pattern[str]], out: Path, report: BuildReport
                 ) -> Found:
    """Every file matched to (column, subject id); files matching no pattern are reported."""
    columns_in: dict[Path, list[str]] = {}   # a folder -> the columns searched in it
    for column in patterns:
        folder = ecg_dir if column == "ecg_path" else cmr_dir
        columns_in.setdefault(folder, []).append(column)
    found: Found = {column: {} for column in patterns}
    unmatched: list[Path] = []
    for folder, columns in columns_in.items():
        for path in _folder_files(folder, out):
            column, sid = _first_match(path.relative_to(folder).as_posix(), columns, patterns)
            if column is None:
                unmatched.append(path)
            else:
                found[column].setdefault(sid, []).append(path)
    # a record's own signal files (.dat, CinC .mat, PTB .xyz ...) belong to its header
    own = {(hea.parent / name).resolve() for files in found.get("ecg_path", {}).values()
           for hea in files for name in record_signal_files(hea)}
    for path in unmatched:
        if path.resolve() not in own:
            report.add("", path, "matches no file pattern; ignored")
    return found


def _first_match(rel: str, columns: list[str], patterns: Mapping[str, re.Pattern[str]]
                 ) -> tuple[str | None, str]:
    """The first column (in manifest order) whose pattern matches ``rel``, and the id."""
    for column in columns:
        match = patterns[column].fullmatch(rel)
        if match and match["id"]:
            return column, match["id"]
    return None, ""


def _subject_files(sid: str, found: Found, report: BuildReport, required: tuple[str, ...]
                   ) -> dict[str, Path] | None:
    """The subject's file per column, or None (with the reasons reported) if it is left out."""
    files: dict[str, Path] = {}
    complete = True
    for column, by_id in found.items():
        matches = by_id.get(sid, [])
        if len(matches) > 1:
            complete = False
            for path in matches:
                report.add(sid, path, f"{len(matches)} files match {column} for this subject")
        elif matches:
            files[column] = matches[0]
        elif column in required:
            complete = False
            report.add(sid, "", f"no file for required column {column}")
    if "ecg_path" in files and not _has_twelve_leads(sid, files["ecg_path"], report):
        complete = False
    return files if complete else None


def _has_twelve_leads(sid: str, header: Path, report: BuildReport) -> bool:
    """Whether the record loads with all 12 leads (by name, any order/case, units known)."""
    try:
        read_ecg(header)
    except DataError as exc:
        report.add(sid, header, exc.problem + (f" (found {exc.found})" if exc.found else ""))
        return False
    return True


def _relative(path: Path, out: Path, column: str) -> str:
    """``path`` relative to the manifest folder; an ECG as its record name (no ``.hea``)."""
    if column == "ecg_path":
        path = path.with_suffix("")
    return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()


# ============================================================================================
# The side table and the manifest
# ============================================================================================


def _read_side_table(table: str | Path | pd.DataFrame, id_column: str) -> pd.DataFrame:
    """The phenotype/outcome/covariate table with ``subject_id`` as text; checked."""
    source: str | Path = "(table)"
    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        source = Path(table)
        if not source.is_file():
            raise DataError("table not found", path=source, expected="a CSV or parquet file")
        try:
            df = (pd.read_parquet(source) if source.suffix.lower() == ".parquet"
                  else pd.read_csv(source, dtype={id_column: str}))
        except (ValueError, OSError) as exc:
            raise DataError(f"table could not be read: {exc}", path=source) from exc
    if id_column not in df.columns:
        raise DataError(f"table has no id column {id_column!r}", path=source,
                        found=f"columns {', '.join(map(str, df.columns))}")
    clashing = [c for c in df.columns if c in PATH_COLUMNS]
    if clashing:
        raise DataError(f"table holds path column(s) {', '.join(clashing)}; paths come from "
                        "the files found", path=source, expected="values only")
    df = df.rename(columns={id_column: "subject_id"})
    df["subject_id"] = df["subject_id"].astype(str).str.strip()
    duplicated = sorted(set(df.loc[df["subject_id"].duplicated(), "subject_id"]))
    if duplicated:
        raise DataError(f"table lists subject(s) more than once: {', '.join(duplicated[:10])}",
                        path=source, expected="one row per subject")
    return df


def _write_manifest(out: Path, rows: list[dict[str, str]], side_table: pd.DataFrame | None,
                    kind: str = "paired") -> Path:
    if not rows:
        what = "a valid ECG" if kind == "ecg_only" else "all required files" + (
            " with a valid ECG" if kind == "paired" else "")
        raise DataError(f"no subject has {what}; see build_report.csv for why",
                        path=out / "build_report.csv")
    manifest = pd.DataFrame(rows)
    manifest = manifest[["subject_id", *[c for c in PATH_COLUMNS if c in manifest.columns]]]
    if side_table is not None:
        manifest = manifest.merge(side_table, on="subject_id", how="left")
    path = out / "manifest.csv"
    write_csv_atomic(manifest, path)
    problems = validate_manifest(pd.read_csv(path, dtype={"subject_id": str}), root=out,
                                 kind=kind)
    if problems:
        raise ManifestError(path, problems)
    return path
