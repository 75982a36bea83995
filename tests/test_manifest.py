"""Manifest schema, validation (all problems at once, by subject) and splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecgcmr.data.manifest import (
    ManifestError,
    assign_splits,
    read_manifest,
    sha256_file,
    validate_manifest,
)
from ecgcmr.errors import DataError


def _touch_subject(root: Path, sid: str) -> dict[str, object]:
    (root / "ecg").mkdir(exist_ok=True)
    (root / "cmr").mkdir(exist_ok=True)
    (root / "ecg" / f"{sid}.hea").write_text("placeholder")
    for phase in ("ed", "es"):
        (root / "cmr" / f"{sid}_{phase}.nii.gz").write_bytes(b"placeholder")
    return {"subject_id": sid, "ecg_path": f"ecg/{sid}", "cmr_ed_path": f"cmr/{sid}_ed.nii.gz",
            "cmr_es_path": f"cmr/{sid}_es.nii.gz", "lvedv_ml": 150.0, "lvesv_ml": 60.0,
            "lvef_pct": 60.0, "sex": 1, "age_years": 60.0}


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    rows = [_touch_subject(tmp_path, f"S{i:03d}") for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_valid_manifest_resolves_paths_and_assigns_splits(manifest_dir: Path) -> None:
    df = read_manifest(manifest_dir / "manifest.csv")
    assert len(df) == 20
    assert Path(df["cmr_ed_path"].iloc[0]).is_absolute()
    assert Path(df["cmr_ed_path"].iloc[0]).is_file()
    assert set(df["split"]) <= {"train", "val", "test"}
    assert df["subject_id"].dtype == object  # ids stay strings ("007" is not 7)


def test_every_problem_is_reported_at_once(manifest_dir: Path) -> None:
    df = pd.read_csv(manifest_dir / "manifest.csv")
    df.loc[1, "subject_id"] = "S000"                     # duplicate id
    df.loc[2, "cmr_es_path"] = "cmr/does_not_exist.nii.gz"
    df.loc[3, "lvef_pct"] = 140.0                        # impossible EF
    df.loc[4, "lvedv_ml"] = -5.0                         # negative volume
    df.loc[5, "sex"] = 3
    df.loc[6, "lvesv_ml"] = 400.0                        # ESV > EDV
    df.to_csv(manifest_dir / "bad.csv", index=False)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest_dir / "bad.csv")
    err = info.value
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    problems = err.problems
    assert set(problems["subject_id"]) >= {"S000", "S002", "S003", "S004", "S005", "S006"}
    assert "does_not_exist" in str(err)
    assert "bad.csv" in str(err)
    assert set(problems["column"]) >= {"subject_id", "cmr_es_path", "lvef_pct", "lvedv_ml",
                                       "sex", "lvesv_ml"}


def test_missing_required_column(manifest_dir: Path) -> None:
    df = pd.read_csv(manifest_dir / "manifest.csv").drop(columns=["cmr_ed_path"])
    problems = validate_manifest(df, root=manifest_dir)
    assert [(p.column, p.problem) for p in problems] == [
        ("cmr_ed_path", "required column is missing")]


def test_missing_manifest_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_checksums_are_verified_when_asked(manifest_dir: Path) -> None:
    df = pd.read_csv(manifest_dir / "manifest.csv")
    df["cmr_ed_sha256"] = [sha256_file(manifest_dir / p) for p in df["cmr_ed_path"]]
    df.loc[0, "cmr_ed_sha256"] = "0" * 64
    df.to_csv(manifest_dir / "sums.csv", index=False)
    read_manifest(manifest_dir / "sums.csv")  # not verified unless asked
    with pytest.raises(ManifestError, match="sha256") as info:
        read_manifest(manifest_dir / "sums.csv", verify_checksums=True)
    assert list(info.value.problems["subject_id"]) == ["S000"]


def test_splits_are_70_15_15_deterministic_and_order_free() -> None:
    ids = [f"P{i:05d}" for i in range(1000)]
    split = assign_splits(ids)
    assert split.value_counts().to_dict() == {"train": 700, "val": 150, "test": 150}
    shuffled = list(reversed(ids))
    again = assign_splits(shuffled)
    assert dict(zip(shuffled, again, strict=True)) == dict(zip(ids, split, strict=True))
    assert not assign_splits(ids, seed=1).equals(split)


def test_growing_a_cohort_keeps_most_subjects_in_their_split() -> None:
    ids = [f"P{i:05d}" for i in range(1000)]
    before = dict(zip(ids, assign_splits(ids), strict=True))
    grown = ids + [f"Q{i:05d}" for i in range(100)]
    after = dict(zip(grown, assign_splits(grown), strict=True))
    moved = sum(before[s] != after[s] for s in ids)
    assert moved < 60  # only subjects near the cut points move


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a", "b"], fractions=(0.5, 0.5, 0.5))
