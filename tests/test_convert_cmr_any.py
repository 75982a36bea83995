"""``ecgcmr convert cmr``: any CMR inputs -> ED/ES NIfTI + convert_report.csv; long-axis refusal.

Every input is written on the fly by the project's writers (``writers.dicom_cmr``,
``writers.public_layouts``); nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from writers.dicom_cmr import (
    RAS_TO_LPS,
    SyntheticCine,
    dicom_bytes,
    sax_cine_datasets,
    synthetic_sax_cine,
    write_sax_cine_dicoms,
    write_zip,
)
from writers.public_layouts import Phantom, box_phantom, write_acdc_patient, write_mnms_subject

from ecgcmr.convert.cmr_dicom import (
    SAX_MAX_ANGLE_DEG,
    convert_cmr_zip,
    long_axis_angle_deg,
    read_sax_cine,
    series_view,
)
from ecgcmr.convert.safe_zip import iter_zip_members
from ecgcmr.data.cmr import LONG_AXIS_RAS
from ecgcmr.data.writers import write_nifti
from ecgcmr.errors import DataError


@pytest.fixture(scope="module")
def small() -> SyntheticCine:
    """4 slices x 32 x 32 x 8 frames, ES at frame 3, double-oblique short-axis geometry."""
    return synthetic_sax_cine(matrix=(32, 32), n_slices=4, n_frames=8, es_frame=3, seed=4)


@pytest.fixture(scope="module")
def box() -> Phantom:
    return box_phantom(shape=(40, 40, 6), n_frames=8, ed_index=0, es_index=3)


def lax_affine(spacing: tuple[float, float, float] = (1.8, 1.8, 8.0)) -> np.ndarray:
    """A vertical long-axis (2-chamber-like) plane: the LV long axis lies in the plane, the
    slice normal is horizontal and perpendicular to it (90 degrees from LONG_AXIS_RAS)."""
    axis = np.asarray(LONG_AXIS_RAS) / np.linalg.norm(LONG_AXIS_RAS)
    normal = np.cross(axis, [0.0, 0.0, 1.0])
    normal /= np.linalg.norm(normal)
    e0 = axis
    e1 = np.cross(normal, e0)
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([e0, e1, normal]) * np.asarray(spacing)
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return affine


def lax_zip(path: Path, c: SyntheticCine, affine: np.ndarray, description: str | None) -> Path:
    """The phantom written as a cine stack with ``affine``; SeriesDescription replaced
    (None: removed)."""
    datasets = sax_cine_datasets(c.image, affine, trigger_times_ms=c.trigger_times_ms)
    for ds in datasets:
        if description is None:
            del ds.SeriesDescription
        else:
            ds.SeriesDescription = description
    return write_zip(path, [(f"{i:04d}.dcm", dicom_bytes(ds)) for i, ds in enumerate(datasets)])


# ============================================================================================
# Long-axis refusal (cmr_dicom, so `ecgcmr manifest ukb` has it too)
# ============================================================================================


def test_long_axis_stack_by_orientation_is_refused(tmp_path: Path, small: SyntheticCine) -> None:
    """A multi-slice stack whose normal is perpendicular to the LV long axis, with a neutral
    SeriesDescription, used to convert silently as if it were short-axis."""
    path = lax_zip(tmp_path / "lax.zip", small, lax_affine(), "CINE_segmented")
    with pytest.raises(DataError, match=r"slice normal is 90 degrees from the LV long axis"):
        read_sax_cine(iter_zip_members(path), source=str(path))
    with pytest.raises(DataError, match="not a short-axis stack") as err:
        convert_cmr_zip(path, tmp_path / "out", "L1")
    assert "L1" in str(err.value) and not (tmp_path / "out").exists()
    # no description at all: the geometry alone decides
    path = lax_zip(tmp_path / "lax_nodesc.zip", small, lax_affine(), None)
    with pytest.raises(DataError, match="long axis"):
        read_sax_cine(iter_zip_members(path))


@pytest.mark.parametrize("description", ["CINE_segmented_LAX_4Ch", "CINE_segmented_LAX_2Ch",
                                         "cine 3 chamber", "LVOT cine", "Long Axis cine"])
def test_long_axis_series_by_description_is_refused(tmp_path: Path, small: SyntheticCine,
                                                    description: str) -> None:
    # short-axis geometry, but the scanner called the series a long-axis view
    path = lax_zip(tmp_path / "d.zip", small, small.affine, description)
    with pytest.raises(DataError, match="long-axis series") as err:
        read_sax_cine(iter_zip_members(path))
    assert description in str(err.value)


def test_single_slice_long_axis_cine_is_refused(tmp_path: Path, small: SyntheticCine) -> None:
    one = SyntheticCine(image=small.image[:, :, :1], labels=small.labels[:, :, :1],
                        affine=lax_affine(), trigger_times_ms=small.trigger_times_ms,
                        es_frame=small.es_frame)
    path = lax_zip(tmp_path / "one.zip", one, lax_affine(), "CINE_segmented")
    with pytest.raises(DataError, match="not a short-axis stack"):
        read_sax_cine(iter_zip_members(path))


def test_short_axis_description_overrides_unusual_geometry_with_a_note(
        tmp_path: Path, small: SyntheticCine) -> None:
    path = lax_zip(tmp_path / "sa.zip", small, lax_affine(), "CINE_segmented_SAX")
    cine = read_sax_cine(iter_zip_members(path))
    assert cine.n_slices == 4
    assert any("SeriesDescription says short axis" in note for note in cine.notes)


def test_long_axis_series_beside_a_short_axis_stack_is_skipped(tmp_path: Path,
                                                               small: SyntheticCine) -> None:
    sax = sax_cine_datasets(small.image, small.affine, trigger_times_ms=small.trigger_times_ms)
    lax = sax_cine_datasets(small.image[:, :, :1], lax_affine(),
                            trigger_times_ms=small.trigger_times_ms, uid_seed="lax")
    for ds in lax:
        ds.SeriesDescription = "CINE_segmented_LAX_4Ch"
    path = write_zip(tmp_path / "both.zip", [(f"{i:04d}.dcm", dicom_bytes(ds))
                                             for i, ds in enumerate([*sax, *lax])])
    cine = read_sax_cine(iter_zip_members(path))
    np.testing.assert_array_equal(cine.image, small.image)
    assert cine.notes == ("skipped 8 images of long-axis series CINE_segmented_LAX_4Ch",)


def test_view_rules() -> None:
    assert series_view("CINE_segmented_SAX_b3") == "short"
    assert series_view("SA_CINE") == "short"
    assert series_view("short axis stack") == "short"
    for lax in ("CINE_segmented_LAX_3Ch", "2CH cine", "four chamber", "LVOT", "cine_la_4ch"):
        assert series_view(lax) == "long", lax
    assert series_view("CINE_segmented") is None
    assert series_view("SAX to LAX") is None  # both: the geometry decides
    sax_normal = np.asarray(LONG_AXIS_RAS) / np.linalg.norm(LONG_AXIS_RAS)

    def orientation(normal_ras: np.ndarray) -> np.ndarray:
        n = RAS_TO_LPS @ normal_ras
        row = np.cross(n, [0.0, 0.0, 1.0])
        row /= np.linalg.norm(row)
        return np.concatenate([row, np.cross(n, row)])

    assert long_axis_angle_deg(orientation(sax_normal)) == pytest.approx(0.0, abs=1e-6)
    assert long_axis_angle_deg(orientation(-sax_normal)) == pytest.approx(0.0, abs=1e-6)
    # a plain transverse (axial) or sagittal stack is not short-axis either: 54.7 degrees
    axial = long_axis_angle_deg(np.array([1.0, 0, 0, 0, 1.0, 0]))
    sagittal = long_axis_angle_deg(np.array([0, 1.0, 0, 0, 0, -1.0]))
    assert axial == pytest.approx(54.7356, abs=1e-3) == sagittal
    assert axial > SAX_MAX_ANGLE_DEG


# ============================================================================================
# convert_cmrs: a folder mixing every kind of input
# ============================================================================================


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, small: SyntheticCine, box: Phantom) -> Path:
    """A SAX zip, a DICOM folder (+ a long-axis view of the same study), a long-axis zip, an
    ACDC patient, an M&Ms subject (+ its CSV), two 4D NIfTI (one with labels and sidecar) and
    a text file."""
    root = tmp_path_factory.mktemp("mixed")
    write_sax_cine_dicoms(root / "1000001_20209_2_0.zip", small.image, small.affine,
                          trigger_times_ms=small.trigger_times_ms, shuffle_seed=1)
    sax = sax_cine_datasets(small.image, small.affine, trigger_times_ms=small.trigger_times_ms,
                            uid_seed="folder")
    lax = sax_cine_datasets(small.image[:, :, :1], lax_affine(),
                            trigger_times_ms=small.trigger_times_ms, uid_seed="folder-lax")
    for ds in lax:
        ds.StudyInstanceUID = sax[0].StudyInstanceUID
        ds.SeriesDescription = "CINE_segmented_LAX_4Ch"
    (root / "study7").mkdir()
    for i, ds in enumerate([*sax, *lax]):
        (root / "study7" / f"IM{i:04d}").write_bytes(dicom_bytes(ds))
    lax_zip(root / "lax_cine.zip", small, lax_affine(), "CINE_segmented")
    write_acdc_patient(root / "acdc", "patient001", box.cine, box.labels, box.affine,
                       box.ed_index + 1, box.es_index + 1)
    write_mnms_subject(root / "mnms", "A1B2C3", box.cine, box.labels, box.affine,
                       box.ed_index, box.es_index, csv_path=root / "mnms" / "info.csv")
    write_nifti(root, "cine.nii.gz", small.image, small.affine)
    write_nifti(root, "labelled.nii.gz", small.image, small.affine)
    write_nifti(root, "labelled_seg.nii.gz", small.labels, small.affine)
    (root / "labelled.json").write_text(json.dumps({"ED": 1}))
    (root / "notes.txt").write_text("scanner log\n")
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, mixed: Path) -> tuple[Path, pd.DataFrame]:
    from ecgcmr.convert.cmr_any import convert_cmrs

    out = tmp_path_factory.mktemp("out")
    return out, convert_cmrs([mixed], out, progress=False)


def by_input(report: pd.DataFrame, name: str, status: str | None = None) -> pd.Series:
    rows = report[report["input"].map(lambda s: Path(s.split(" [")[0]).name == name)
                  & ((report["status"] == status) if status else True)]
    assert len(rows) == 1, (name, report["input"].tolist())
    return rows.iloc[0]


def test_mixed_folder_converts_each_cmr_and_reports_the_rest(
        converted: tuple[Path, pd.DataFrame], mixed: Path, small: SyntheticCine,
        box: Phantom) -> None:
    out, report = converted
    assert list(report.columns) == ["input", "format", "status", "record", "reason"]
    assert pd.read_csv(out / "convert_report.csv", keep_default_na=False).shape == report.shape
    status = sorted((Path(r.input.split(" [")[0]).name, r.format, r.status)
                    for r in report.itertuples())
    assert status == sorted([
        ("1000001_20209_2_0.zip", "DICOM zip", "converted"),
        ("study7", "DICOM series", "converted"),   # one row per plane of the study:
        ("study7", "DICOM series", "skipped"),     # its 4-chamber view is refused
        ("lax_cine.zip", "DICOM zip", "skipped"),
        ("patient001", "ACDC patient", "converted"),
        ("A1B2C3", "M&Ms subject", "converted"),
        ("cine.nii.gz", "NIfTI 4D", "converted"),
        ("labelled.nii.gz", "NIfTI 4D", "converted"),
        ("notes.txt", "", "skipped"),
    ])
    study = report[report["format"] == "DICOM series"].set_index("status")
    assert len(study) == 2 and "long-axis series (SeriesDescription CINE_segmented_LAX_4Ch)" \
        in study.loc["skipped", "reason"]
    assert "CINE_segmented_LAX_4Ch" in study.loc["skipped", "input"]
    assert "not a CMR input" in by_input(report, "notes.txt")["reason"]
    assert "degrees from the LV long axis" in by_input(report, "lax_cine.zip")["reason"]
    # the M&Ms CSV and the NIfTI companions were used, not reported
    names = {Path(s.split(" [")[0]).name for s in report["input"]}
    assert not names & {"info.csv", "labelled_seg.nii.gz", "labelled.json"}

    # files: <out>/<name>_ed/_es (+ _seg where labels were given), on the source grids
    def load(name: str) -> nib.Nifti1Image:
        return nib.load(out / name)

    for name in ("1000001_20209_2_0", "study7", "cine"):
        assert not (out / f"{name}_ed_seg.nii.gz").exists()
        row = by_input(report, f"{name}.zip" if name.startswith("1000") else
                       f"{name}.nii.gz" if name == "cine" else name, "converted")
        assert row["record"] == str(out / name)
        ed, es = (int(v) for v in re.findall(r"ED frame (\d+), ES frame (\d+)",
                                             row["reason"])[0])
        assert ed == 0 and abs(es - small.es_frame) <= 1 and "image-based estimate" in row["reason"]
        np.testing.assert_array_equal(load(f"{name}_es.nii.gz").get_fdata(),
                                      small.image[..., es])
    np.testing.assert_allclose(load("cine_ed.nii.gz").affine, small.affine, atol=1e-4)
    # labels + sidecar: ED from the sidecar, ES the smallest LV blood pool
    row = by_input(report, "labelled.nii.gz")
    assert "ED frame 1, ES frame 3" in row["reason"] and "ED: sidecar" in row["reason"]
    np.testing.assert_array_equal(load("labelled_es_seg.nii.gz").get_fdata(),
                                  small.labels[..., small.es_frame])
    # collections: their own ED/ES, labels in our convention
    for name in ("patient001", "A1B2C3"):
        np.testing.assert_array_equal(load(f"{name}_es_seg.nii.gz").get_fdata(),
                                      box.labels[..., box.es_index])
        np.testing.assert_array_equal(load(f"{name}_ed.nii.gz").get_fdata(),
                                      box.cine[..., box.ed_index])
    assert "from info.csv" in by_input(report, "A1B2C3")["reason"]
    assert not list(out.glob("lax_cine*"))


def test_mnms_subject_without_csv_takes_frames_from_its_labels(tmp_path: Path) -> None:
    from ecgcmr.convert.cmr_any import convert_cmrs

    ph = box_phantom(n_frames=8, ed_index=2, es_index=5)
    # the CSV is neither an input nor in the two folders above the subject
    folder = write_mnms_subject(tmp_path / "a" / "b" / "in", "Z9Z9Z9", ph.cine, ph.labels,
                                ph.affine, ph.ed_index, ph.es_index,
                                csv_path=tmp_path / "elsewhere.csv")
    report = convert_cmrs([folder], tmp_path / "out", progress=False)
    assert report["status"].tolist() == ["converted"]
    assert "ED frame 2, ES frame 5" in report["reason"][0] and "no M&Ms CSV" in report["reason"][0]


def test_bad_nifti_inputs_are_reported_and_leave_nothing(tmp_path: Path,
                                                         small: SyntheticCine) -> None:
    from ecgcmr.convert.cmr_any import convert_cmrs

    src = tmp_path / "in"
    src.mkdir()
    write_nifti(src, "ed_only.nii.gz", small.image[..., 0], small.affine)       # 3D
    write_nifti(src, "one_slice.nii.gz", small.image[:, :, :1], small.affine)   # 1 slice
    write_nifti(src, "sub_LA_CINE.nii.gz", small.image, small.affine)           # named LAX
    write_nifti(src, "same.nii.gz", small.image, small.affine)
    (src / "same.json").write_text(json.dumps({"ED": 3, "ES": 3}))
    write_nifti(src, "orphan_gt.nii.gz", small.labels, small.affine)
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    report = convert_cmrs([src, tmp_path / "missing.zip"], tmp_path / "out", progress=False)
    reasons = {Path(r.input).name: r.reason for r in report.itertuples()}
    assert report["status"].eq("skipped").all()
    assert "a 3D volume (one phase)" in reasons["ed_only.nii.gz"]
    assert "only one slice: not a short-axis stack" in reasons["one_slice.nii.gz"]
    assert "file name says long axis" in reasons["sub_LA_CINE.nii.gz"]
    assert "ED and ES fall on the same frame" in reasons["same.nii.gz"]
    assert "label map without its cine" in reasons["orphan_gt.nii.gz"]
    assert "unreadable NIfTI" in reasons["broken.nii.gz"]
    assert reasons["missing.zip"] == "not found"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["convert_report.csv"]


# ============================================================================================
# CLI
# ============================================================================================


def test_cli_convert_cmr_summary_and_exit_codes(tmp_path: Path, mixed: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from ecgcmr.cli import main

    out = tmp_path / "out"
    assert main(["convert", "cmr", str(mixed / "cine.nii.gz"), str(mixed / "notes.txt"),
                 "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"converted 1 of 2 inputs; 1 skipped, see {out / 'convert_report.csv'}")
    assert (out / "cine_ed.nii.gz").is_file() and (out / "cine_es.nii.gz").is_file()
    # nothing converted: exit 2, the report still written
    assert main(["convert", "cmr", str(mixed / "notes.txt"), str(mixed / "lax_cine.zip"),
                 "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "converted 0 of 2 inputs; 2 skipped" in capsys.readouterr().out
    assert (tmp_path / "none" / "convert_report.csv").is_file()
