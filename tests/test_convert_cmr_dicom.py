"""SAX cine DICOM (zip/folder) -> ED/ES NIfTI: geometry, frame choice, malformed input.

Inputs are synthetic cines (``writers.dicom_cmr``) written as DICOM in ``tmp_path``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid
from writers.dicom_cmr import (
    SyntheticCine,
    dicom_bytes,
    oblique_affine,
    sax_cine_datasets,
    synthetic_sax_cine,
    write_sax_cine_dicoms,
    write_zip,
)

from ecgcmr.convert.cmr_dicom import (
    choose_ed_es,
    convert_cmr_dicom_folder,
    convert_cmr_zip,
    estimate_es_frame,
    otsu_threshold,
    read_sax_cine,
)
from ecgcmr.convert.safe_zip import iter_zip_members
from ecgcmr.data.cmr import load_cmr_canonical, load_labels_canonical, read_cmr, read_labels
from ecgcmr.data.writers import write_nifti
from ecgcmr.errors import DataError


@pytest.fixture(scope="module")
def cine() -> SyntheticCine:
    """The default phantom: 8 slices x 64 x 64 x 20 frames, ES at frame 7, double oblique."""
    return synthetic_sax_cine(seed=1)


@pytest.fixture(scope="module")
def small() -> SyntheticCine:
    """A small phantom for the malformed-input tests: 5 slices x 32 x 32 x 6 frames."""
    return synthetic_sax_cine(matrix=(32, 32), n_slices=5, n_frames=6, es_frame=2, seed=2)


def datasets_of(c: SyntheticCine, **options: object) -> list:
    return sax_cine_datasets(c.image, c.affine, trigger_times_ms=c.trigger_times_ms,
                             **options)  # type: ignore[arg-type]


def zip_of(path: Path, datasets: list) -> Path:
    return write_zip(path, [(f"{i:04d}_{ds.SOPInstanceUID}.dcm", dicom_bytes(ds))
                            for i, ds in enumerate(datasets)])


def voxel_corners(shape: tuple[int, ...]) -> np.ndarray:
    """(4, 8) homogeneous voxel coordinates of the outer corners of a 3D grid."""
    return np.array([[i, j, k, 1.0] for i, j, k in itertools.product(
        *[(-0.5, n - 0.5) for n in shape[:3]])]).T


def world_lv_centroid(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(labels == 1).mean(axis=0)
    return (affine @ np.append(idx, 1.0))[:3]


# ============================================================================================
# Round trip
# ============================================================================================


def test_round_trip_shuffled_zip_recovers_voxels_and_affine(tmp_path: Path,
                                                           cine: SyntheticCine) -> None:
    path = write_sax_cine_dicoms(tmp_path / "1000001_20209_2_0.zip", cine.image, cine.affine,
                                 trigger_times_ms=cine.trigger_times_ms, shuffle_seed=3)
    out = read_sax_cine(iter_zip_members(path), source=str(path))
    assert out.image.shape == (64, 64, 8, 20)
    np.testing.assert_array_equal(out.image, cine.image)
    corners = voxel_corners(out.image.shape)
    np.testing.assert_allclose(out.affine @ corners, cine.affine @ corners, atol=1e-3)
    np.testing.assert_allclose(out.spacing_mm, (1.8, 1.8, 10.0), atol=1e-5)
    np.testing.assert_allclose(out.trigger_times_ms, np.tile(cine.trigger_times_ms, (8, 1)))
    assert out.notes == ()


@pytest.mark.parametrize("azimuth, elevation, inplane, reverse_slices", [
    (40.0, 35.0, 25.0, False),
    (-70.0, 62.0, 133.0, False),
    (15.0, -20.0, -80.0, True),   # slice axis against the normal: the reader reorders
    (0.0, 0.0, 0.0, False),       # axial-like: normal along world -x
])
def test_oblique_double_angled_geometry(tmp_path: Path, small: SyntheticCine, azimuth: float,
                                        elevation: float, inplane: float,
                                        reverse_slices: bool) -> None:
    affine = oblique_affine((1.25, 1.5, 8.0), azimuth_deg=azimuth, elevation_deg=elevation,
                            inplane_deg=inplane, origin_mm=(-17.3, 101.9, -250.25))
    if reverse_slices:
        affine[:3, 2] *= -1
    path = write_sax_cine_dicoms(tmp_path / "obl.zip", small.image, affine,
                                 trigger_times_ms=small.trigger_times_ms, shuffle_seed=5)
    out = read_sax_cine(iter_zip_members(path))
    # compare world position -> value: every voxel centre and grid corner lands in place
    expected_image, expected_affine = small.image, affine
    if reverse_slices:
        n = small.image.shape[2]
        expected_image = small.image[:, :, ::-1, :]
        expected_affine = affine.copy()
        expected_affine[:3, 3] += affine[:3, 2] * (n - 1)
        expected_affine[:3, 2] *= -1
    np.testing.assert_array_equal(out.image, expected_image)
    corners = voxel_corners(out.image.shape)
    np.testing.assert_allclose(out.affine @ corners, expected_affine @ corners, atol=1e-3)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path, small: SyntheticCine) -> None:
    slope, intercept = 0.5, -100.0
    physical = small.image * slope + intercept  # exactly representable after storing
    path = write_sax_cine_dicoms(tmp_path / "rescale.zip", physical, small.affine,
                                 trigger_times_ms=small.trigger_times_ms,
                                 rescale_slope=slope, rescale_intercept=intercept)
    out = read_sax_cine(iter_zip_members(path))
    np.testing.assert_array_equal(out.image, physical)


def test_one_series_for_all_slices_and_instance_number_fallback(tmp_path: Path,
                                                                small: SyntheticCine) -> None:
    datasets = datasets_of(small, one_series_per_slice=False)
    for ds in datasets:
        del ds.TriggerTime  # time order from InstanceNumber
    rng = np.random.default_rng(0)
    path = zip_of(tmp_path / "mixed.zip", [datasets[i] for i in rng.permutation(len(datasets))])
    out = read_sax_cine(iter_zip_members(path))
    np.testing.assert_array_equal(out.image, small.image)
    assert out.trigger_times_ms is None


def test_derived_inlinevf_series_is_skipped(tmp_path: Path, small: SyntheticCine) -> None:
    derived = datasets_of(small, one_series_per_slice=False, uid_seed="inline")
    for ds in derived:
        ds.SeriesDescription = "CINE_segmented_SAX_InlineVF"
        ds.SeriesNumber = 500
        ds.PixelData = bytes(len(ds.PixelData))  # other pixels at the same positions
    path = zip_of(tmp_path / "inline.zip", [*derived, *datasets_of(small)])
    out = read_sax_cine(iter_zip_members(path))
    np.testing.assert_array_equal(out.image, small.image)
    assert out.notes == ("skipped 30 images of derived series CINE_segmented_SAX_InlineVF",)


def test_constant_trigger_time_falls_back_to_instance_number(tmp_path: Path,
                                                             small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    for ds in datasets:
        ds.TriggerTime = "0"  # an ungated export: one value for every frame
    path = zip_of(tmp_path / "t0.zip", datasets[::-1])
    np.testing.assert_array_equal(read_sax_cine(iter_zip_members(path)).image, small.image)


def test_non_dicom_members_are_skipped(tmp_path: Path, small: SyntheticCine) -> None:
    members = [(f"{i}.dcm", dicom_bytes(ds)) for i, ds in enumerate(datasets_of(small))]
    path = write_zip(tmp_path / "with_manifest.zip", [("manifest.csv", b"a,b\n1,2\n"), *members])
    out = read_sax_cine(iter_zip_members(path), source="z")
    np.testing.assert_array_equal(out.image, small.image)
    assert out.notes == ("skipped non-DICOM member z: manifest.csv",)


# ============================================================================================
# Conversion to NIfTI
# ============================================================================================


def test_convert_zip_writes_ed_es_that_the_loader_reads_in_place(tmp_path: Path,
                                                                cine: SyntheticCine) -> None:
    path = write_sax_cine_dicoms(tmp_path / "s.zip", cine.image, cine.affine,
                                 trigger_times_ms=cine.trigger_times_ms, shuffle_seed=1)
    result = convert_cmr_zip(path, tmp_path / "out", "1000001")
    assert (result.ed_frame, result.es_method) == (0, "image")
    assert abs(result.es_frame - cine.es_frame) <= 1
    assert result.ed.name == "1000001_ed.nii.gz" and result.es.name == "1000001_es.nii.gz"
    assert result.ed_seg is None and result.es_seg is None
    assert (result.n_slices, result.n_frames) == (8, 20)

    ed, affine = read_cmr(result.ed)
    np.testing.assert_array_equal(ed, cine.image[..., 0])
    corners = voxel_corners(ed.shape)
    np.testing.assert_allclose(affine @ corners, cine.affine @ corners, atol=1e-3)
    header = nib.load(result.ed).header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1

    # the canonical loader sees the same volume as for the truth written directly
    write_nifti(tmp_path, "truth_ed.nii.gz", cine.image[..., 0], cine.affine)
    truth = load_cmr_canonical(tmp_path / "truth_ed.nii.gz")
    converted = load_cmr_canonical(result.ed)
    np.testing.assert_array_equal(converted.array, truth.array)
    np.testing.assert_allclose(converted.affine, truth.affine, atol=1e-4)


def test_labels_4d_nifti_give_exact_es_and_heart_in_place(tmp_path: Path,
                                                         cine: SyntheticCine) -> None:
    path = write_sax_cine_dicoms(tmp_path / "s.zip", cine.image, cine.affine,
                                 trigger_times_ms=cine.trigger_times_ms)
    labels_path = tmp_path / "labels_4d.nii.gz"
    nib.save(nib.Nifti1Image(cine.labels, cine.affine), labels_path)
    result = convert_cmr_zip(path, tmp_path / "out", "S2", labels_4d=labels_path)
    assert (result.ed_frame, result.es_frame, result.es_method) == (0, cine.es_frame, "labels")
    assert cine.es_frame == int(np.argmin(cine.lv_volume_ml))
    es_labels, es_affine = read_labels(result.es_seg)
    np.testing.assert_array_equal(es_labels, cine.labels[..., cine.es_frame])
    np.testing.assert_array_equal(read_labels(result.ed_seg)[0], cine.labels[..., 0])
    # the heart lands in the same place in the world
    np.testing.assert_allclose(world_lv_centroid(es_labels, es_affine),
                               world_lv_centroid(cine.labels[..., cine.es_frame], cine.affine),
                               atol=1e-3)
    canonical = load_labels_canonical(result.es_seg)
    assert canonical.array.shape[0] == 8  # slices first in the canonical layout


def test_per_frame_labels_and_largest_ed_rule(tmp_path: Path, small: SyntheticCine) -> None:
    path = write_sax_cine_dicoms(tmp_path / "s.zip", small.image, small.affine,
                                 trigger_times_ms=small.trigger_times_ms)
    per_frame = {t: small.labels[..., t] for t in (1, 2, 4)}  # frame 0 not labelled
    result = convert_cmr_zip(path, tmp_path / "a", "S3", labels_4d=per_frame)
    assert (result.ed_frame, result.es_frame) == (0, 2)
    assert result.ed_seg is None and result.es_seg is not None
    result = convert_cmr_zip(path, tmp_path / "b", "S3", labels_4d=per_frame,
                             ed_rule="largest")
    assert (result.ed_frame, result.es_frame) == (4, 2)  # largest labelled LV: frame 4
    assert small.lv_volume_ml[4] > small.lv_volume_ml[1]
    assert result.ed_seg is not None


def test_labels_on_another_grid_are_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    path = write_sax_cine_dicoms(tmp_path / "s.zip", small.image, small.affine,
                                 trigger_times_ms=small.trigger_times_ms)
    shifted = small.affine.copy()
    shifted[:3, 3] += 5.0
    labels_path = tmp_path / "labels_4d.nii.gz"
    nib.save(nib.Nifti1Image(small.labels, shifted), labels_path)
    with pytest.raises(DataError, match="not on the cine's grid") as err:
        convert_cmr_zip(path, tmp_path / "out", "S4", labels_4d=labels_path)
    assert "labels_4d.nii.gz" in str(err.value) and "subject S4" in str(err.value)
    bad_values = small.labels.copy()
    bad_values[0, 0, 0, 0] = 7
    with pytest.raises(DataError, match="outside our convention"):
        convert_cmr_zip(path, tmp_path / "out", "S4", labels_4d=bad_values)
    assert not (tmp_path / "out").exists()


def test_convert_folder_with_nested_files_and_symlink(tmp_path: Path,
                                                      small: SyntheticCine) -> None:
    folder = write_sax_cine_dicoms(tmp_path / "dicom" / "CINE_segmented_SAX", small.image,
                                   small.affine, trigger_times_ms=small.trigger_times_ms)
    (tmp_path / "dicom" / "link.dcm").symlink_to(next(folder.iterdir()))
    result = convert_cmr_dicom_folder(tmp_path / "dicom", tmp_path / "out", "S5")
    np.testing.assert_array_equal(read_cmr(result.es)[0], small.image[..., result.es_frame])
    assert any("symbolic link" in note for note in result.notes)


@pytest.mark.parametrize("n_frames, es_frame, noise, seed", [
    (20, 7, 0.02, 0), (25, 10, 0.05, 3), (30, 9, 0.04, 4), (50, 17, 0.03, 5),
])
def test_image_based_es_within_one_frame(n_frames: int, es_frame: int, noise: float,
                                         seed: int) -> None:
    c = synthetic_sax_cine(matrix=(48, 48), n_slices=6, n_frames=n_frames, es_frame=es_frame,
                           noise_sd=noise, seed=seed)
    assert int(np.argmin(c.lv_volume_ml)) == es_frame
    estimate = estimate_es_frame(c.image, (1.8, 1.8, 10.0))
    assert abs(estimate - es_frame) <= 1


def test_choose_ed_es_rules() -> None:
    labels = {t: np.zeros((4, 4, 2), np.uint8) for t in range(4)}
    for t, n in zip(range(4), (9, 5, 3, 7), strict=True):
        labels[t].flat[:n] = 1
    assert choose_ed_es(np.zeros((4, 4, 2, 4)), (1, 1, 1), labels=labels) == (0, 2, "labels")
    assert choose_ed_es(np.zeros((4, 4, 2, 4)), (1, 1, 1), labels=labels,
                        ed_rule="largest") == (0, 2, "labels")
    with pytest.raises(ValueError, match="needs label maps"):
        choose_ed_es(np.zeros((4, 4, 2, 4)), (1, 1, 1), ed_rule="largest")
    with pytest.raises(DataError, match="same frame"):
        choose_ed_es(np.zeros((4, 4, 2, 4)), (1, 1, 1), labels={0: labels[0]})
    with pytest.raises(DataError, match="does not change over time"):
        choose_ed_es(np.ones((4, 4, 2, 4)), (1, 1, 1))


def test_otsu_threshold_separates_two_classes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.03, 1000), rng.normal(0.9, 0.03, 300)])
    assert 0.35 < otsu_threshold(values) < 0.75


# ============================================================================================
# Malformed input
# ============================================================================================


def slice_datasets(datasets: list, k: int, n_frames: int) -> list:
    return datasets[k * n_frames:(k + 1) * n_frames]


def test_missing_slice_is_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    kept = [ds for i, ds in enumerate(datasets) if i // 6 != 2]  # drop slice 2 of 5
    path = zip_of(tmp_path / "gap.zip", kept)
    with pytest.raises(DataError, match="missing slice: a gap of 20.00 mm") as err:
        convert_cmr_zip(path, tmp_path / "out", "S6")
    assert "gap.zip" in str(err.value) and "subject S6" in str(err.value)
    assert "1 slice(s) missing" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_uneven_pitch_is_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    normal = np.cross(np.array(datasets[0].ImageOrientationPatient[:3], float),
                      np.array(datasets[0].ImageOrientationPatient[3:], float))
    for ds in slice_datasets(datasets, 4, 6):  # last slice 3 mm further out
        ds.ImagePositionPatient = [f"{v:.6f}" for v in
                                   np.array(ds.ImagePositionPatient, float) + 3.0 * normal]
    with pytest.raises(DataError, match="uneven slice pitch: 13.00 mm"):
        read_sax_cine(iter_zip_members(zip_of(tmp_path / "uneven.zip", datasets)))


def test_inconsistent_orientation_names_the_file(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    tilted = oblique_affine(azimuth_deg=50.0)  # another plane
    other = sax_cine_datasets(small.image[:, :, :1, :1], tilted, trigger_times_ms=[0.0])[0]
    datasets[13].ImageOrientationPatient = other.ImageOrientationPatient
    path = zip_of(tmp_path / "orient.zip", datasets)
    with pytest.raises(DataError, match="inconsistent ImageOrientationPatient") as err:
        read_sax_cine(iter_zip_members(path), source=str(path))
    assert f"0013_{datasets[13].SOPInstanceUID}.dcm" in str(err.value)
    assert "orient.zip" in str(err.value)


def test_inconsistent_pixel_spacing_is_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    datasets[20].PixelSpacing = ["1.9", "1.8"]
    with pytest.raises(DataError, match="inconsistent PixelSpacing") as err:
        read_sax_cine(iter_zip_members(zip_of(tmp_path / "spacing.zip", datasets)))
    assert "0020_" in str(err.value)


def test_identical_duplicate_is_kept_once(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    path = zip_of(tmp_path / "dup.zip", [*datasets, datasets[8]])  # same bytes, another name
    out = read_sax_cine(iter_zip_members(path))
    np.testing.assert_array_equal(out.image, small.image)
    assert len(out.notes) == 1 and "dropped duplicate" in out.notes[0]


def test_conflicting_duplicate_is_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    twin = datasets_of(small)[8]  # slice 1, frame 2, same series and trigger time
    twin.SOPInstanceUID = generate_uid(entropy_srcs=["twin"])
    twin.PixelData = (np.frombuffer(twin.PixelData, "<u2") + 1).astype("<u2").tobytes()
    path = zip_of(tmp_path / "conflict.zip", [*datasets, twin])
    with pytest.raises(DataError, match="two different images at the same slice and "
                                        "TriggerTime") as err:
        read_sax_cine(iter_zip_members(path), source=str(path))
    assert "conflict.zip" in str(err.value) and "conflicts with" in str(err.value)


def test_repeated_slice_series_keeps_the_latest(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    repeat = slice_datasets(datasets_of(small, uid_seed="repeat"), 3, 6)
    for ds in repeat:
        ds.SeriesNumber = 999
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") // 2).astype("<u2").tobytes()
    out = read_sax_cine(iter_zip_members(zip_of(tmp_path / "repeat.zip", [*datasets, *repeat])))
    np.testing.assert_array_equal(out.image[:, :, 3], np.floor(small.image[:, :, 3] / 2))
    np.testing.assert_array_equal(out.image[:, :, 2], small.image[:, :, 2])
    assert len(out.notes) == 1 and "kept series number 999" in out.notes[0]


def test_unequal_frame_counts_are_rejected(tmp_path: Path, small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    del datasets[6 * 3 + 4]  # slice 3 loses a frame
    with pytest.raises(DataError, match="different numbers of frames") as err:
        read_sax_cine(iter_zip_members(zip_of(tmp_path / "frames.zip", datasets)))
    assert ": 5" in str(err.value) and ": 6" in str(err.value)


def test_single_slice_and_single_frame_are_rejected(tmp_path: Path,
                                                    small: SyntheticCine) -> None:
    datasets = datasets_of(small)
    with pytest.raises(DataError, match="only one slice position: not a short-axis stack"):
        read_sax_cine(iter_zip_members(zip_of(tmp_path / "lax.zip",
                                              slice_datasets(datasets, 0, 6))))
    first_frames = [ds for i, ds in enumerate(datasets) if i % 6 == 0]
    with pytest.raises(DataError, match="a single frame per slice: not a cine"):
        read_sax_cine(iter_zip_members(zip_of(tmp_path / "still.zip", first_frames)))


def test_garbage_truncated_and_empty_inputs(tmp_path: Path, small: SyntheticCine) -> None:
    content = dicom_bytes(datasets_of(small)[0])
    with pytest.raises(DataError, match="unreadable DICOM file .*pixel data") as err:
        read_sax_cine([("cut.dcm", content[:-10])], source="x.zip")
    assert "x.zip: cut.dcm" in str(err.value)
    fake = b"\x00" * 128 + b"DICM" + b"\xff" * 64
    with pytest.warns(UserWarning), pytest.raises(DataError, match="x.zip: fake.dcm: DICOM "
                                                  "image lacks ImagePositionPatient"):
        read_sax_cine([("fake.dcm", fake)], source="x.zip")
    path = write_zip(tmp_path / "nodicom.zip", [("manifest.csv", b"a\n")])
    with pytest.raises(DataError, match="no DICOM images found") as err:
        convert_cmr_zip(path, tmp_path / "out", "S7")
    assert "nodicom.zip" in str(err.value)


def test_missing_geometry_is_rejected(small: SyntheticCine) -> None:
    ds = datasets_of(small)[0]
    del ds.ImagePositionPatient
    with pytest.raises(DataError, match="lacks ImagePositionPatient"):
        read_sax_cine([("a.dcm", dicom_bytes(ds))])
    datasets = datasets_of(small)
    del datasets[7].TriggerTime, datasets[7].InstanceNumber
    members = [(f"{i}.dcm", dicom_bytes(d)) for i, d in enumerate(datasets)]
    with pytest.raises(DataError, match="7.dcm: image lacks InstanceNumber and the slice has "
                                        "no usable TriggerTime"):
        read_sax_cine(members)


def test_unsafe_zip_and_subject_id_write_nothing(tmp_path: Path, small: SyntheticCine) -> None:
    members = [(f"{i}.dcm", dicom_bytes(ds)) for i, ds in enumerate(datasets_of(small))]
    path = write_zip(tmp_path / "scratch" / "evil.zip", [*members, ("../evil.dcm", b"x")])
    before = set(tmp_path.rglob("*"))
    with pytest.raises(DataError, match="unsafe zip member name '../evil.dcm'") as err:
        convert_cmr_zip(path, tmp_path / "out", "S8")
    assert "subject S8" in str(err.value)
    assert set(tmp_path.rglob("*")) == before
    with pytest.raises(DataError, match="invalid subject id"):
        convert_cmr_zip(write_zip(tmp_path / "ok.zip", members), tmp_path / "out", "../S8")
    assert not (tmp_path / "out").exists()
