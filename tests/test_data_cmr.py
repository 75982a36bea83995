"""CMR loader: canonical orientation, resampling, crop/pad, QC, heart centre (NIfTI built in tmp_path)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff
from scipy.ndimage import gaussian_filter

from ecgcmr.data.cmr import (
    CmrGrid,
    canonical_layout,
    center_from_labels,
    heart_center,
    load_cmr,
    load_cmr_canonical,
    load_labels,
    read_cmr,
    to_canonical,
)
from ecgcmr.errors import DataError


def sax_affine(spacing=(1.8, 1.8, 10.0), tilt_seed: int = 0, origin=(12.0, -30.0, 40.0)):
    """A double-oblique short-axis affine: file axes 0, 1 in-plane, axis 2 along the normal.

    The normal points roughly left-anterior-inferior (RAS+), as a short-axis stack does,
    perturbed by a seeded rotation so no axis is close to a world axis.
    """
    rng = np.random.default_rng(tilt_seed)
    normal = np.array([-1.0, 1.0, -1.0]) + rng.normal(0, 0.15, 3)
    normal /= np.linalg.norm(normal)
    a = np.cross(normal, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    angle = rng.uniform(0, 2 * np.pi)  # in-plane rotation of the voxel axes
    u = np.cos(angle) * a + np.sin(angle) * b
    v = np.cross(normal, u)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([u * spacing[0], v * spacing[1], normal * spacing[2]], axis=1)
    affine[:3, 3] = origin
    return affine


def textured_volume(shape, seed: int = 0) -> np.ndarray:
    """A smooth random volume with no symmetry, so any wrong flip/permutation shows."""
    rng = np.random.default_rng(seed)
    vol = gaussian_filter(rng.normal(size=shape), sigma=2.0)
    vol += np.linspace(0, 1, shape[0])[:, None, None] + np.linspace(0, 2, shape[1])[None, :, None]
    return (100 * (vol - vol.min())).astype(np.float32)


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


# --- canonical orientation -------------------------------------------------------------------


@pytest.mark.parametrize("tilt_seed", [0, 1, 2])
def test_same_volume_any_file_layout_loads_identically(tmp_path: Path, tilt_seed: int) -> None:
    data = textured_volume((40, 36, 9), seed=tilt_seed)
    affine = sax_affine(spacing=(1.6, 1.6, 9.0), tilt_seed=tilt_seed)
    # nibabel's orientation tools (independent of the code under test) relabel the voxel axes;
    # the affine is adjusted so every voxel keeps its world position
    layouts = {
        "as_is": [[0, 1], [1, 1], [2, 1]],
        "slices_first_flipped": [[1, -1], [2, 1], [0, -1]],
        "inplane_swapped": [[2, 1], [0, -1], [1, 1]],
        "slices_middle": [[0, -1], [2, -1], [1, 1]],
    }
    loaded, grids, worlds = [], [], []
    for name, ornt in layouts.items():
        ornt = np.asarray(ornt, dtype=float)
        arr = apply_orientation(data, ornt)
        aff = affine @ inv_ornt_aff(ornt, data.shape)
        path = save(tmp_path / f"{name}.nii.gz", arr, aff)
        vol = load_cmr_canonical(path)
        loaded.append(vol.array)
        grids.append(load_cmr(path, CmrGrid(shape=(8, 32, 32), spacing_mm=(9.0, 2.0, 2.0))))
        # world position of canonical voxels (0,0,0) and (1,1,1)
        worlds.append(vol.affine @ np.array([[0, 1], [0, 1], [0, 1], [1, 1]]))
        assert vol.array.shape == (9, 40, 36) or vol.array.shape == (9, 36, 40)
        assert vol.spacing_mm == pytest.approx((9.0, 1.6, 1.6))
    for other in loaded[1:]:
        np.testing.assert_array_equal(other, loaded[0])
    for other in grids[1:]:
        np.testing.assert_allclose(other, grids[0], atol=1e-6)
    for other in worlds[1:]:
        np.testing.assert_allclose(other, worlds[0], atol=1e-4)  # sform is float32


def test_canonical_array_matches_world_positions(tmp_path: Path) -> None:
    """Each canonical voxel holds the file voxel at the same world position (affine is honest)."""
    data = textured_volume((30, 28, 8), seed=5)
    affine = sax_affine(spacing=(1.5, 1.5, 8.0), tilt_seed=4)
    vol = load_cmr_canonical(save(tmp_path / "v.nii.gz", data, affine))
    rng = np.random.default_rng(0)
    inv = np.linalg.inv(affine)
    for _ in range(20):
        c = np.array([rng.integers(0, n) for n in vol.array.shape] + [1])
        file_idx = np.rint(inv @ (vol.affine @ c))[:3].astype(int)
        assert vol.array[tuple(c[:3])] == data[tuple(file_idx)]


def test_slice_axis_first_where_as_closest_canonical_is_not() -> None:
    affine = sax_affine(tilt_seed=0)
    img = nib.Nifti1Image(np.zeros((20, 22, 7), np.float32), affine)
    closest = nib.as_closest_canonical(img).shape
    assert closest[0] != 7  # RAS snapping moves the 7-slice axis in-plane for this stack
    array, spacing = to_canonical(np.zeros((20, 22, 7), np.float32), affine)
    assert array.shape[0] == 7
    assert spacing[0] == pytest.approx(10.0)


def test_axial_stack_gets_the_documented_orientation() -> None:
    # RAS+ axial stack: file axes (x, y, z) with 8 mm slices along z. The documented rule:
    # slices run inferior (the long axis has a negative z component), rows run posterior,
    # columns run to the patient's left.
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    perm, flips = canonical_layout(affine)
    assert perm == (2, 1, 0)
    assert flips == (True, True, True)
    # slice stack along LPS-like voxel axes: already canonical
    affine = np.array([[0, 0, -1.8, 0], [0, -1.8, 0, 0], [-10, 0, 0, 0], [0, 0, 0, 1.0]])
    assert canonical_layout(affine) == ((0, 1, 2), (False, False, False))


def test_short_axis_slices_run_towards_the_apex() -> None:
    affine = sax_affine(tilt_seed=3)
    flipped = affine.copy()
    flipped[:3, 2] *= -1  # the same stack stored apex -> base
    for aff in (affine, flipped):
        perm, flips = canonical_layout(aff)
        step = aff[:3, perm[0]] * (-1 if flips[0] else 1)  # world step of canonical axis 0
        assert step @ np.array([-1.0, 1.0, -1.0]) > 0


# --- resampling, crop/pad --------------------------------------------------------------------


def ellipsoid(shape, spacing, semi_axes_mm, center_vox, ramp_mm):
    """Image of an ellipsoid, 1 inside / 0 outside with a linear ramp across the surface."""
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center_vox, spacing,
                                                                     strict=True)],
                        indexing="ij")
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, semi_axes_mm, strict=True)))
    # distance to the surface along the radius, approximated by (1 - r) * mean semi-axis
    depth = (1 - r) * np.mean(semi_axes_mm)
    return np.clip(0.5 + depth / ramp_mm, 0, 1).astype(np.float32)


def test_resampling_preserves_physical_size(tmp_path: Path) -> None:
    spacing_in = (8.0, 1.2, 1.2)                 # canonical (slice, row, column)
    shape_in = (14, 150, 150)
    semi = (36.0, 30.0, 22.0)                    # mm along (slice, row, column)
    center = tuple((n - 1) / 2 for n in shape_in)
    data = ellipsoid(shape_in, spacing_in, semi, center, ramp_mm=8.0)
    affine = np.array([[0, 0, -spacing_in[2], 0], [0, -spacing_in[1], 0, 0],
                       [-spacing_in[0], 0, 0, 0], [0, 0, 0, 1.0]])  # canonical = file layout
    path = save(tmp_path / "ell.nii.gz", data, affine)
    grid = CmrGrid(shape=(12, 80, 80), spacing_mm=(10.0, 1.8, 1.8), intensity=None)
    out = load_cmr(path, grid)
    voxel_ml = np.prod(grid.spacing_mm) / 1000
    expected_ml = 4 / 3 * np.pi * np.prod(semi) / 1000
    assert (out >= 0.5).sum() * voxel_ml == pytest.approx(expected_ml, rel=0.05)
    # extent along each axis (mm) through the centre, vs twice the semi-axis
    mask = out >= 0.5
    rows = mask.any(axis=(0, 2)).sum() * grid.spacing_mm[1]
    cols = mask.any(axis=(0, 1)).sum() * grid.spacing_mm[2]
    assert rows == pytest.approx(2 * semi[1], abs=2 * grid.spacing_mm[1])
    assert cols == pytest.approx(2 * semi[2], abs=2 * grid.spacing_mm[2])


def blob_volume(shape, center, sd_vox=(0.8, 3.0, 3.0)):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, center, sd_vox, strict=True))
    return (10 + 1000 * np.exp(-0.5 * d2)).astype(np.float32)


CANONICAL_AFFINE = np.array([[0, 0, -1.8, 0], [0, -1.8, 0, 0], [-10, 0, 0, 0], [0, 0, 0, 1.0]])


def _centroid(x: np.ndarray) -> np.ndarray:
    w = np.clip(x - np.percentile(x, 50), 0, None)
    grids = np.meshgrid(*[np.arange(n) for n in x.shape], indexing="ij")
    return np.array([(g * w).sum() / w.sum() for g in grids])


def test_crop_pad_puts_the_given_centre_at_the_grid_centre(tmp_path: Path) -> None:
    shape, center = (16, 128, 128), (5.0, 30.0, 100.0)  # near an edge: needs padding
    path = save(tmp_path / "blob.nii.gz", blob_volume(shape, center), CANONICAL_AFFINE)
    grid = CmrGrid(shape=(12, 96, 96), spacing_mm=(10.0, 1.8, 1.8))
    out = load_cmr(path, grid, center_vox=center)
    target = (np.asarray(grid.shape) - 1) / 2
    # same spacing: the centre is snapped to whole voxels (at most half a voxel)
    np.testing.assert_allclose(_centroid(out), target, atol=0.5 + 1e-6)
    # beyond the volume's last column (index 127 -> output column 48 + 27 = 75) is padding
    assert np.all(out[:, :, 76:] == 0.0)
    assert out.min() == 0.0 and out.max() <= 1.0

    # other spacing: no snapping, the blob centre lands on the geometric grid centre
    fine = CmrGrid(shape=(12, 64, 64), spacing_mm=(10.0, 1.25, 1.25))
    out = load_cmr(path, fine, center_vox=center)
    np.testing.assert_allclose(_centroid(out)[1:], (np.asarray(fine.shape[1:]) - 1) / 2, atol=0.15)


def test_same_spacing_copies_voxels_never_blends(tmp_path: Path) -> None:
    data = textured_volume((12, 100, 100), seed=8)
    path = save(tmp_path / "copy.nii.gz", data, CANONICAL_AFFINE)
    grid = CmrGrid(shape=(12, 64, 64), spacing_mm=(10.0, 1.8, 1.8), intensity=None)
    out = load_cmr(path, grid, center_vox=(5.3, 47.7, 52.2))  # fractional centre
    # every output voxel is an input voxel (10 mm slices must never be averaged together)
    assert np.isin(out, data).all()


def test_downsampling_does_not_alias(tmp_path: Path) -> None:
    shape = (12, 120, 120)
    stripes = np.indices(shape)[2] % 2 * 100.0 + 50.0  # period of 2 voxels (1.2 mm)
    path = save(tmp_path / "stripes.nii.gz", stripes.astype(np.float32),
                CANONICAL_AFFINE @ np.diag([1.0, 0.6 / 1.8, 0.6 / 1.8, 1.0]))
    out = load_cmr(path, CmrGrid(shape=(12, 30, 30), spacing_mm=(10.0, 1.5, 1.5),
                                 intensity=None))
    # the stripes are finer than the new voxels: they must average out to their mean (100),
    # not alias into a coarse pattern (plain linear sampling swings between 50 and 150)
    assert np.abs(out - 100.0).max() < 15.0


def test_default_centre_is_the_volume_centre(tmp_path: Path) -> None:
    shape = (12, 100, 100)
    center = tuple((n - 1) / 2 for n in shape)
    path = save(tmp_path / "c.nii.gz", blob_volume(shape, center), CANONICAL_AFFINE)
    grid = CmrGrid(shape=(12, 64, 64), spacing_mm=(10.0, 1.8, 1.8))
    np.testing.assert_allclose(_centroid(load_cmr(path, grid)), (np.asarray(grid.shape) - 1) / 2,
                               atol=0.51)


def test_labels_use_nearest_neighbour(tmp_path: Path) -> None:
    shape = (10, 90, 90)
    labels = np.zeros(shape, np.uint8)
    labels[2:8, 30:60, 30:50] = 1
    labels[2:8, 30:60, 50:60] = 3
    labels[4:6, 40:50, 35:45] = 2
    path = save(tmp_path / "seg.nii.gz", labels, CANONICAL_AFFINE)
    grid = CmrGrid(shape=(10, 70, 70), spacing_mm=(10.0, 2.3, 2.3))
    out = load_labels(path, grid)
    assert out.dtype == np.uint8 and out.shape == grid.shape
    assert set(np.unique(out)) == {0, 1, 2, 3}
    # each label's physical volume survives resampling (nearest neighbour: within ~20 %)
    for value in (1, 2, 3):
        v_in = (labels == value).sum() * 10 * 1.8 * 1.8
        v_out = (out == value).sum() * 10 * 2.3 * 2.3
        assert v_out == pytest.approx(v_in, rel=0.2)
    assert center_from_labels(labels) == pytest.approx((4.5, 44.5, 44.5), abs=0.6)


# --- normalisation ---------------------------------------------------------------------------


def test_normalisation_modes(tmp_path: Path) -> None:
    shape = (12, 96, 96)
    data = textured_volume(shape, seed=3)
    path = save(tmp_path / "n.nii.gz", data, CANONICAL_AFFINE)
    same = {"shape": shape, "spacing_mm": (10.0, 1.8, 1.8)}  # identity resampling

    raw = load_cmr(path, CmrGrid(**same, intensity=None))
    np.testing.assert_allclose(raw, data, rtol=1e-6, atol=1e-3)

    pct = load_cmr(path, CmrGrid(**same, intensity="percentile", percentiles=(0.5, 99.5)))
    assert pct.min() == 0.0 and pct.max() == 1.0
    assert (pct == 1.0).mean() == pytest.approx(0.005, abs=0.002)
    assert (pct == 0.0).mean() == pytest.approx(0.005, abs=0.002)
    lo, hi = np.percentile(data, [0.5, 99.5])
    np.testing.assert_allclose(pct, np.clip((data - lo) / (hi - lo), 0, 1), atol=1e-5)

    z = load_cmr(path, CmrGrid(**same, intensity="zscore"))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_grid_validation() -> None:
    for bad in ({"shape": (12, 96)}, {"shape": (0, 96, 96)}, {"spacing_mm": (10.0, -1.8, 1.8)},
                {"intensity": "minmax"}, {"percentiles": (99.0, 1.0)}):
        with pytest.raises(ValueError):
            CmrGrid(**bad)


# --- bad input -------------------------------------------------------------------------------


def _assert_data_error(path: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        load_cmr(path, subject="S7")
    message = str(info.value)
    assert path.name in message and "S7" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path: Path) -> None:
    _assert_data_error(tmp_path / "absent.nii.gz", "not found")


def test_corrupt_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    _assert_data_error(garbage, "unreadable")
    good = save(tmp_path / "good.nii.gz", textured_volume((20, 20, 6)), CANONICAL_AFFINE)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:400])
    _assert_data_error(truncated)
    raw = tmp_path / "raw.nii"
    raw.write_bytes(b"\x00" * 100)
    _assert_data_error(raw)


def test_2d_and_4d_files(tmp_path: Path) -> None:
    _assert_data_error(save(tmp_path / "flat2d.nii.gz", textured_volume((1, 40, 40))[0],
                            np.eye(4)), "not 3D")
    cine = np.stack([textured_volume((20, 20, 6), seed=s) for s in range(3)], axis=-1)
    _assert_data_error(save(tmp_path / "cine4d.nii.gz", cine, CANONICAL_AFFINE), "not 3D")
    # a 4D file with one time point is a 3D volume
    vol = textured_volume((20, 20, 6))
    p3 = save(tmp_path / "v3.nii.gz", vol, CANONICAL_AFFINE)
    p4 = save(tmp_path / "v4.nii.gz", vol[..., None], CANONICAL_AFFINE)
    np.testing.assert_array_equal(read_cmr(p3)[0], read_cmr(p4)[0])


def test_empty_and_nan_volumes(tmp_path: Path) -> None:
    _assert_data_error(save(tmp_path / "zeros.nii.gz", np.zeros((20, 20, 6), np.float32),
                            CANONICAL_AFFINE), "empty")
    vol = textured_volume((20, 20, 6))
    vol[3, 4, 5] = np.nan
    _assert_data_error(save(tmp_path / "nan.nii.gz", vol, CANONICAL_AFFINE), "non-finite")


def test_bad_affines(tmp_path: Path) -> None:
    vol = textured_volume((20, 20, 6))
    singular = CANONICAL_AFFINE.copy()
    singular[:3, 2] = singular[:3, 1]  # two voxel axes along the same direction
    _assert_data_error(save(tmp_path / "singular.nii.gz", vol, singular), "not invertible")
    huge = np.diag([1.8, 1.8, 45.0, 1.0])
    _assert_data_error(save(tmp_path / "huge.nii.gz", vol, huge), "spacing")


def test_affine_in_metres_is_converted(tmp_path: Path) -> None:
    vol = textured_volume((20, 20, 6))
    img = nib.Nifti1Image(vol, np.diag([0.0018, 0.0018, 0.010, 1.0]))
    img.header.set_xyzt_units("meter", "sec")
    nib.save(img, tmp_path / "m.nii.gz")
    assert load_cmr_canonical(tmp_path / "m.nii.gz").spacing_mm == pytest.approx((10, 1.8, 1.8))


# --- heart centre ----------------------------------------------------------------------------


def test_heart_center_finds_the_moving_blob() -> None:
    rng = np.random.default_rng(11)
    shape, spacing = (12, 128, 128), (10.0, 1.8, 1.8)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                        indexing="ij")
    body = 300 * ((grids[1] - 115) ** 2 / 100**2 + (grids[2] - 115) ** 2 / 110**2 < 1)
    static = body + 80 * gaussian_filter(rng.normal(size=shape), (0.5, 2, 2))  # anatomy
    true_center = np.array([5.5, 50.0, 75.0])  # voxels; in-plane far from the volume centre

    def ball(center_vox, radius_mm: float) -> np.ndarray:
        r2 = sum((g - c * s) ** 2 for g, c, s in zip(grids, center_vox, spacing, strict=True))
        return r2 < radius_mm**2

    def phase(radius_mm: float, atrium_mm: float) -> np.ndarray:
        # bright blood pool, plus an "atrium" in the two basal slices that fills as the
        # ventricle empties (it moves too, but is not the ventricles' centre)
        atrium = ball((0.5, 90.0, 40.0), atrium_mm) & (grids[0] < 20)
        return (static + 500 * ball(true_center, radius_mm) + 500 * atrium
                + rng.normal(0, 15, shape))

    ed, es = phase(30.0, 15.0), phase(20.0, 30.0)
    found = np.array(heart_center(ed, es, spacing_mm=spacing))
    assert np.abs(found[1:] - true_center[1:]).max() < 2.0   # in-plane, voxels (3.6 mm)
    assert found[0] == (shape[0] - 1) / 2                     # along slices: the stack centre
    with pytest.raises(DataError):
        heart_center(ed, ed)
    with pytest.raises(DataError):
        heart_center(ed, es[:-1])


def test_center_from_labels_empty_raises() -> None:
    with pytest.raises(DataError):
        center_from_labels(np.zeros((4, 8, 8), np.uint8))


# --- speed -----------------------------------------------------------------------------------
