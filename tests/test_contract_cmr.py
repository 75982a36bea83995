"""The CMR half of the input contract: inputs that used to load silently and now raise a
DataError naming subject, file, what was expected and what was found, and the legitimate
volumes that must still load. Every NIfTI file is built in tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from ecgcmr.data import cmr, read_manifest
from ecgcmr.data.cmr import CmrGrid, load_cmr, load_cmr_canonical, load_labels_canonical
from ecgcmr.errors import DataError
from ecgcmr.synth.cohort import cohort_spec, generate_cohort

SUBJECT = "C1"
SHAPE = (12, 64, 64)  # file layout: slices first (the affine's 10 mm axis), then rows, columns
#: file axis 0 = slices (10 mm, towards the feet), 1 and 2 in-plane (1.8 mm)
AFFINE = np.array([[0, 0, -1.8, 10.0], [0, -1.8, 0, 20.0], [-10.0, 0, 0, 30.0], [0, 0, 0, 1]])


def textured(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth random volume 0..~300 with no symmetry."""
    vol = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=2.0)
    return (100 * (vol - vol.min()) / vol.std()).astype(np.float32)


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def assert_refused(path: Path, *fragments: str) -> str:
    """load_cmr_canonical raises a DataError naming subject, file, expected, found, fragments."""
    with pytest.raises(DataError) as info:
        load_cmr_canonical(path, subject=SUBJECT)
    message = str(info.value)
    assert f"subject {SUBJECT}" in message and path.name in message, message
    assert "expected" in message and "found" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- 1. near-constant volumes ------------------------------------------------------------------


def _constant_plus_noise() -> np.ndarray:
    return (100 + 1e-3 * np.random.default_rng(1).normal(size=SHAPE)).astype(np.float32)


def _almost_all_equal() -> np.ndarray:
    vol = np.full(SHAPE, 100.0, np.float32)
    vol.flat[np.random.default_rng(2).choice(vol.size, 40, replace=False)] = 500.0  # 0.08 %
    return vol


def _zeros_and_a_few_ones() -> np.ndarray:
    vol = np.zeros(SHAPE, np.int16)
    vol[5, 30:33, 30:33] = 1
    return vol


@pytest.mark.parametrize("make", [_constant_plus_noise, _almost_all_equal,
                                  _zeros_and_a_few_ones])
def test_near_constant_volume_is_refused(tmp_path: Path, make) -> None:  # noqa: ANN001
    path = save(tmp_path / "flat.nii.gz", make())
    assert_refused(path, "near-constant CMR volume", "no usable image contrast")


def test_low_contrast_and_integer_volumes_still_load(tmp_path: Path) -> None:
    tex = textured()
    volumes = {
        "dim.nii.gz": 1000 + 0.2 * tex,                              # ~5 % contrast on an offset
        "uint8.nii.gz": np.round(tex / tex.max() * 255).astype(np.uint8),
        "int16.nii.gz": np.round(tex * 10).astype(np.int16),
        "tiny_units.nii.gz": (tex * 1e-6).astype(np.float32),         # arbitrary units
        "stripes.nii.gz": (np.indices(SHAPE)[2] % 2 * 100.0 + 50.0).astype(np.float32),
    }
    for name, array in volumes.items():
        volume = load_cmr_canonical(save(tmp_path / name, array), subject=SUBJECT)
        assert volume.array.shape == SHAPE
        x = load_cmr(tmp_path / name, CmrGrid(shape=(12, 48, 48)))
        assert 0.0 < float(x.mean()) < 1.0, name


# --- 2. sheared affines --------------------------------------------------------------------------


def test_sheared_affine_is_refused(tmp_path: Path) -> None:
    sheared = AFFINE.copy()
    unit0 = AFFINE[:3, 0] / np.linalg.norm(AFFINE[:3, 0])
    sheared[:3, 1] += 0.3 * 1.8 * unit0  # column 1 leans 0.3 of its length along column 0
    message = assert_refused(save(tmp_path / "sheared.nii.gz", textured(), sheared),
                             "sheared", "axes 0 and 1 at 73.30 degrees")
    assert "orthogonal voxel axes" in message


def test_oblique_orthogonal_and_float_rounded_stacks_still_load(tmp_path: Path) -> None:
    rotation = Rotation.from_euler("xyz", [25, -40, 65], degrees=True).as_matrix()
    oblique = AFFINE.copy()
    oblique[:3, :3] = rotation @ AFFINE[:3, :3]
    load_cmr_canonical(save(tmp_path / "oblique.nii.gz", textured(), oblique))
    rounded = oblique.copy()
    rounded[:3, 1] += 1e-3 * oblique[:3, 0]  # |cos| ~ 5.6e-3: 0.3 degrees, DICOM rounding
    load_cmr_canonical(save(tmp_path / "rounded.nii.gz", textured(), rounded))


# --- 3. complex data -----------------------------------------------------------------------------


def test_complex_volume_is_refused_without_a_complex_warning(tmp_path: Path) -> None:
    tex = textured()
    data = (tex * np.exp(1j * tex / 50)).astype(np.complex64)
    path = save(tmp_path / "complex.nii.gz", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old path only warned (ComplexWarning)
        assert_refused(path, "complex-valued CMR volume (magnitude images expected)",
                       "dtype complex64")


# --- 4. volumes too small for a short-axis stack -----------------------------------------------


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 64, 64), (12, 5, 64)])
def test_volume_smaller_than_a_stack_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32)
    n_slices, rows, cols = shape
    assert_refused(save(tmp_path / "toy.nii.gz", data), "too small for a short-axis stack",
                   f"{n_slices} slices of {rows} x {cols}")


def test_smallest_accepted_stack_loads(tmp_path: Path) -> None:
    shape = (cmr.MIN_SLICES, cmr.MIN_INPLANE_VOXELS, cmr.MIN_INPLANE_VOXELS)
    data = np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32)
    assert load_cmr_canonical(save(tmp_path / "small.nii.gz", data)).array.shape == shape


# --- 5. ED and ES on one grid --------------------------------------------------------------------


def _moved(affine: np.ndarray, *, shift_mm=(0.0, 0.0, 0.0), degrees: float = 0.0,
           scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    out = affine.copy()
    out[:3, :3] = Rotation.from_euler("z", degrees, degrees=True).as_matrix() @ (
        affine[:3, :3] * np.asarray(scale))
    out[:3, 3] += shift_mm
    return out


def test_es_on_the_ed_grid_passes_in_any_file_layout(tmp_path: Path) -> None:
    ed = load_cmr_canonical(save(tmp_path / "ed.nii.gz", textured(seed=1)))
    es_data = textured(seed=2)
    plain = load_cmr_canonical(save(tmp_path / "es.nii.gz", es_data))
    assert cmr.check_phase_pair(ed, plain, subject=SUBJECT, es_path="es.nii.gz") is plain
    # the same ES grid stored with voxel axes permuted and flipped (affine adjusted)
    ornt = np.array([[2, -1], [0, 1], [1, -1]], dtype=float)
    permuted = save(tmp_path / "es_permuted.nii.gz", apply_orientation(es_data, ornt),
                    AFFINE @ inv_ornt_aff(ornt, es_data.shape))
    es = load_cmr_canonical(permuted)
    assert cmr.check_phase_pair(ed, es, subject=SUBJECT, es_path=permuted) is es
    np.testing.assert_array_equal(es.array, plain.array)


@pytest.mark.parametrize(("name", "shape", "affine", "fragment"), [
    ("cropped", (12, 64, 56), AFFINE, "shape (12, 64, 56)"),
    ("respaced", SHAPE, _moved(AFFINE, scale=(1.0, 1.1, 1.1)), "spacing [10.0, 1.98, 1.98] mm"),
    ("shifted", SHAPE, _moved(AFFINE, shift_mm=(0.0, 3.0, 4.0)), "origin 5 mm away"),
    ("rotated", SHAPE, _moved(AFFINE, degrees=5.0), "rotated by 5 degrees"),
])
def test_es_off_the_ed_grid_is_refused(tmp_path: Path, name: str, shape: tuple[int, ...],
                                       affine: np.ndarray, fragment: str) -> None:
    ed = load_cmr_canonical(save(tmp_path / "ed.nii.gz", textured(seed=1)), subject=SUBJECT)
    es_path = save(tmp_path / f"es_{name}.nii.gz", textured(shape, seed=2), affine)
    es = load_cmr_canonical(es_path, subject=SUBJECT)
    with pytest.raises(DataError) as info:
        cmr.check_phase_pair(ed, es, subject=SUBJECT, es_path=es_path)
    message = str(info.value)
    assert f"subject {SUBJECT}" in message and es_path.name in message, message
    assert "not on the ED volume's voxel grid" in message and fragment in message, message
    assert "expected ED's shape (12, 64, 64), spacing [10.0, 1.8, 1.8] mm" in message, message


# --- real-looking synthetic volumes ------------------------------------------------------------


def test_synthetic_cohort_volumes_pass_every_check(tmp_path: Path) -> None:
    spec = cohort_spec("tiny", seed=5, n_subjects=3)
    manifest = read_manifest(generate_cohort(tmp_path, spec, workers=1, progress=False))
    for row in manifest.itertuples():
        ed = load_cmr_canonical(row.cmr_ed_path, subject=row.subject_id)
        es = load_cmr_canonical(row.cmr_es_path, subject=row.subject_id)
        assert cmr.check_phase_pair(ed, es, subject=row.subject_id, es_path=row.cmr_es_path) is es
        load_labels_canonical(row.cmr_ed_seg_path, subject=row.subject_id, like=ed)
