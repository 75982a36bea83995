"""UK Biobank -> manifest: bulk ECG/CMR files plus a tabular export keyed by participant id.

Two parts, each usable on its own::

    cols = ukb_table_to_columns(read_ukb_table("ukb.csv"), censor_date="2022-10-31")
    path = build_ukb_manifest("bulk/", "ukb.csv", "data/ukb", censor_date="2022-10-31")

**Table.** ``ukb_table_to_columns`` maps the Showcase fields of :data:`UKB_FIELDS` to the
manifest columns (phenotypes, covariates, outcomes; see ``data_manifests/ukb_fields.md``).
Both export namings are read: the classic ``<field>-<instance>.<array>`` (``24100-2.0``,
``41270-0.12``; also ukbconv's R form ``f.24100.2.0``) and the Research Analysis Platform's
``p<field>_i<instance>_a<array>`` / ``p<field>_i<instance>`` / ``p<field>`` (optionally prefixed
``participant.``), where ``p41270`` holds all ICD-10 codes of a participant in one cell, as a
``|``-separated or ``[...]`` list. Values must be raw codes (not replaced by their meanings).

* UK Biobank's negative codes (-1 "do not know", -3 "prefer not to answer"; coding 100291 and
  friends) become missing. Every numeric field used here is non-negative by nature, so *any*
  negative value is such a code.
* Placeholder dates (1900-01-01, 1901-01-01, 1902-02-02, 1903-03-03, 1909-09-09, 2037-07-07:
  UK Biobank's "unknown / before birth / in the future" markers) become missing.
* Systolic blood pressure is the mean of the automated readings given (field 4080 has two).

**Outcomes** from the in-patient ICD-10 diagnoses (field 41270) and the date of first diagnosis
at the same array position (field 41280). A code counts in a group when its 3-character
category is in :data:`ICD10_GROUPS` (``I210``, ``I21.0`` and ``I21`` all mean I21):

* ``<c>_ever``: 1 if any code of the group appears at any date (the paper's label), else 0.
* ``<c>_event`` / ``<c>_time_years``, incident events after the imaging visit (field 53,
  instance 2). Follow-up ends at ``censor_date`` (e.g. the end of hospital-record follow-up) or
  at death (field 40000, earliest of its instances), whichever is first.

  - first diagnosis of the group *after* the imaging date and on/before the end of follow-up:
    event 1, time = diagnosis - imaging;
  - no diagnosis of the group up to the end of follow-up: event 0, time = end - imaging;
  - diagnosed on or before the imaging date (prevalent: not at risk), or any code of the group
    without a usable date (prevalence unknown): both empty;
  - no imaging date, or the end of follow-up before the imaging date: both empty.

  Times are in years of 365.25 days.

**Files.** ECG field 20205 and CMR short-axis field 20209 at the imaging visit are bulk files
named ``<eid>_20205_2_0.xml`` and ``<eid>_20209_2_0.zip`` (``<eid>_<field>_<instance>_<array>``,
configurable). Each is converted by ``ecgcmr.convert`` (injectable for tests); a subject whose
file is missing or fails to convert is listed in ``build_report.csv`` and left out, and the run
goes on. A finished conversion leaves ``.converted/<eid>.<ecg|cmr>.json`` (written last), so a
rerun skips it: interrupted builds resume.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.constants import CONDITIONS, COVARIATES, PHENOTYPES
from ecgcmr.data.manifest import ManifestError, validate_manifest
from ecgcmr.errors import DataError
from ecgcmr.files import exclusive, write_text_atomic

# ============================================================================================
# Showcase fields (https://biobank.ndph.ox.ac.uk/showcase/field.cgi?id=<field id>)
# ============================================================================================

IMAGING_INSTANCE = 2   # instance 2 = the first imaging visit (2014+), when ECG and CMR were taken
ECG_FIELD = 20205      # "ECG datasets" at rest, 12-lead, bulk XML (GE CardioSoft)
CMR_FIELD = 20209      # "Short axis heart images", bulk zip of DICOM series


@dataclass(frozen=True)
class UkbField:
    """One Showcase field the builder reads, and the manifest column it becomes."""

    field_id: int
    instance: int | None   # visit; None: every instance (date of death has two records)
    title: str             # the Showcase title
    column: str            # our manifest column ("" when used only to derive outcomes)
    units: str = ""
    coding: str = ""
    reduce: str = "first"  # "first": array 0; "mean": mean over the arrays given


#: Every table field the builder needs. A missing one is a DataError naming it.
UKB_FIELDS: tuple[UkbField, ...] = (
    UkbField(53, IMAGING_INSTANCE, "Date of attending assessment centre", "imaging_date",
             "date"),
    # Image-derived phenotypes of the short-axis cine (Showcase category 133)
    UkbField(24100, IMAGING_INSTANCE, "LV end diastolic volume", "lvedv_ml", "mL"),
    UkbField(24101, IMAGING_INSTANCE, "LV end systolic volume", "lvesv_ml", "mL"),
    UkbField(24102, IMAGING_INSTANCE, "LV stroke volume", "lvsv_ml", "mL"),
    UkbField(24103, IMAGING_INSTANCE, "LV ejection fraction", "lvef_pct", "%"),
    # (24104 is LV cardiac output, not used)
    UkbField(24105, IMAGING_INSTANCE, "LV myocardial mass", "lvm_g", "g"),
    UkbField(24106, IMAGING_INSTANCE, "RV end diastolic volume", "rvedv_ml", "mL"),
    UkbField(24107, IMAGING_INSTANCE, "RV end systolic volume", "rvesv_ml", "mL"),
    UkbField(24108, IMAGING_INSTANCE, "RV stroke volume", "rvsv_ml", "mL"),
    UkbField(24109, IMAGING_INSTANCE, "RV ejection fraction", "rvef_pct", "%"),
    # Covariates
    UkbField(31, 0, "Sex", "sex", coding="9: 0 female, 1 male"),
    UkbField(21003, IMAGING_INSTANCE, "Age when attended assessment centre", "age_years",
             "years"),
    UkbField(21001, IMAGING_INSTANCE, "Body mass index (BMI)", "bmi", "kg/m2"),
    UkbField(4080, IMAGING_INSTANCE, "Systolic blood pressure, automated reading", "sbp_mmhg",
             "mmHg", reduce="mean"),
    UkbField(20116, IMAGING_INSTANCE, "Smoking status", "smoking",
             coding="90: 0 never, 1 previous, 2 current, -3 prefer not to answer"),
    UkbField(1558, IMAGING_INSTANCE, "Alcohol intake frequency", "alcohol",
             coding="100402: 1 daily or almost daily, 2 three or four times a week, 3 once or "
                    "twice a week, 4 one to three times a month, 5 special occasions only, "
                    "6 never, -3 prefer not to answer"),
    # Outcomes
    UkbField(41270, 0, "Diagnoses - ICD10", "", coding="19 (ICD-10)"),
    UkbField(41280, 0, "Date of first in-patient diagnosis - ICD10", "", "date",
             coding="array index pairs with field 41270"),
    UkbField(40000, None, "Date of death", "", "date"),
)
_FIELD = {f.field_id: f for f in UKB_FIELDS}
_VALUE_FIELDS = tuple(f for f in UKB_FIELDS if f.column in PHENOTYPES + COVARIATES)

#: ICD-10 3-character categories of the paper's six conditions. MI is I21-I22 (acute and
#: subsequent MI; the authors' public code used I25, chronic ischaemic heart disease).
#: Cardiac arrest is I46-I47 as in the public code, whose endpoint is "sudden_cardiac_death":
#: ``[f'I{num}' for num in range(460, 480)]  # ICD I46-I47`` in
#: ``qurAI-amsterdam/dual-phase-contrastive-learning``,
#: ``ECG-CMR-CL/utils/generate_finetune_dataset.py``. I47 (paroxysmal tachycardia, I47.2
#: ventricular tachycardia the main mechanism of sudden death, but also I47.1 supraventricular
#: tachycardia) widens the label beyond arrest; :data:`CARDIAC_ARREST_I46_ONLY` is the narrow
#: definition (this project's before), via ``ukb_table_to_columns(..., icd10_groups=...)``.
ICD10_GROUPS: dict[str, tuple[str, ...]] = {
    "cad": ("I20", "I21", "I22", "I23", "I24", "I25"),
    "af": ("I48",),
    "hf": ("I50",),
    "cardiomyopathy": ("I42",),
    "mi": ("I21", "I22"),
    "cardiac_arrest": ("I46", "I47"),
}
assert tuple(ICD10_GROUPS) == CONDITIONS, "ICD10_GROUPS must cover ecgcmr.constants.CONDITIONS"
#: Cardiac arrest alone (I46): pass
#: ``icd10_groups={**ICD10_GROUPS, "cardiac_arrest": CARDIAC_ARREST_I46_ONLY}``.
CARDIAC_ARREST_I46_ONLY: tuple[str, ...] = ("I46",)

#: UK Biobank placeholder dates: unknown, before birth, at birth, in the year of birth,
#: "1909-09-09" unknown, in the future. None is a real diagnosis date.
_PLACEHOLDER_DATES = pd.to_datetime(
    ["1900-01-01", "1901-01-01", "1902-02-02", "1903-03-03", "1909-09-09", "2037-07-07"])
DAYS_PER_YEAR = 365.25

DEFAULT_ECG_PATTERN = f"{{eid}}_{ECG_FIELD}_{IMAGING_INSTANCE}_0.xml"
DEFAULT_CMR_PATTERN = f"{{eid}}_{CMR_FIELD}_{IMAGING_INSTANCE}_0.zip"
_ID_COLUMNS = ("eid", "f.eid", "participant.eid", "participant id", "p_eid")
REPORT_COLUMNS = ("subject_id", "file", "reason")

# ============================================================================================
# Column names
# ============================================================================================

_CLASSIC = re.compile(r"(?:f\.)?(\d+)[-.](\d+)\.(\d+)")                 # 24100-2.0, f.24100.2.0
_RAP = re.compile(r"(?:participant\.)?p(\d+)(?:_i(\d+))?(?:_a(\d+))?")   # p24100_i2, p41280_a3

ColumnIndex = dict[tuple[int, int], dict[int, str]]   # (field, instance) -> {array: column}


def parse_ukb_column(name: str) -> tuple[int, int, int] | None:
    """``(field, instance, array)`` of an export column name, or None if it is not a field.

    ``"24100-2.0"`` and ``"p24100_i2"`` -> ``(24100, 2, 0)``; ``"p41280_a3"`` -> ``(41280, 0, 3)``
    (the RAP omits the instance of single-instance fields and the array of single values).
    """
    text = str(name).strip()
    match = _CLASSIC.fullmatch(text) or _RAP.fullmatch(text)
    if match is None:
        return None
    field, instance, array = match.groups()
    return int(field), int(instance or 0), int(array or 0)


def _index_columns(columns: Iterable[str]) -> ColumnIndex:
    index: ColumnIndex = {}
    for name in columns:
        parsed = parse_ukb_column(name)
        if parsed is not None:
            field, instance, array = parsed
            index.setdefault((field, instance), {})[array] = name
    return index


def _columns_of(index: ColumnIndex, field: UkbField) -> list[str]:
    """The export columns of ``field``, by instance then array."""
    keys = sorted(k for k in index if k[0] == field.field_id
                  and (field.instance is None or k[1] == field.instance))
    return [index[k][a] for k in keys for a in sorted(index[k])]


def _is_needed(name: str) -> bool:
    parsed = parse_ukb_column(name)
    return parsed is not None and parsed[0] in _FIELD and (
        _FIELD[parsed[0]].instance in (None, parsed[1]))


def _find_id_column(columns: Sequence[str], id_column: str | None) -> str:
    if id_column is not None:
        if id_column not in columns:
            raise DataError(f"participant id column {id_column!r} not found",
                            found=f"columns {', '.join(map(str, columns[:12]))} ...")
        return id_column
    for name in columns:
        if str(name).strip().lower() in _ID_COLUMNS:
            return name
    raise DataError("no participant id column", expected=f"one of {', '.join(_ID_COLUMNS)} "
                    "(or pass id_column)", found=f"columns {', '.join(map(str, columns[:12]))}")


def _check_fields(index: ColumnIndex, n_columns: int) -> None:
    """Raise one DataError naming every needed field the table lacks."""
    missing = [f for f in UKB_FIELDS if not _columns_of(index, f)]
    if missing:
        names = "; ".join(
            f"{f.field_id}" + (f" instance {f.instance}" if f.instance is not None else "")
            + f" ({f.title})" for f in missing)
        raise DataError(f"the UK Biobank table lacks needed field(s): {names}",
                        expected="columns like '24100-2.0' or 'p24100_i2' for each field",
                        found=f"{n_columns} columns")


# ============================================================================================
# Reading the table
# ============================================================================================


def read_ukb_table(path: str | Path, *, id_column: str | None = None) -> pd.DataFrame:
    """Read the id column and the needed fields of an export (CSV, TSV/.tab, or parquet), as text.

    Only the columns of :data:`UKB_FIELDS` are read, so a 500,000 x 10,000 export stays cheap.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("UK Biobank table not found", path=path,
                        expected="a CSV, TSV (.tab/.tsv/.txt) or parquet export")
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            wanted = [_find_id_column(names, id_column)] + [n for n in names if _is_needed(n)]
            return pd.read_parquet(path, columns=wanted)
        sep = "\t" if path.suffix.lower() in (".tab", ".tsv", ".txt") else ","
        names = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        wanted = [_find_id_column(names, id_column)] + [n for n in names if _is_needed(n)]
        return pd.read_csv(path, sep=sep, usecols=wanted, dtype=str, keep_default_na=True)
    except DataError as exc:
        raise exc.with_context(path=path) from exc
    except (ValueError, OSError, ImportError) as exc:  # pandas/pyarrow parse errors
        raise DataError(f"UK Biobank table could not be read: {exc}", path=path) from exc


# ============================================================================================
# Values
# ============================================================================================


def _numbers(df: pd.DataFrame, column: str, field: UkbField) -> pd.Series:
    """A numeric column; UK Biobank's negative codes (-1, -3, ...) become NaN."""
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce")
    text = raw.astype("string").str.strip()
    bad = (values.isna() & raw.notna() & (text != "") & (text.str.lower() != "nan")).fillna(False)
    if bad.any():
        raise DataError(
            f"field {field.field_id} ({field.title}) has values that are not numbers",
            expected="raw UK Biobank codes (export without replacing codes by their meanings)",
            found=f"{raw[bad].iloc[0]!r} in column {column!r}")
    return values.where(values >= 0)


def _dates(df: pd.DataFrame, column: str, field: UkbField) -> pd.Series:
    """A date column (day precision); UK Biobank placeholder dates become NaT."""
    raw = df[column]
    text = raw.astype("string").str.strip()
    given = (raw.notna() & (text != "") & (text.str.lower() != "nan")).fillna(False)
    parsed = pd.to_datetime(text.where(given), errors="coerce", format="ISO8601")
    if (parsed.isna() & given).any():
        raise DataError(f"field {field.field_id} ({field.title}) has values that are not dates",
                        expected="YYYY-MM-DD", found=f"{raw[parsed.isna() & given].iloc[0]!r} "
                        f"in column {column!r}")
    parsed = parsed.dt.tz_localize(None) if parsed.dt.tz is not None else parsed
    parsed = parsed.dt.normalize()
    return parsed.mask(parsed.isin(_PLACEHOLDER_DATES))


def _field_value(df: pd.DataFrame, index: ColumnIndex, field: UkbField) -> pd.Series:
    columns = _columns_of(index, field)
    if field.reduce == "mean":
        return pd.concat([_numbers(df, c, field) for c in columns], axis=1).mean(axis=1)
    values = _numbers(df, columns[0], field)
    return _as_codes(values, columns[0], field) if field.coding else values


def _as_codes(values: pd.Series, column: str, field: UkbField) -> pd.Series:
    """A categorical field as nullable integers (written ``1``, not ``1.0``)."""
    fractional = values.notna() & (values % 1 != 0)
    if fractional.any():
        raise DataError(f"field {field.field_id} ({field.title}) has a value that is not a code",
                        expected=f"integer codes of coding {field.coding}",
                        found=f"{values[fractional].iloc[0]!r} in column {column!r}")
    return values.astype("Int64")


def _earliest_date(df: pd.DataFrame, index: ColumnIndex, field: UkbField) -> pd.Series:
    return pd.concat([_dates(df, c, field) for c in _columns_of(index, field)], axis=1).min(axis=1)


def _subject_ids(ids: pd.Series) -> pd.Series:
    """Participant ids as text; integral floats (``1000001.0``) lose their ``.0``."""
    if pd.api.types.is_float_dtype(ids):
        ids = ids.astype("Int64")
    return ids.astype("string").str.strip().str.removesuffix(".0").astype(object)


# ============================================================================================
# Diagnoses
# ============================================================================================


def _normalise_icd10(code: str) -> str:
    """``' "I21.0 Acute ..."'`` -> ``"I210"``: first token, no dot, upper case."""
    tokens = code.strip().strip("'\"").split()
    return tokens[0].replace(".", "").upper() if tokens else ""


def _split_codes(cell: str) -> list[str]:
    """All codes of one cell: a single code, ``A|B|C``, or ``["A","B"]`` / ``[A, B]``."""
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = json.loads(text)   # JSON, never eval: the cell is untrusted text
        except ValueError:
            items = text[1:-1].split(",")
        parts = [str(item) for item in items] if isinstance(items, list) else [text]
    else:
        parts = text.split("|")
    return [_normalise_icd10(p) for p in parts]


def _diagnoses(df: pd.DataFrame, index: ColumnIndex) -> pd.DataFrame:
    """One row per (participant row, array position): ``row``, ``code``, ``date``.

    A list cell (the RAP's ``p41270``) spreads over positions ``array, array + 1, ...``, which
    pair with ``p41280_a<position>``.
    """
    codes = []
    for array, column in sorted(index[(41270, 0)].items()):
        cells = df[column].dropna().astype(str)
        cells = cells[cells.str.strip() != ""]
        exploded = cells.map(_split_codes).explode()
        position = array + exploded.groupby(level=0).cumcount()
        codes.append(pd.DataFrame({"row": exploded.index, "position": position.to_numpy(),
                                   "code": exploded.to_numpy()}))
    dates = [pd.DataFrame({"row": df.index, "position": array,
                           "date": _dates(df, column, _FIELD[41280]).to_numpy()})
             for array, column in sorted(index[(41280, 0)].items())]
    long = pd.concat(codes, ignore_index=True) if codes else pd.DataFrame(
        {"row": pd.Series(dtype="int64"), "position": pd.Series(dtype="int64"),
         "code": pd.Series(dtype=object)})
    long = long[long["code"].notna() & (long["code"] != "")]   # "[]" explodes to NaN
    return long.merge(pd.concat(dates, ignore_index=True), on=["row", "position"], how="left")


def _condition_summary(diagnoses: pd.DataFrame, categories: tuple[str, ...],
                       rows: pd.Index) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per participant row: any code of the group, its first date, any code without a date."""
    hits = diagnoses[diagnoses["code"].str[:3].isin(categories)]
    by_row = hits.groupby("row")
    ever = pd.Series(False, index=rows)
    ever[by_row.size().index] = True
    first = pd.to_datetime(by_row["date"].min().reindex(rows))
    undated = hits["date"].isna().groupby(hits["row"]).any().reindex(rows, fill_value=False)
    return ever, first, undated.astype(bool)


def _incident(ever: pd.Series, first: pd.Series, undated: pd.Series, imaging: pd.Series,
              end: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(event, time_years)`` of an incident event after imaging; empty where not at risk."""
    prevalent = ever & ((first <= imaging) | undated)
    at_risk = imaging.notna() & end.notna() & (end >= imaging) & ~prevalent
    event = at_risk & ever & (first <= end)
    stop = first.where(event, end)
    time = (stop - imaging).dt.days / DAYS_PER_YEAR
    return (event.astype("Int64").where(at_risk, pd.NA),
            time.where(at_risk))


# ============================================================================================
# Table -> manifest columns
# ============================================================================================


def ukb_table_to_columns(
    df: pd.DataFrame,
    *,
    censor_date: str | date | pd.Timestamp,
    id_column: str | None = None,
    icd10_groups: Mapping[str, tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """Manifest columns from a UK Biobank export; one row per participant, in table order.

    Returns ``subject_id`` (the eid as text), ``imaging_date`` (YYYY-MM-DD), the phenotypes and
    covariates of ``ecgcmr.constants`` and ``<c>_ever``, ``<c>_event``, ``<c>_time_years`` for
    each condition (rules in the module docstring) by ``icd10_groups`` (default
    :data:`ICD10_GROUPS`; same conditions, other 3-character categories allowed). Raises
    :class:`DataError` naming every missing field, or a field with text where raw codes are
    expected.
    """
    groups = _check_groups(icd10_groups)
    censor = _as_date(censor_date)
    df = df.reset_index(drop=True)
    id_col = _find_id_column(list(df.columns), id_column)
    index = _index_columns(df.columns)
    _check_fields(index, len(df.columns))

    out = pd.DataFrame({"subject_id": _subject_ids(df[id_col])})
    imaging = _dates(df, _columns_of(index, _FIELD[53])[0], _FIELD[53])
    out["imaging_date"] = imaging.dt.strftime("%Y-%m-%d").astype(object).where(imaging.notna())
    for field in _VALUE_FIELDS:
        out[field.column] = _field_value(df, index, field)
    out = out[["subject_id", "imaging_date", *PHENOTYPES, *COVARIATES]]

    death = _earliest_date(df, index, _FIELD[40000])
    end = death.where(death < censor, censor)   # the end of follow-up: death or censoring
    diagnoses = _diagnoses(df, index)
    for condition, categories in groups.items():
        ever, first, undated = _condition_summary(diagnoses, categories, df.index)
        event, time = _incident(ever, first, undated, imaging, end)
        out[f"{condition}_ever"] = ever.astype("Int64")
        out[f"{condition}_event"] = event
        out[f"{condition}_time_years"] = time
    return out


def _check_groups(groups: Mapping[str, tuple[str, ...]] | None) -> dict[str, tuple[str, ...]]:
    if groups is None:
        return ICD10_GROUPS
    if tuple(groups) != CONDITIONS or not all(groups.values()):
        raise ValueError(f"icd10_groups must give categories for {CONDITIONS} in that order, "
                         f"got {tuple(groups)}")
    out = {c: tuple(_normalise_icd10(code) for code in groups[c]) for c in CONDITIONS}
    bad = [code for codes in out.values() for code in codes if len(code) != 3]
    if bad:
        raise ValueError(f"icd10_groups holds 3-character ICD-10 categories (e.g. 'I46'), "
                         f"got {bad[0]!r}")
    return out


def _as_date(value: str | date | pd.Timestamp) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value) if value is not None and value != "" else pd.NaT
    except ValueError:   # pandas' DateParseError is a ValueError
        stamp = pd.NaT
    if pd.isna(stamp):
        raise DataError("censor_date is not a date", expected="YYYY-MM-DD", found=repr(value))
    return stamp.normalize()


# ============================================================================================
# Files -> WFDB / NIfTI
# ============================================================================================

EcgConverter = Callable[[Path, Path, str], Any]   # (xml, out_dir, record_name) -> .record, .measurements
CmrConverter = Callable[[Path, Path, str], Any]   # (zip, out_dir, subject_id) -> .ed, .es


@dataclass(frozen=True)
class _Converters:
    ecg: EcgConverter
    cmr: CmrConverter


def _default_converters(ecg: EcgConverter | None, cmr: CmrConverter | None) -> _Converters:
    # imported here: the converters are only needed when a file is actually converted
    if ecg is None:
        from ecgcmr.convert.ecg_xml import convert_ge_xml as ecg
    if cmr is None:
        from ecgcmr.convert.cmr_dicom import convert_cmr_zip as cmr
    return _Converters(ecg=ecg, cmr=cmr)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``"{eid}_20205_2_0.xml"`` -> a regex matching such a path (relative, posix) by eid."""
    if pattern.count("{eid}") != 1:
        raise DataError("a bulk-file pattern must contain {eid} exactly once",
                        expected="e.g. '{eid}_20205_2_0.xml'", found=repr(pattern))
    head, tail = pattern.split("{eid}")
    return re.compile(re.escape(head) + r"(?P<eid>[^/]+?)" + re.escape(tail))


def _bulk_files(bulk: Path, pattern: str) -> dict[str, Path]:
    """eid -> file for every file under ``bulk`` matching ``pattern``."""
    regex = _pattern_regex(pattern)
    found = {}
    for path in bulk.glob(pattern.replace("{eid}", "*")):
        match = regex.fullmatch(path.relative_to(bulk).as_posix())
        if match and path.is_file():
            found[match["eid"]] = path
    return found


class BuildReport:
    """Rows of ``build_report.csv``: what was left out (subject, file, reason), and why."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, subject: str, file: str | Path, reason: str) -> None:
        self.rows.append({"subject_id": subject, "file": str(file), "reason": reason})

    def write(self, path: Path) -> None:
        write_csv_atomic(pd.DataFrame(self.rows, columns=list(REPORT_COLUMNS)), path)


def _marker(out: Path, sid: str, kind: str) -> Path:
    return out / ".converted" / f"{sid}.{kind}.json"


def _relative(path: str | os.PathLike[str], out: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def _json_value(value: object) -> object:
    """Measurements -> JSON: numpy scalars to Python, NaN to null."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _outputs_exist(record: Mapping[str, Any], out: Path, kind: str) -> bool:
    if kind == "ecg":
        return (out / (record["ecg_path"] + ".hea")).is_file()
    return all((out / record[k]).is_file() for k in ("cmr_ed_path", "cmr_es_path"))


def _convert_ecg(converter: EcgConverter, source: Path, out: Path, sid: str) -> dict[str, Any]:
    result = converter(source, out / "ecg", sid)
    record = Path(result.record)
    if not record.with_name(record.name + ".hea").is_file():
        raise DataError("the ECG converter wrote no WFDB header", path=record)
    measurements = {}
    for key, value in dict(result.measurements or {}).items():
        name = key if key.startswith("ecg_") else f"ecg_{key}"
        if name == "ecg_path":   # would shadow the manifest's path column
            name = "ecg_path_measurement"
        measurements[name] = _json_value(value)
    return {"ecg_path": _relative(record, out), "measurements": measurements}


def _convert_cmr(converter: CmrConverter, source: Path, out: Path, sid: str) -> dict[str, Any]:
    result = converter(source, out / "cmr", sid)
    for phase in ("ed", "es"):
        if not Path(getattr(result, phase)).is_file():
            raise DataError(f"the CMR converter wrote no {phase.upper()} volume",
                            path=getattr(result, phase))
    return {"cmr_ed_path": _relative(result.ed, out), "cmr_es_path": _relative(result.es, out)}


def _converted(kind: str, sid: str, source: Path | None, out: Path, converters: _Converters,
               report: BuildReport) -> dict[str, Any] | None:
    """One subject's converted ECG or CMR (from an earlier run if there is one), or None."""
    marker = _marker(out, sid, kind)
    if marker.is_file():
        record = json.loads(marker.read_text())
        if _outputs_exist(record, out, kind):
            return record
    if source is None:
        field = ECG_FIELD if kind == "ecg" else CMR_FIELD
        report.add(sid, "", f"no {kind.upper()} file (field {field}) in the bulk folder")
        return None
    (out / kind).mkdir(parents=True, exist_ok=True)
    try:
        record = (_convert_ecg(converters.ecg, source, out, sid) if kind == "ecg"
                  else _convert_cmr(converters.cmr, source, out, sid))
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a 50,000-subject build
        report.add(sid, source, f"{kind.upper()} conversion failed: {type(exc).__name__}: {exc}")
        return None
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(record))   # last: the subject counts as converted
    return record


# ============================================================================================
# The builder
# ============================================================================================


def build_ukb_manifest(
    bulk_dir: str | Path,
    table_path: str | Path,
    out_dir: str | Path,
    *,
    censor_date: str | date | pd.Timestamp,
    ecg_pattern: str = DEFAULT_ECG_PATTERN,
    cmr_pattern: str = DEFAULT_CMR_PATTERN,
    id_column: str | None = None,
    convert_ecg: EcgConverter | None = None,
    convert_cmr: CmrConverter | None = None,
    progress: bool = True,
    icd10_groups: Mapping[str, tuple[str, ...]] | None = None,
) -> Path:
    """Convert the imaging visit's ECG and CMR of every participant and write the manifest.

    Participants are those of the table with an imaging date (field 53, instance 2) or a bulk
    file. ``ecg_pattern``/``cmr_pattern`` name the files relative to ``bulk_dir`` (``{eid}`` is
    the participant id; subfolders allowed, e.g. ``"20205/{eid}_20205_2_0.xml"``). Writes
    ``out_dir/manifest.csv`` (paths relative to it, ECG measurements as ``ecg_*`` columns) and
    ``out_dir/build_report.csv`` (subject, file, reason for everything left out); returns the
    manifest path. Raises :class:`ManifestError` if the result fails validation (e.g. an
    implausible value in the table), after writing both files so they can be inspected.
    """
    bulk, out = Path(bulk_dir), Path(out_dir)
    censor = _as_date(censor_date)
    if not bulk.is_dir():
        raise DataError("bulk folder not found", path=bulk, expected="a folder of bulk files")
    ecg_files, cmr_files = _bulk_files(bulk, ecg_pattern), _bulk_files(bulk, cmr_pattern)
    table = read_ukb_table(table_path, id_column=id_column)
    try:
        columns = ukb_table_to_columns(table, censor_date=censor, id_column=id_column,
                                       icd10_groups=icd10_groups)
    except DataError as exc:
        raise exc.with_context(path=table_path) from exc
    converters = _default_converters(convert_ecg, convert_cmr)
    with exclusive(out):
        report = BuildReport()
        subjects = _participants(columns, ecg_files, cmr_files, report)
        rows = []
        for sid in tqdm(subjects, desc="UK Biobank subjects", unit="subj", disable=not progress):
            ecg = _converted("ecg", sid, ecg_files.get(sid), out, converters, report)
            cmr = _converted("cmr", sid, cmr_files.get(sid), out, converters, report)
            if ecg is not None and cmr is not None:
                rows.append({"subject_id": sid, "ecg_path": ecg["ecg_path"], **cmr,
                             **ecg["measurements"]})
        report.write(out / "build_report.csv")
        return _write_manifest(out, rows, columns)


def _participants(columns: pd.DataFrame, ecg_files: Mapping[str, Path],
                  cmr_files: Mapping[str, Path], report: BuildReport) -> list[str]:
    """Table participants with an imaging date or a file, in table order; files of ids not in
    the table are reported."""
    with_files = set(ecg_files) | set(cmr_files)
    known = set(columns["subject_id"])
    for sid in sorted(with_files - known):
        for file in (ecg_files.get(sid), cmr_files.get(sid)):
            if file is not None:
                report.add(sid, file, "participant id not in the UK Biobank table")
    keep = columns["imaging_date"].notna() | columns["subject_id"].isin(with_files)
    return list(dict.fromkeys(columns.loc[keep, "subject_id"]))


def _write_manifest(out: Path, rows: list[dict[str, Any]], columns: pd.DataFrame) -> Path:
    path = out / "manifest.csv"
    if not rows:
        raise DataError("no subject could be built; see build_report.csv for why",
                        path=out / "build_report.csv")
    files = pd.DataFrame(rows)
    table = columns.drop_duplicates("subject_id")
    manifest = files.merge(table, on="subject_id", how="left")
    measurement_columns = [c for c in files.columns if c.startswith("ecg_") and c != "ecg_path"]
    manifest = manifest[[c for c in manifest.columns if c not in measurement_columns]
                        + measurement_columns]
    write_csv_atomic(manifest, path)
    problems = validate_manifest(pd.read_csv(path, dtype={"subject_id": str}), root=out)
    if problems:
        raise ManifestError(path, problems)
    return path


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a CSV beside ``path``, then rename it over ``path``: never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
