"""ACDC and M&Ms layouts -> ED/ES NIfTI in our label convention, phenotypes, CMR-only manifest.

Inputs are box phantoms (``writers.public_layouts``) whose label volumes are known in
closed form, written in each collection's layout in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from writers.public_layouts import (
    Phantom,
    box_phantom,
    write_acdc_patient,
    write_mnms_subject,
)

from ecgcmr.constants import LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD, PHENOTYPES
from ecgcmr.convert.public_cmr import convert_acdc, convert_mnms
from ecgcmr.data.manifest import ManifestError, read_manifest
from ecgcmr.errors import DataError

PID, CODE = "patient001", "A0S9V9"


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return box_phantom(ed_index=0, es_index=4)


def expected_phenotypes(ph: Phantom) -> dict[str, float]:
    """Closed form: voxel counts of the box geometry x voxel volume (1.5625^2 x 10 mm^3)."""
    voxel_ml = 1.5625 * 1.5625 * 10.0 / 1000.0
    ed, es = ph.geometry.voxel_counts("ed"), ph.geometry.voxel_counts("es")
    lvedv, lvesv = ed[LABEL_LV_BLOOD] * voxel_ml, es[LABEL_LV_BLOOD] * voxel_ml
    rvedv, rvesv = ed[LABEL_RV_BLOOD] * voxel_ml, es[LABEL_RV_BLOOD] * voxel_ml
    return {"lvedv_ml": lvedv, "lvesv_ml": lvesv, "lvsv_ml": lvedv - lvesv,
            "lvef_pct": 100 * (lvedv - lvesv) / lvedv, "lvm_g": ed[LABEL_LV_MYO] * voxel_ml * 1.05,
            "rvedv_ml": rvedv, "rvesv_ml": rvesv, "rvsv_ml": rvedv - rvesv,
            "rvef_pct": 100 * (rvedv - rvesv) / rvedv}


def test_phantom_geometry_is_what_the_closed_form_says(phantom: Phantom) -> None:
    for phase, t in (("ed", phantom.ed_index), ("es", phantom.es_index)):
        counts = phantom.geometry.voxel_counts(phase)
        for label, n in counts.items():
            assert int((phantom.labels[..., t] == label).sum()) == n
    # hand-computed: 4 slices x 16 x 16 LV voxels x 24.4140625 mm^3 = 25 mL
    assert expected_phenotypes(phantom)["lvedv_ml"] == 25.0


def write_acdc(root: Path, ph: Phantom, pid: str = PID) -> Path:
    return write_acdc_patient(root / "training", pid, ph.cine, ph.labels, ph.affine,
                              ph.ed_index + 1, ph.es_index + 1)


def write_mnms(root: Path, ph: Phantom, code: str = CODE, **kw: object) -> Path:
    return write_mnms_subject(root / "Training" / "Labeled", code, ph.cine, ph.labels,
                              ph.affine, ph.ed_index, ph.es_index,
                              csv_path=root / "info.csv", **kw)


def check_converted(manifest: Path, ph: Phantom, sid: str) -> pd.Series:
    df = read_manifest(manifest, require_ecg=False)
    row = df.set_index("subject_id").loc[sid]
    for name, value in expected_phenotypes(ph).items():
        assert row[name] == pytest.approx(value, rel=1e-12), name
    for phase, t in (("ed", ph.ed_index), ("es", ph.es_index)):
        image = nib.load(row[f"cmr_{phase}_path"])
        labels = nib.load(row[f"cmr_{phase}_seg_path"])
        assert image.ndim == 3 and labels.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(image.dataobj), ph.cine[..., t])
        np.testing.assert_array_equal(np.asarray(labels.dataobj), ph.labels[..., t])  # ours
        np.testing.assert_allclose(image.affine, ph.affine, atol=1e-5)
    return row


# --- ACDC ------------------------------------------------------------------------------------


def test_acdc_round_trip(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    # the writer stores ACDC's own values: LV cavity 3, RV cavity 1
    gt = np.asarray(nib.load(folder / f"{PID}_frame01_gt.nii.gz").dataobj)
    assert (gt == 3).sum() == (phantom.labels[..., 0] == LABEL_LV_BLOOD).sum()
    assert (gt == 1).sum() == (phantom.labels[..., 0] == LABEL_RV_BLOOD).sum()
    manifest = convert_acdc(tmp_path / "acdc", tmp_path / "out")
    row = check_converted(manifest, phantom, PID)
    assert row["collection"] == "acdc" and row["group"] == "NOR"
    assert (row["source_ed_frame"], row["source_es_frame"]) == (1, 5)  # ACDC is 1-based
    assert row["height_cm"] == 175.0 and row["weight_kg"] == 75.0


def test_acdc_frames_taken_from_the_cine_when_frame_files_are_absent(
        tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    for frame in (1, 5):
        (folder / f"{PID}_frame{frame:02d}.nii.gz").unlink()
    check_converted(convert_acdc(tmp_path / "acdc", tmp_path / "out"), phantom, PID)


def _acdc_error(root: Path, out: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        convert_acdc(root, out)
    message = str(info.value)
    assert PID in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_acdc_info_without_es(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    info = folder / "Info.cfg"
    info.write_text("".join(ln + "\n" for ln in info.read_text().splitlines()
                            if not ln.startswith("ES")))
    _acdc_error(tmp_path / "acdc", tmp_path / "out", "Info.cfg", "no ES frame")


@pytest.mark.parametrize("ed", ["11", "0"])
def test_acdc_frame_out_of_range(tmp_path: Path, phantom: Phantom, ed: str) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    info = folder / "Info.cfg"
    info.write_text(info.read_text().replace("ED: 1\n", f"ED: {ed}\n"))
    _acdc_error(tmp_path / "acdc", tmp_path / "out", "Info.cfg", "ED frame out of range",
                "1..10", f"found {ed}")


def test_acdc_label_outside_the_label_set(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    gt_path = folder / f"{PID}_frame05_gt.nii.gz"
    gt = np.asarray(nib.load(gt_path).dataobj).copy()
    gt[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(gt, phantom.affine), gt_path)
    _acdc_error(tmp_path / "acdc", tmp_path / "out", gt_path.name,
                "label values outside the ACDC label set", "[4]")


def test_acdc_label_map_shape_differs(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    gt_path = folder / f"{PID}_frame01_gt.nii.gz"
    gt = np.asarray(nib.load(gt_path).dataobj)[:, :, :5]
    nib.save(nib.Nifti1Image(gt, phantom.affine), gt_path)
    _acdc_error(tmp_path / "acdc", tmp_path / "out", gt_path.name,
                "label map shape differs from the image", "(48, 48, 5)")


def test_acdc_label_map_affine_differs(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    gt_path = folder / f"{PID}_frame01_gt.nii.gz"
    shifted = phantom.affine.copy()
    shifted[0, 3] += 1.5625  # one voxel off
    nib.save(nib.Nifti1Image(np.asarray(nib.load(gt_path).dataobj), shifted), gt_path)
    _acdc_error(tmp_path / "acdc", tmp_path / "out", gt_path.name, "affine differs")


def test_acdc_cine_that_is_3d(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_acdc(tmp_path / "acdc", phantom)
    cine = folder / f"{PID}_4d.nii.gz"
    nib.save(nib.Nifti1Image(phantom.cine[..., 0], phantom.affine), cine)
    _acdc_error(tmp_path / "acdc", tmp_path / "out", cine.name, "4D expected but 3D found")


def test_acdc_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no ACDC patient folders"):
        convert_acdc(tmp_path, tmp_path / "out")


# --- M&Ms ------------------------------------------------------------------------------------


def test_mnms_round_trip(tmp_path: Path, phantom: Phantom) -> None:
    write_mnms(tmp_path / "mnms", phantom, vendor="B", vendor_name="Philips", centre=3,
               sex="F", age=61)
    manifest = convert_mnms(tmp_path / "mnms", tmp_path / "mnms" / "info.csv", tmp_path / "out")
    row = check_converted(manifest, phantom, CODE)
    assert row["collection"] == "mnms"
    assert (row["source_ed_frame"], row["source_es_frame"]) == (0, 4)  # M&Ms is 0-based
    assert (row["vendor"], row["vendor_name"], str(row["centre"])) == ("B", "Philips", "3")
    assert row["sex"] == 0 and row["age_years"] == 61  # F -> 0 (UK Biobank field 31)


def test_mnms_subject_without_ground_truth_is_images_only(tmp_path: Path,
                                                          phantom: Phantom) -> None:
    folder = write_mnms(tmp_path / "mnms", phantom)
    (folder / f"{CODE}_sa_gt.nii.gz").unlink()
    manifest = convert_mnms(tmp_path / "mnms", tmp_path / "mnms" / "info.csv", tmp_path / "out")
    row = read_manifest(manifest, require_ecg=False).iloc[0]
    assert Path(row["cmr_ed_path"]).is_file() and row["cmr_ed_seg_path"] is None
    assert all(np.isnan(row[name]) for name in PHENOTYPES)


def _mnms_error(root: Path, out: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        convert_mnms(root, root / "info.csv", out)
    message = str(info.value)
    assert CODE in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _edit_csv(csv_path: Path, column: str, value: str) -> None:
    df = pd.read_csv(csv_path, dtype=str)
    df[column] = value
    df.to_csv(csv_path, index=False)


def test_mnms_frame_out_of_range(tmp_path: Path, phantom: Phantom) -> None:
    write_mnms(tmp_path / "mnms", phantom)
    _edit_csv(tmp_path / "mnms" / "info.csv", "ES", "10")  # 10 frames: indices 0..9
    _mnms_error(tmp_path / "mnms", tmp_path / "out", "info.csv", "ES frame out of range",
                "0..9", "found 10")


def test_mnms_ed_equal_to_es(tmp_path: Path, phantom: Phantom) -> None:
    write_mnms(tmp_path / "mnms", phantom)
    _edit_csv(tmp_path / "mnms" / "info.csv", "ES", "0")
    _mnms_error(tmp_path / "mnms", tmp_path / "out", "ED and ES are the same frame")


def test_mnms_cine_that_is_3d(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_mnms(tmp_path / "mnms", phantom)
    nib.save(nib.Nifti1Image(phantom.cine[..., 0], phantom.affine), folder / f"{CODE}_sa.nii.gz")
    _mnms_error(tmp_path / "mnms", tmp_path / "out", f"{CODE}_sa.nii.gz",
                "4D expected but 3D found")


def test_mnms_label_map_shape_and_values(tmp_path: Path, phantom: Phantom) -> None:
    folder = write_mnms(tmp_path / "mnms", phantom)
    gt_path = folder / f"{CODE}_sa_gt.nii.gz"
    gt = np.asarray(nib.load(gt_path).dataobj)
    nib.save(nib.Nifti1Image(gt[..., :8], phantom.affine), gt_path)  # 8 frames, cine has 10
    _mnms_error(tmp_path / "mnms", tmp_path / "out", gt_path.name,
                "label map shape differs from the image")
    bad = gt.copy()
    bad[1, 1, 1, phantom.es_index] = 7
    nib.save(nib.Nifti1Image(bad, phantom.affine), gt_path)
    _mnms_error(tmp_path / "mnms", tmp_path / "out", gt_path.name,
                "label values outside the M&Ms label set", "[7]")


def test_mnms_subject_missing_from_the_csv(tmp_path: Path, phantom: Phantom) -> None:
    write_mnms(tmp_path / "mnms", phantom)
    _edit_csv(tmp_path / "mnms" / "info.csv", "External code", "OTHER1")
    _mnms_error(tmp_path / "mnms", tmp_path / "out", "info.csv", "not in the M&Ms information CSV")


def test_mnms_csv_without_frame_columns(tmp_path: Path, phantom: Phantom) -> None:
    write_mnms(tmp_path / "mnms", phantom)
    csv_path = tmp_path / "mnms" / "info.csv"
    pd.read_csv(csv_path).drop(columns=["ED"]).to_csv(csv_path, index=False)
    with pytest.raises(DataError, match=r"info\.csv.*lacks column\(s\) ED"):
        convert_mnms(tmp_path / "mnms", csv_path, tmp_path / "out")


# --- the CMR-only manifest -------------------------------------------------------------------


def test_cmr_only_manifest_validates_as_its_kind_and_is_refused_as_paired(
        tmp_path: Path, phantom: Phantom) -> None:
    write_acdc(tmp_path / "acdc", phantom)
    manifest = convert_acdc(tmp_path / "acdc", tmp_path / "out")
    assert read_manifest(manifest).attrs["kind"] == "cmr_only"
    with pytest.raises(ManifestError, match=r"\[ecg_path\]: path is empty"):
        read_manifest(manifest, "paired")  # the paired pipeline still needs an ECG per subject
    df = read_manifest(manifest, require_ecg=False)
    assert df["ecg_path"].isna().all() and len(df) == 1
    # without the column at all, and with a non-empty ECG path that does not exist
    raw = pd.read_csv(manifest, dtype={"subject_id": str})
    raw.drop(columns=["ecg_path"]).to_csv(tmp_path / "out" / "no_ecg.csv", index=False)
    read_manifest(tmp_path / "out" / "no_ecg.csv", require_ecg=False)
    raw.assign(ecg_path="ecg/missing").to_csv(tmp_path / "out" / "bad_ecg.csv", index=False)
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(tmp_path / "out" / "bad_ecg.csv", require_ecg=False)


# --- stage A on a public collection -------------------------------------------------------------


def test_a_cmr_only_collection_trains_stage_a_and_never_enters_an_ecg_stage(
        tmp_path: Path, phantom: Phantom, capsys: pytest.CaptureFixture[str]) -> None:
    from ecgcmr.cli import main
    from ecgcmr.config import get_profile
    from ecgcmr.data.cache import open_cache
    from ecgcmr.data.dataset import PairedDataset
    from ecgcmr.pretrain import train_stage, with_epochs

    for i in range(24):     # enough subjects that every split has some
        write_acdc(tmp_path / "acdc", phantom, pid=f"patient{i:03d}")
    manifest = convert_acdc(tmp_path / "acdc", tmp_path / "out")
    cache_dir = tmp_path / "cache"
    # a paired-data run refuses the manifest; --cmr-only (its own kind) accepts it
    assert main(["preprocess", "--manifest", str(manifest), "--cache-dir", str(cache_dir),
                 "--kind", "paired"]) != 0
    assert "ecg_path" in capsys.readouterr().err
    assert main(["preprocess", "--manifest", str(manifest), "--cache-dir", str(cache_dir),
                 "--cmr-only", "--workers", "1"]) == 0
    cache = open_cache(cache_dir)
    assert cache.index["ok"].all() and not cache.index["has_ecg"].any()
    assert len(PairedDataset(cache, "train", fields=("cmr_ed",))) > 0
    assert len(PairedDataset(cache, None, fields=("ecg",))) == 0
    cfg = with_epochs(get_profile("tiny").stage_config("cmr", seed=0, phase="ed",
                                                      batch_size=4), 1)
    result = train_stage(cache, cfg, tmp_path / "stage_a", progress=False)
    assert np.isfinite(result.best_val_loss)
