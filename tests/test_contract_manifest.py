"""Data integrity: the manifest refuses impossible values (non-finite, implausible, non-numeric,
EF as a fraction, inconsistent volumes, no rows) and accepts real disease."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecgcmr.constants import PHENOTYPES
from ecgcmr.data.manifest import (
    PLAUSIBLE_RANGES,
    ManifestError,
    plausible_ranges_markdown,
    read_manifest,
    validate_manifest,
)

README = Path(__file__).resolve().parents[1] / "data_manifests" / "README.md"


def _row(sid: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "subject_id": sid, "ecg_path": f"ecg/{sid}", "cmr_ed_path": f"cmr/{sid}_ed.nii.gz",
        "cmr_es_path": f"cmr/{sid}_es.nii.gz",
        "lvedv_ml": 150.0, "lvesv_ml": 60.0, "lvsv_ml": 90.0, "lvef_pct": 60.0, "lvm_g": 100.0,
        "rvedv_ml": 160.0, "rvesv_ml": 70.0, "rvsv_ml": 90.0, "rvef_pct": 56.25,
        "age_years": 63.0, "sex": 1, "bmi": 27.0, "sbp_mmhg": 135.0, "smoking": 0, "alcohol": 3,
        "af_ever": 0, "af_event": 0, "af_time_years": 6.0,
    }
    row.update(values)
    return row


def _problems(tmp_path: Path, rows: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """Problems of the manifest written as CSV and read back (as `ecgcmr validate` does)."""
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    try:
        read_manifest(path, check_files=False)
    except ManifestError as err:
        return [tuple(p) for p in err.problems.itertuples(index=False)]
    return []


def _ok_rows(n: int = 3) -> list[dict[str, object]]:
    return [_row(f"S{i}") for i in range(n)]


def test_a_plausible_manifest_is_valid(tmp_path: Path) -> None:
    assert _problems(tmp_path, _ok_rows()) == []


@pytest.mark.parametrize("value", ["inf", "-inf"])
@pytest.mark.parametrize("column", ["lvedv_ml", "lvm_g", "rvef_pct", "age_years", "bmi",
                                    "sbp_mmhg", "ecg_qrs_ms"])
def test_non_finite_numbers_are_refused(tmp_path: Path, column: str, value: str) -> None:
    rows = [_row(f"S{i}", ecg_qrs_ms=90.0) for i in range(3)]
    rows[1][column] = value
    problems = _problems(tmp_path, rows)
    assert ("S1", column, f"is not finite (found {float(value)!r})") in problems
    assert all(sid == "S1" for sid, *_ in problems)


@pytest.mark.parametrize("column", sorted(PLAUSIBLE_RANGES))
def test_every_range_column_refuses_values_beyond_its_bounds(tmp_path: Path,
                                                             column: str) -> None:
    lo, hi, _, _ = PLAUSIBLE_RANGES[column]
    rows = _ok_rows(4)
    for row in rows:  # check the range, not the volume consistency
        row.update(lvsv_ml=None, lvef_pct=None, rvsv_ml=None, rvef_pct=None)
        row[column] = lo
    rows[1][column] = hi
    rows[2][column] = hi * 1.01 + 1
    rows[3][column] = lo - 1 if lo > 0 else -1.0
    if column.endswith("esv_ml"):  # an ESV at its upper bound needs an EDV as large
        for row in rows:
            row[column.replace("esv", "edv")] = PLAUSIBLE_RANGES["lvedv_ml"][1]
    flagged = {sid for sid, col, what in _problems(tmp_path, rows)
               if col == column and "outside the plausible range" in what}
    assert flagged == {"S2", "S3"}


def test_lv_mass_of_a_billion_grams_is_refused(tmp_path: Path) -> None:
    rows = _ok_rows()
    rows[0]["lvm_g"] = 1e9
    assert _problems(tmp_path, rows) == [
        ("S0", "lvm_g", "outside the plausible range 5-800 g (found 1000000000.0)")]


def test_every_phenotype_and_covariate_has_a_range() -> None:
    assert set(PHENOTYPES) | {"age_years", "bmi", "sbp_mmhg", "af_time_years"} \
        <= set(PLAUSIBLE_RANGES)


def test_real_disease_is_plausible(tmp_path: Path) -> None:
    dilated = _row("DCM", lvedv_ml=450.0, lvesv_ml=427.0, lvsv_ml=23.0, lvef_pct=5.1)
    hypertrophic = _row("HCM", lvm_g=350.0, lvedv_ml=110.0, lvesv_ml=25.0, lvsv_ml=85.0,
                        lvef_pct=77.3)
    end_stage = _row("LOW", lvedv_ml=300.0, lvesv_ml=294.0, lvsv_ml=6.0, lvef_pct=2.0)
    assert _problems(tmp_path, [dilated, hypertrophic, end_stage, _row("N")]) == []


@pytest.mark.parametrize("column", ["age_years", "bmi", "sbp_mmhg", "af_time_years",
                                    "lvedv_ml"])
def test_a_non_numeric_value_is_named(tmp_path: Path, column: str) -> None:
    rows = _ok_rows()
    rows[2][column] = "abc"
    problems = _problems(tmp_path, rows)
    assert ("S2", column, "is not a number (found 'abc')") in problems


@pytest.mark.parametrize("value", ["inf", "30.5", "365"])
def test_follow_up_time_must_be_finite_and_at_most_30_years(tmp_path: Path, value: str) -> None:
    rows = _ok_rows()
    rows[0]["af_time_years"] = value
    problems = _problems(tmp_path, rows)
    assert [(sid, col) for sid, col, _ in problems] == [("S0", "af_time_years")]


@pytest.mark.parametrize("column", ["lvef_pct", "rvef_pct"])
def test_ef_given_as_a_fraction_is_one_problem_for_the_column(tmp_path: Path,
                                                              column: str) -> None:
    rows = _ok_rows(5)
    for row in rows:
        row[column] = row[column] / 100.0
    rows[4][column] = 62.0  # one value in percent does not hide a column of fractions
    problems = _problems(tmp_path, rows)
    assert len(problems) == 1
    sid, col, what = problems[0]
    assert (sid, col) == ("", column)
    assert "fraction" in what and "multiply" in what and "100" in what


def test_ef_in_percent_tolerates_a_very_low_ef_but_not_one_below_1(tmp_path: Path) -> None:
    rows = _ok_rows(4)
    rows[1].update(lvedv_ml=300.0, lvesv_ml=288.0, lvsv_ml=12.0, lvef_pct=4.0)   # 1-5 %: fine
    rows[2].update(lvedv_ml=300.0, lvesv_ml=298.5, lvsv_ml=1.5, lvef_pct=0.5)    # < 1 %
    problems = _problems(tmp_path, rows)
    assert [(sid, col) for sid, col, _ in problems] == [("S2", "lvef_pct")]
    assert "outside the plausible range 1-95 %" in problems[0][2]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_manifest_without_rows_is_refused(tmp_path: Path, suffix: str) -> None:
    empty = pd.DataFrame(_ok_rows()).iloc[:0]
    path = tmp_path / f"manifest{suffix}"
    if suffix == ".csv":
        empty.to_csv(path, index=False)
    else:
        empty.to_parquet(path)
    with pytest.raises(ManifestError, match="manifest has no subjects"):
        read_manifest(path, check_files=False)
    assert [p.problem for p in validate_manifest(empty, root=tmp_path, check_files=False)] == [
        "manifest has no subjects"]


@pytest.mark.parametrize(("side", "column", "value"), [
    ("lv", "lvsv_ml", 80.0), ("rv", "rvsv_ml", 95.0),     # SV != EDV - ESV (by > 2 mL)
    ("lv", "lvef_pct", 70.0), ("rv", "rvef_pct", 50.0),   # EF != 100 SV / EDV (by > 3 points)
])
def test_stroke_volume_and_ef_must_match_the_volumes(tmp_path: Path, side: str, column: str,
                                                     value: float) -> None:
    rows = _ok_rows()
    rows[1][column] = value
    problems = _problems(tmp_path, rows)
    assert [(sid, col) for sid, col, _ in problems] == [("S1", column)]
    assert f"{side}edv_ml - {side}esv_ml" in problems[0][2]


def test_rounding_is_within_the_consistency_tolerance(tmp_path: Path) -> None:
    # true EDV 150.4, ESV 59.6, SV 90.8, EF 60.37 %, written rounded to whole mL and %
    rows = _ok_rows()
    rows[0].update(lvedv_ml=150.0, lvesv_ml=60.0, lvsv_ml=91.0, lvef_pct=60.0)
    rows[1].update(lvedv_ml=40.0, lvesv_ml=20.0, lvsv_ml=21.0, lvef_pct=52.0)
    assert _problems(tmp_path, rows) == []


def test_readme_documents_the_ranges_table() -> None:
    assert plausible_ranges_markdown() in README.read_text(encoding="utf-8")
