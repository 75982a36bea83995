"""The manifest: one row per subject, validated on load.

A manifest (CSV or parquet) lists, per subject, the ECG record, the CMR volumes at ED and ES,
optional label maps, phenotypes, outcomes, covariates and the split. Paths are relative to the
manifest's folder (absolute paths are allowed). See ``data_manifests/README.md`` for the schema.

A manifest is of one of three kinds (:data:`KINDS`), stated by a ``kind`` argument or column or
inferred from which path columns are filled (:func:`infer_kind`):

* ``paired``   — ECG and CMR at ED and ES for every subject (pretraining, the paper's setting);
* ``ecg_only`` — an ECG per subject, no CMR (external validation of a trained ECG encoder,
  ``ecgcmr predict``); CMR paths may be absent or empty, a given one must exist;
* ``cmr_only`` — CMR at ED and ES per subject, no ECG (public CMR collections such as ACDC or
  M&Ms, for the CMR encoders of stage A); ``ecg_path`` may be absent or empty.

Validation collects *every* problem first and reports them all at once, by subject, so a user
with 30,000 rows fixes their manifest in one pass rather than one error per run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecgcmr.constants import CONDITIONS, PHENOTYPES
from ecgcmr.errors import DataError

#: Columns every manifest must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "ecg_path", "cmr_ed_path", "cmr_es_path")
#: Optional file columns (label maps with the values of ecgcmr.constants.LABEL_*).
OPTIONAL_PATH_COLUMNS: tuple[str, ...] = ("cmr_ed_seg_path", "cmr_es_seg_path")
PATH_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS[1:] + OPTIONAL_PATH_COLUMNS
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The kinds of manifest and the path columns each requires on every row.
KINDS: tuple[str, ...] = ("paired", "ecg_only", "cmr_only")
KIND_PATHS: dict[str, tuple[str, ...]] = {
    "paired": ("ecg_path", "cmr_ed_path", "cmr_es_path"),
    "ecg_only": ("ecg_path",),
    "cmr_only": ("cmr_ed_path", "cmr_es_path"),
}
#: The paper's split: 70/15/15 at random with seed 42.
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
DEFAULT_SPLIT_SEED: int = 42

# Plausibility bounds. A value outside is a unit error (L for mL, kg for g, a fraction for %,
# days for years, kPa for mmHg) or an entry error, not an unusual heart: the bounds are hard
# limits far beyond the healthy ranges, so that real disease stays inside (dilated
# cardiomyopathy LVEDV > 400 mL, hypertrophic LV mass > 300 g, EF 5 % in end-stage failure).
# Rule for the CMR phenotypes: the healthy 95 % range (mean +- 1.96 SD, both sexes) of the UK
# Biobank CMR reference ranges (Petersen SE et al., J Cardiovasc Magn Reson 2017;19:18; women
# from its Table 3, men partly derived: see ecgcmr.synth.physiology.REFERENCE_RANGES) is quoted
# for comparison; the bound itself is a hard physiological limit (not a literature number):
# EDV and mass 5-800 (low enough for a neonate's heart, LVEDV ~10 mL and LV mass ~10 g, so
# paediatric collections validate; about 4x the highest healthy upper limit), ESV up to the EDV limit (EF can be ~1-5 %) and down to 1 mL (EF <= 95 %), SV 1-400 mL
# (about 3x the healthy upper limit), EF 1-95 %.
_P17 = "Petersen 2017 healthy range"
_HARD = "hard physiological limit"
_FOLLOW_UP = ("UK Biobank imaging began 2014 (baseline 2006): under 20 years of follow-up to "
              "date; 30 years leaves room for any CMR-era cohort and still catches days or "
              "months given as years")

#: Every numeric column with plausibility bounds: column -> (low, high, unit, source). Used by
#: the validation and rendered in data_manifests/README.md (:func:`plausible_ranges_markdown`).
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str, str]] = {
    "lvedv_ml": (5.0, 800.0, "mL", f"{_P17} 88-214 mL; {_HARD}"),
    "lvesv_ml": (1.0, 800.0, "mL", f"{_P17} 31-95 mL; {_HARD} (EF 1-95 % of EDV)"),
    "lvsv_ml": (1.0, 400.0, "mL", f"{_P17} 48-135 mL; {_HARD}"),
    "lvef_pct": (1.0, 95.0, "%", f"{_P17} 48-71 %; {_HARD}"),
    "lvm_g": (5.0, 800.0, "g", f"{_P17} 45-141 g; {_HARD}"),
    "rvedv_ml": (5.0, 800.0, "mL", f"{_P17} 85-237 mL; {_HARD}"),
    "rvesv_ml": (1.0, 800.0, "mL", f"{_P17} 27-124 mL; {_HARD} (EF 1-95 % of EDV)"),
    "rvsv_ml": (1.0, 400.0, "mL", f"{_P17} 48-129 mL; {_HARD}"),
    "rvef_pct": (1.0, 95.0, "%", f"{_P17} 43-68 %; {_HARD}"),
    "age_years": (0.0, 120.0, "years", f"{_HARD} (UK Biobank imaging ages ~45-82)"),
    "bmi": (10.0, 80.0, "kg/m²", f"{_HARD} (WHO obesity class III starts at 40)"),
    "sbp_mmhg": (50.0, 300.0, "mmHg", f"{_HARD} (a value in kPa falls below 50)"),
    **{f"{c}_time_years": (0.0, 30.0, "years", _FOLLOW_UP) for c in CONDITIONS},
}
assert set(PHENOTYPES) <= set(PLAUSIBLE_RANGES)
#: Consistency of the phenotypes, for values rounded to whole mL and %: SV = EDV - ESV within
#: 2 mL (three roundings of 0.5 mL); EF = 100 (EDV - ESV) / EDV within 3 percentage points
#: (rounding moves it by up to 100/EDV + 0.5 points: under 3 for EDV >= 40 mL).
SV_TOLERANCE_ML: float = 2.0
EF_TOLERANCE_PCT: float = 3.0

_CATEGORY_VALUES: dict[str, set[int]] = {
    "sex": {0, 1},
    "smoking": {0, 1, 2},
    "alcohol": {1, 2, 3, 4, 5, 6},
}


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest."""

    subject_id: str   # "" for problems of the whole file (e.g. a missing column)
    column: str
    problem: str


class ManifestError(DataError):
    """A manifest failed validation; ``problems`` lists every problem found, by subject."""

    def __init__(self, path: str | Path, problems: Sequence[Problem]) -> None:
        self.problems = pd.DataFrame([p.__dict__ for p in problems],
                                     columns=["subject_id", "column", "problem"])
        shown = "\n".join(
            f"  - {p.subject_id or '(manifest)'} [{p.column}]: {p.problem}" for p in problems[:40]
        )
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        n_subjects = len({p.subject_id for p in problems if p.subject_id})
        super().__init__(
            f"manifest has {len(problems)} problem(s) in {n_subjects} subject(s):\n{shown}{more}",
            path=path,
        )


def read_manifest(
    path: str | Path,
    kind: str | None = None,
    *,
    check_files: bool = True,
    verify_checksums: bool = False,
    require_ecg: bool = True,
) -> pd.DataFrame:
    """Read and validate a manifest; return it with path columns resolved to absolute paths.

    Raises :class:`ManifestError` (a :class:`~ecgcmr.errors.DataError`) listing every problem.
    ``kind`` (one of :data:`KINDS`; None: the manifest's ``kind`` column, else inferred by
    :func:`infer_kind`) decides which path columns every row must fill; it is recorded in
    ``df.attrs["kind"]``. ``df.attrs["manifest_path"]`` keeps where it came from. If the
    manifest has no ``split`` column, the paper's 70/15/15 split (seed 42) is assigned.
    ``require_ecg=False`` makes ``ecg_path`` optional on every row (mixed cohorts: subjects
    without an ECG serve the CMR stages only); a non-empty one must still name an existing
    record. The kind recorded is then ``cmr_only`` unless every subject has an ECG.
    """
    path = Path(path)
    df = _read_table(path)
    problems = validate_manifest(df, root=path.parent, kind=kind, check_files=check_files,
                                 verify_checksums=verify_checksums, require_ecg=require_ecg)
    if problems:
        raise ManifestError(path, problems)
    found = _effective_kind(df, kind, require_ecg)
    df = resolve_paths(df, path.parent)
    if "split" not in df.columns:
        df["split"] = assign_splits(df["subject_id"])
    df.attrs["manifest_path"] = str(path.resolve())
    df.attrs["kind"] = found
    return df


def infer_kind(df: pd.DataFrame) -> str:
    """The kind of a manifest: its ``kind`` column when it has one (one value for every row),
    else ``ecg_only`` when it names ECGs and no CMR, ``cmr_only`` when it names CMR and no
    ECG, ``paired`` otherwise (then every row must have all three paths).

    Raises :class:`DataError` for a ``kind`` column with several or unknown values.
    """
    if "kind" in df.columns:
        values = sorted({str(v).strip() for v in df["kind"] if not _is_missing(v)})
        if len(values) != 1 or values[0] not in KINDS:
            raise DataError("the kind column must hold one value for every subject",
                            expected=" or ".join(KINDS), found=", ".join(values) or "nothing")
        return values[0]
    ecg = _filled(df, "ecg_path").any()
    cmr = (_filled(df, "cmr_ed_path") | _filled(df, "cmr_es_path")).any()
    if ecg and not cmr:
        return "ecg_only"
    if cmr and not ecg:
        return "cmr_only"
    return "paired"


def _filled(df: pd.DataFrame, column: str) -> pd.Series:
    """Rows whose ``column`` names a file (all False when the column is absent)."""
    if column not in df.columns:
        return pd.Series(False, index=df.index)
    return pd.Series([not _is_missing(v) and str(v).strip() != "" for v in df[column]],
                     index=df.index, dtype=bool)


def _effective_kind(df: pd.DataFrame, kind: str | None, require_ecg: bool) -> str:
    """The kind recorded in ``df.attrs`` (``require_ecg=False`` with a subject lacking an ECG:
    ``cmr_only``, the kind whose rows need CMR and no ECG)."""
    found = kind or infer_kind(df)
    if found == "paired" and not require_ecg and not _filled(df, "ecg_path").all():
        return "cmr_only"
    return found


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("manifest not found", path=path, expected="a CSV or parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={"subject_id": str})
    except Exception as exc:  # pandas raises many types; the user needs the file name
        raise DataError(f"manifest could not be parsed: {exc}", path=path,
                        expected="a CSV or parquet table") from exc
    if "subject_id" in df.columns:
        df["subject_id"] = df["subject_id"].astype(str).str.strip()
    return df


def resolve_paths(df: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Return a copy with every path column made absolute (relative paths are from ``root``)."""
    root = Path(root).resolve()
    out = df.copy()
    for col in PATH_COLUMNS:
        if col in out.columns:
            out[col] = [None if _is_missing(p) else str(root / str(p)) for p in out[col]]
    return out


def validate_manifest(
    df: pd.DataFrame,
    *,
    root: str | Path,
    kind: str | None = None,
    check_files: bool = True,
    verify_checksums: bool = False,
    require_ecg: bool = True,
) -> list[Problem]:
    """Every problem in ``df``, in subject order; an empty list means the manifest is valid.

    ``kind``: see :func:`read_manifest` (None: the ``kind`` column, else inferred);
    ``require_ecg=False``: ``ecg_path`` is optional (see :func:`read_manifest`).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    try:
        stated = infer_kind(df) if kind is None or "kind" in df.columns else kind
    except DataError as exc:
        return [Problem("", "kind", str(exc))]
    if kind is not None and stated != kind:
        return [Problem("", "kind", f"the kind column says {stated!r}, the caller {kind!r}")]
    required = ("subject_id", *KIND_PATHS[stated])
    if not require_ecg and stated != "ecg_only":
        required = tuple(c for c in required if c != "ecg_path")
    missing = [c for c in required if c not in df.columns]
    if missing:
        return [Problem("", c, "required column is missing") for c in missing]
    problems: list[Problem] = []
    if len(df) == 0:
        problems.append(Problem("", "subject_id", "manifest has no subjects"))
    problems += _check_ids(df["subject_id"])
    if check_files:
        problems += _check_files(df, Path(root), verify_checksums, required)
    problems += _check_numbers(df)
    problems += _check_outcomes(df)
    problems += _check_categories(df)
    problems += _check_other_finite(df)
    if "split" in df.columns:
        bad = ~df["split"].isin(SPLITS)
        problems += [Problem(s, "split", f"split {v!r} is not one of {SPLITS}")
                     for s, v in zip(df["subject_id"][bad], df["split"][bad], strict=True)]
    order = {sid: i for i, sid in enumerate(df["subject_id"])}
    return sorted(problems, key=lambda p: (order.get(p.subject_id, -1), p.column))


def _check_ids(ids: pd.Series) -> list[Problem]:
    problems = [Problem("", "subject_id", f"row {i} has an empty subject_id")
                for i, s in enumerate(ids) if _is_missing(s) or str(s).strip() in ("", "nan")]
    for sid, n in ids.value_counts().items():
        if n > 1:
            problems.append(Problem(str(sid), "subject_id", f"subject_id appears {n} times"))
    return problems


def _check_files(df: pd.DataFrame, root: Path, verify_checksums: bool,
                 required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[Problem]:
    problems = []
    for col in PATH_COLUMNS:
        if col not in df.columns:
            continue
        users: dict[Path, list[str]] = {}  # file -> subjects naming it in this column
        for sid, rel in zip(df["subject_id"], df[col], strict=True):
            if _is_missing(rel):
                if col in required:
                    problems.append(Problem(sid, col, "path is empty"))
                continue
            file = _existing_file(root / str(rel), col)
            if file is None:
                problems.append(Problem(sid, col, f"file not found: {root / str(rel)}"))
                continue
            users.setdefault(file.resolve(), []).append(str(sid))
            checksum_col = f"{col.removesuffix('_path')}_sha256"
            if verify_checksums and checksum_col in df.columns:
                expected = df.loc[df["subject_id"] == sid, checksum_col].iloc[0]
                if not _is_missing(expected) and sha256_file(file) != str(expected).lower():
                    problems.append(Problem(sid, col, f"sha256 of {file} does not match "
                                                      f"{checksum_col}"))
        problems += _shared_files(users, col)
    return problems


def _shared_files(users: dict[Path, list[str]], column: str) -> list[Problem]:
    """One file named by several subjects is a copy-paste error: it would pair one
    person's data with another's (and could put the same data in train and test)."""
    problems = []
    for file, sids in users.items():
        if len(set(sids)) > 1:  # a repeated id is reported by _check_ids instead
            problems += [Problem(sid, column, f"file {file} is also used by "
                                              f"{_some_of([o for o in sids if o != sid])}")
                         for sid in sids]
    return problems


def _some_of(sids: list[str], shown: int = 5) -> str:
    """'subject(s) A, B' or, for many, the first few and how many more (a file shared by
    thousands of rows must not make a message of millions of characters)."""
    more = f" and {len(sids) - shown} more" if len(sids) > shown else ""
    return f"subject(s) {', '.join(sids[:shown])}{more}"


def _existing_file(path: Path, column: str) -> Path | None:
    """The file a path column names; WFDB records may be given without the .hea suffix."""
    if path.is_file():
        return path
    if column == "ecg_path" and path.with_name(path.name + ".hea").is_file():
        return path.with_name(path.name + ".hea")
    return None


def _check_numbers(df: pd.DataFrame) -> list[Problem]:
    """Numbers, finite, inside :data:`PLAUSIBLE_RANGES`; EF in percent; volumes consistent."""
    problems = []
    clean: dict[str, pd.Series] = {}  # plausible values only (NaN elsewhere)
    for col, (lo, hi, unit, _) in PLAUSIBLE_RANGES.items():
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        given = df[col].notna() & (df[col].astype(str).str.strip() != "")
        problems += _flag(df, values.isna() & given, col, "is not a number")
        finite = np.isfinite(values)
        problems += _flag(df, values.notna() & ~finite, col, "is not finite")
        if col.endswith("_pct") and finite.any() and values[finite].median() <= 1.0:
            # the unit of the column is wrong, not each subject: one problem, not thousands
            problems.append(Problem("", col, f"EF looks like a fraction (median "
                                             f"{values[finite].median():g}): give it in percent, "
                                             "multiply the column by 100"))
            continue
        outside = finite & ((values < lo) | (values > hi))
        problems += _flag(df, outside, col, f"outside the plausible range {lo:g}-{hi:g} {unit}")
        clean[col] = values.where(finite & ~outside)
    for side in ("lv", "rv"):
        problems += _check_volumes(df, clean, side)
    return problems


def _check_volumes(df: pd.DataFrame, clean: dict[str, pd.Series], side: str) -> list[Problem]:
    edv_col, esv_col, sv_col, ef_col = (f"{side}{x}" for x in ("edv_ml", "esv_ml", "sv_ml",
                                                                "ef_pct"))
    if edv_col not in clean or esv_col not in clean:
        return []
    edv, esv = clean[edv_col], clean[esv_col]
    problems = _flag(df, esv > edv, esv_col, f"end-systolic volume exceeds {edv_col}")
    sv = edv - esv
    checks = []
    if sv_col in clean:
        checks.append((sv_col, clean[sv_col], sv, SV_TOLERANCE_ML, "mL",
                       f"{edv_col} - {esv_col}"))
    if ef_col in clean:
        checks.append((ef_col, clean[ef_col], 100.0 * sv / edv, EF_TOLERANCE_PCT, "%",
                       f"100 ({edv_col} - {esv_col}) / {edv_col}"))
    for col, got, want, tol, unit, formula in checks:
        bad = ((got - want).abs() > tol) & (esv <= edv)
        problems += [Problem(str(sid), col, f"is not {formula} = {w:.1f} {unit} within "
                                            f"{tol:g} {unit} (found {g!r})")
                     for sid, g, w in zip(df["subject_id"][bad], df[col][bad], want[bad],
                                          strict=True)]
    return problems


def _check_outcomes(df: pd.DataFrame) -> list[Problem]:
    problems = []
    for cond in CONDITIONS:
        for suffix in ("_ever", "_event"):
            col = cond + suffix
            if col in df.columns:
                values = pd.to_numeric(df[col], errors="coerce")
                bad = ~(values.isin([0, 1]) | df[col].isna())
                problems += _flag(df, bad, col, "must be 0, 1 or empty")
        col, event = f"{cond}_time_years", f"{cond}_event"
        if col in df.columns and event in df.columns:
            no_time = df[event].notna() & pd.to_numeric(df[col], errors="coerce").isna()
            problems += _flag(df, no_time, col, f"{event} is given but the time is missing")
    return problems


def _check_categories(df: pd.DataFrame) -> list[Problem]:
    problems = []
    for col, allowed in _CATEGORY_VALUES.items():
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce")
            bad = df[col].notna() & ~values.isin(sorted(allowed))
            problems += _flag(df, bad, col, f"must be one of {sorted(allowed)}")
    return problems


def _check_other_finite(df: pd.DataFrame) -> list[Problem]:
    """No inf in any other numeric column (e.g. the ECG measurements of the UKB builder)."""
    checked = set(PLAUSIBLE_RANGES) | set(_CATEGORY_VALUES) | {
        c + s for c in CONDITIONS for s in ("_ever", "_event")}
    problems = []
    for col in df.columns:
        if col not in checked and pd.api.types.is_float_dtype(df[col]):
            problems += _flag(df, np.isinf(df[col]), col, "is not finite")
    return problems


def plausible_ranges_markdown() -> str:
    """:data:`PLAUSIBLE_RANGES` as the Markdown table of data_manifests/README.md."""
    time_cols = [f"{c}_time_years" for c in CONDITIONS]
    rows = ["| column | plausible range | source / rule |", "|---|---|---|"]
    for col, (lo, hi, unit, source) in PLAUSIBLE_RANGES.items():
        if col in time_cols[1:]:
            continue
        name = "`<c>_time_years`" if col == time_cols[0] else f"`{col}`"
        rows.append(f"| {name} | {lo:g}–{hi:g} {unit} | {source} |")
    return "\n".join(rows)


def _flag(df: pd.DataFrame, mask: pd.Series, column: str, what: str) -> list[Problem]:
    mask = mask.fillna(False).astype(bool)
    return [Problem(str(sid), column, f"{what} (found {value!r})")
            for sid, value in zip(df["subject_id"][mask], df[column][mask], strict=True)]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def assign_splits(
    subject_ids: Iterable[str],
    fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> pd.Series:
    """Deterministic train/val/test split by subject (the paper's 70/15/15, seed 42).

    Subjects are ranked by a keyed hash of ``(seed, subject_id)`` and cut at the fractions.
    Unlike shuffling a list, a subject's position does not depend on the row order, and
    adding subjects to a manifest moves only the few subjects near a cut, so a test set
    stays a test set as a cohort grows. Returns a Series indexed like ``subject_ids``.
    """
    ids = pd.Series(list(subject_ids), dtype=str)
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    keys = ids.map(lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    rank = keys.rank(method="first").to_numpy() - 1          # 0 .. n-1
    n = len(ids)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    split = np.where(rank < n_train, "train", np.where(rank < n_train + n_val, "val", "test"))
    return pd.Series(split, index=ids.index, name="split")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (CMR volumes can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
