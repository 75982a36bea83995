"""The synthetic cohort on disk: real formats, valid manifest, deterministic, resumable."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgcmr.constants import LEADS, PHENOTYPES
from ecgcmr.data.manifest import read_manifest
from ecgcmr.errors import DataError
from ecgcmr.synth.cohort import cohort_spec, generate_cohort


def test_files_are_in_the_real_formats(tiny_cohort: Path) -> None:
    df = read_manifest(tiny_cohort)
    row = df.iloc[0]
    signal, fields = wfdb.rdsamp(row["ecg_path"])
    assert signal.shape == (5000, 12)
    assert fields["fs"] == 500
    assert fields["sig_name"] == list(LEADS)
    assert fields["units"] == ["mV"] * 12
    for col in ("cmr_ed_path", "cmr_es_path", "cmr_ed_seg_path", "cmr_es_seg_path"):
        img = nib.load(row[col])
        assert img.ndim == 3
        assert img.header.get_xyzt_units()[0] == "mm"
        zooms = sorted(img.header.get_zooms())
        assert zooms[0] == pytest.approx(1.8, abs=0.5) and zooms[-1] == pytest.approx(10.0)
    labels = nib.load(row["cmr_ed_seg_path"]).get_fdata()
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_manifest_holds_measured_phenotypes_and_outcomes(tiny_cohort: Path) -> None:
    df = pd.read_csv(tiny_cohort)
    for col in (*PHENOTYPES, "age_years", "sex", "bmi", "sbp_mmhg", "smoking", "alcohol",
                "af_ever", "af_event", "af_time_years", "split"):
        assert col in df.columns, col
    assert np.allclose(df["lvsv_ml"], df["lvedv_ml"] - df["lvesv_ml"], atol=1e-6)
    assert np.allclose(df["lvef_pct"], 100 * df["lvsv_ml"] / df["lvedv_ml"], atol=1e-6)
    latent = pd.read_csv(tiny_cohort.parent / "latent" / "latent_state.csv")
    assert "archetype" not in df.columns and "archetype" in latent.columns  # hidden truth


def _generate(folder: Path, n: int, workers: int) -> Path:
    spec = cohort_spec("tiny", seed=3, n_subjects=n)
    return generate_cohort(folder, spec, workers=workers, progress=False)


def _same_cohort(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
    for ecg in sorted((a.parent / "ecg").glob("*.dat")):
        assert filecmp.cmp(ecg, b.parent / "ecg" / ecg.name, shallow=False), ecg.name
    for nii in sorted((a.parent / "cmr").glob("*.nii.gz")):
        left, right = nib.load(nii), nib.load(b.parent / "cmr" / nii.name)
        np.testing.assert_array_equal(left.get_fdata(), right.get_fdata())
        np.testing.assert_array_equal(left.affine, right.affine)


def test_same_seed_same_cohort_whatever_the_workers(tmp_path: Path) -> None:
    _same_cohort(_generate(tmp_path / "one", 6, workers=1), _generate(tmp_path / "two", 6, 2))


def test_interrupted_generation_resumes_to_the_same_cohort(tmp_path: Path) -> None:
    full = _generate(tmp_path / "full", 6, workers=1)
    partial = tmp_path / "partial"
    _generate(partial, 6, workers=1)
    # simulate a crash: two subjects never finished, one left half-written files behind
    for sid in ("SYN000002", "SYN000004"):
        (partial / ".rows" / f"{sid}.json").unlink()
    (partial / "cmr" / "SYN000004_es.nii.gz").write_bytes(b"half a file")
    (partial / "manifest.csv").unlink()
    _same_cohort(full, _generate(partial, 6, workers=1))


def test_a_folder_holding_another_cohort_is_refused(tmp_path: Path) -> None:
    _generate(tmp_path, 2, workers=1)
    with pytest.raises(DataError, match="different synthetic cohort"):
        _generate(tmp_path, 3, workers=1)


def test_different_seeds_differ(tmp_path: Path) -> None:
    a = pd.read_csv(_generate(tmp_path / "a", 3, 1))
    spec = cohort_spec("tiny", seed=4, n_subjects=3)
    b = pd.read_csv(generate_cohort(tmp_path / "b", spec, progress=False))
    assert not np.allclose(a["lvedv_ml"], b["lvedv_ml"])


def test_cohort_json_records_the_spec(tiny_cohort: Path) -> None:
    spec = json.loads((tiny_cohort.parent / "cohort.json").read_text())
    assert spec["n_subjects"] == 16 and spec["seed"] == 7


def test_missing_subject_rows_name_the_subject(tmp_path: Path) -> None:
    from ecgcmr.synth.cohort import write_manifest

    manifest = _generate(tmp_path, 2, workers=1)
    shutil.rmtree(manifest.parent / ".rows")
    spec = cohort_spec("tiny", seed=3, n_subjects=2)
    with pytest.raises(DataError, match="SYN000000"):
        write_manifest(manifest.parent, spec)
