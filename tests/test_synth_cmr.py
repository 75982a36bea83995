"""Tests of the synthetic SAX CMR renderer and of phenotype measurement from label maps.

Every expectation comes from the latent state's targets, from hand arithmetic or from
geometry (orthonormal frames, adjacency), never from numbers read off the renderer.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ecgcmr.constants import (
    LABEL_BACKGROUND,
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    MYOCARDIAL_DENSITY_G_PER_ML,
    PHENOTYPES,
)
from ecgcmr.data.cmr import spacing_from_affine
from ecgcmr.data.phenotypes import measure_phenotypes
from ecgcmr.errors import DataError
from ecgcmr.synth.cmr import TISSUES, SaxSpec, SyntheticCmr, render_cmr

# Hand-made states spanning body and heart sizes (independent of the physiology module).
STATES: dict[str, dict[str, object]] = {
    "small_female": dict(subject_id="T1", sex=0, bmi=21.0, height_cm=158.0, archetype="normal",
                         lvedv_ml=95.0, lvef=0.63, lvm_g=70.0, rvedv_ml=100.0, rvef=0.58,
                         heart_azimuth_deg=45.0, heart_elevation_deg=50.0),
    "large_male": dict(subject_id="T2", sex=1, bmi=31.0, height_cm=185.0, archetype="normal",
                       lvedv_ml=200.0, lvef=0.57, lvm_g=150.0, rvedv_ml=215.0, rvef=0.52,
                       heart_azimuth_deg=55.0, heart_elevation_deg=30.0),
    "dilated": dict(subject_id="T3", sex=1, bmi=26.0, height_cm=176.0, archetype="dilated",
                    lvedv_ml=280.0, lvef=0.28, lvm_g=170.0, rvedv_ml=190.0, rvef=0.42,
                    heart_azimuth_deg=50.0, heart_elevation_deg=35.0),
    "hypertrophic": dict(subject_id="T4", sex=0, bmi=28.0, height_cm=165.0,
                         archetype="hypertrophic", lvedv_ml=105.0, lvef=0.74, lvm_g=175.0,
                         rvedv_ml=115.0, rvef=0.60, heart_azimuth_deg=40.0,
                         heart_elevation_deg=45.0),
}
#: Thin contiguous slices, no partial volume: labels then sample the geometry densely.
DENSE = SaxSpec(slice_thickness_mm=1.0, slice_gap_mm=0.0, supersample=1,
                through_plane_samples=1, planning_tilt_sd_deg=0.0)


def _targets(state: dict[str, object]) -> dict[str, float]:
    edv, ef = float(state["lvedv_ml"]), float(state["lvef"])  # type: ignore[arg-type]
    rvedv, rvef = float(state["rvedv_ml"]), float(state["rvef"])  # type: ignore[arg-type]
    return {"lvedv_ml": edv, "lvesv_ml": edv * (1 - ef), "lvef_pct": 100 * ef,
            "lvm_g": float(state["lvm_g"]),  # type: ignore[arg-type]
            "rvedv_ml": rvedv, "rvesv_ml": rvedv * (1 - rvef), "rvef_pct": 100 * rvef}


@pytest.fixture(scope="module")
def rendered() -> dict[str, SyntheticCmr]:
    return {name: render_cmr(state, np.random.default_rng(i))
            for i, (name, state) in enumerate(STATES.items())}


def _measured(cmr: SyntheticCmr) -> dict[str, float]:
    return measure_phenotypes(cmr.labels_ed, cmr.labels_es, spacing_from_affine(cmr.affine))


# --------------------------------------------------------------------------------------------
# measure_phenotypes on hand-built label maps
# --------------------------------------------------------------------------------------------


def test_measure_phenotypes_counts_voxels_by_hand() -> None:
    ed = np.zeros((10, 10, 4), dtype=np.uint8)
    es = np.zeros_like(ed)
    ed[:5, :5, 0] = LABEL_LV_BLOOD   # 25 voxels
    ed[:5, :5, 1] = LABEL_LV_BLOOD   # 25 more -> 50
    ed[5:, :, 2] = LABEL_LV_MYO      # 50 voxels
    ed[:, :4, 3] = LABEL_RV_BLOOD    # 40 voxels
    es[:4, :5, 0] = LABEL_LV_BLOOD   # 20 voxels
    es[5:, :, 2] = LABEL_LV_MYO
    es[:, :1, 3] = LABEL_RV_BLOOD    # 10 voxels
    es[0, 9, 3] = 7                  # an unknown label is ignored
    spacing = (2.0, 1.5, 10.0)       # 30 mm^3 = 0.03 mL per voxel (slice SPACING counts)
    m = measure_phenotypes(ed, es, spacing)

    assert tuple(m) == PHENOTYPES
    assert m["lvedv_ml"] == pytest.approx(1.5)
    assert m["lvesv_ml"] == pytest.approx(0.6)
    assert m["lvsv_ml"] == pytest.approx(0.9)
    assert m["lvef_pct"] == pytest.approx(60.0)
    assert m["lvm_g"] == pytest.approx(1.5 * 1.05)
    assert m["rvedv_ml"] == pytest.approx(1.2)
    assert m["rvesv_ml"] == pytest.approx(0.3)
    assert m["rvsv_ml"] == pytest.approx(0.9)
    assert m["rvef_pct"] == pytest.approx(75.0)
    assert MYOCARDIAL_DENSITY_G_PER_ML == 1.05


def test_measure_phenotypes_accepts_float_labels_and_reports_nan_ef_for_empty_ed() -> None:
    ed = np.zeros((4, 4, 2))  # as nibabel's get_fdata() returns
    es = np.zeros((4, 4, 2))
    ed[0, 0, 0] = float(LABEL_LV_MYO)
    m = measure_phenotypes(ed, es, (1.0, 1.0, 1.0))
    assert m["lvedv_ml"] == 0.0 and math.isnan(m["lvef_pct"]) and math.isnan(m["rvef_pct"])
    assert m["lvm_g"] == pytest.approx(0.001 * 1.05)


@pytest.mark.parametrize("ed, es, spacing", [
    (np.zeros((4, 4, 2)), np.zeros((4, 4, 3)), (1.0, 1.0, 1.0)),   # shapes differ
    (np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 1.0, 1.0)),         # not 3-D
    (np.full((4, 4, 2), 0.5), np.zeros((4, 4, 2)), (1.0, 1.0, 1.0)),  # not whole numbers
    (np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), (1.0, 0.0, 1.0)),   # zero spacing
    (np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), (1.0, 1.0)),        # two spacings
])
def test_measure_phenotypes_rejects_bad_input(ed: np.ndarray, es: np.ndarray,
                                              spacing: tuple[float, ...]) -> None:
    with pytest.raises(DataError):
        measure_phenotypes(ed, es, spacing)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Geometry: measured phenotypes against the state's targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STATES))
def test_measured_volumes_match_targets_at_clinical_sampling(
        rendered: dict[str, SyntheticCmr], name: str) -> None:
    """10 mm disc summation misses or adds part of a slice at the base and apex: a few %."""
    m, t = _measured(rendered[name]), _targets(STATES[name])
    for key in ("lvedv_ml", "lvesv_ml", "lvm_g", "rvedv_ml"):
        assert m[key] == pytest.approx(t[key], rel=0.12), key
    assert m["rvesv_ml"] == pytest.approx(t["rvesv_ml"], rel=0.20)
    assert abs(m["lvef_pct"] - t["lvef_pct"]) < 8.0
    assert abs(m["rvef_pct"] - t["rvef_pct"]) < 12.0


def test_measured_volumes_are_unbiased_over_subjects(rendered: dict[str, SyntheticCmr]) -> None:
    """Over the subjects, the relative errors average out (no systematic bias)."""
    for key in ("lvedv_ml", "lvesv_ml", "lvm_g", "rvedv_ml"):
        errors = [_measured(rendered[n])[key] / _targets(STATES[n])[key] - 1 for n in STATES]
        assert abs(float(np.mean(errors))) < 0.05, key


@pytest.mark.parametrize("name", ["small_female", "dilated"])
def test_dense_sampling_recovers_the_target_geometry(name: str) -> None:
    """With 1 mm contiguous slices the labels integrate the solved shapes: within 2.5 %."""
    cmr = render_cmr(STATES[name], np.random.default_rng(7), DENSE)
    m, t = _measured(cmr), _targets(STATES[name])
    for key in ("lvedv_ml", "lvesv_ml", "lvm_g", "rvedv_ml", "rvesv_ml"):
        assert m[key] == pytest.approx(t[key], rel=0.025), key
    myo_ed = np.count_nonzero(cmr.labels_ed == LABEL_LV_MYO)
    myo_es = np.count_nonzero(cmr.labels_es == LABEL_LV_MYO)
    assert myo_es == pytest.approx(myo_ed, rel=0.025)  # myocardium is incompressible


@pytest.mark.parametrize("name", list(STATES))
def test_myocardial_volume_is_conserved_and_walls_thicken(
        rendered: dict[str, SyntheticCmr], name: str) -> None:
    cmr = rendered[name]
    myo_ed = np.count_nonzero(cmr.labels_ed == LABEL_LV_MYO)
    myo_es = np.count_nonzero(cmr.labels_es == LABEL_LV_MYO)
    assert myo_es == pytest.approx(myo_ed, rel=0.12)
    # same myocardium over fewer slices at ES (the base descends): more myocardium per slice
    per_slice_ed = myo_ed / np.count_nonzero((cmr.labels_ed == LABEL_LV_MYO).any(axis=(0, 1)))
    per_slice_es = myo_es / np.count_nonzero((cmr.labels_es == LABEL_LV_MYO).any(axis=(0, 1)))
    assert per_slice_es > per_slice_ed


def test_stack_covers_base_to_apex(rendered: dict[str, SyntheticCmr]) -> None:
    for cmr in rendered.values():
        n = cmr.labels_ed.shape[2]
        assert 8 <= n <= 16
        lv_slices = np.flatnonzero((cmr.labels_ed == LABEL_LV_BLOOD).any(axis=(0, 1)))
        assert lv_slices[0] <= 1 and lv_slices[-1] >= n - 3  # heart spans the stack
        # heart away from the in-plane border (FOV big enough, shift keeps it inside)
        heart = cmr.labels_ed != LABEL_BACKGROUND
        assert not heart[[0, -1], :, :].any() and not heart[:, [0, -1], :].any()


# --------------------------------------------------------------------------------------------
# Label topology
# --------------------------------------------------------------------------------------------


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """In-plane 4-neighbourhood (excluding the voxel) of a (X, Y) boolean mask."""
    out = np.zeros_like(mask)
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


@pytest.mark.parametrize("name", list(STATES))
def test_lv_blood_is_walled_in_by_myocardium(rendered: dict[str, SyntheticCmr],
                                             name: str) -> None:
    cmr = rendered[name]
    for labels in (cmr.labels_ed, cmr.labels_es):
        lv_slices = np.flatnonzero((labels == LABEL_LV_BLOOD).any(axis=(0, 1)))
        for k in lv_slices[1:-1]:  # mid slices (the basal one may cut the base plane)
            sl = labels[:, :, k]
            touching = _neighbours(sl == LABEL_LV_BLOOD)
            assert set(np.unique(sl[touching])) <= {LABEL_LV_BLOOD, LABEL_LV_MYO}, k
        # RV blood never touches LV blood: the septum separates them
        assert not (_neighbours(labels == LABEL_RV_BLOOD) & (labels == LABEL_LV_BLOOD)).any()


def _world_centroid(cmr: SyntheticCmr, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(float)
    return (cmr.affine[:3, :3] @ ijk.mean(axis=0)) + cmr.affine[:3, 3]


@pytest.mark.parametrize("name", list(STATES))
def test_rv_wraps_the_septum_on_the_right_anterior_side(rendered: dict[str, SyntheticCmr],
                                                       name: str) -> None:
    cmr = rendered[name]
    labels = cmr.labels_ed
    mid = int(np.median(np.flatnonzero((labels == LABEL_RV_BLOOD).any(axis=(0, 1)))))
    sl = labels[:, :, mid]
    rv, myo = sl == LABEL_RV_BLOOD, sl == LABEL_LV_MYO
    assert (_neighbours(rv) & myo).sum() >= 10  # RV borders the septum
    # the crescent lies on one side: the RV centroid is right-anterior of the LV (RAS+)
    lv_c = _world_centroid(cmr, labels == LABEL_LV_BLOOD)
    rv_c = _world_centroid(cmr, labels == LABEL_RV_BLOOD)
    right_anterior = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
    assert (rv_c - lv_c) @ right_anterior > 10.0


# --------------------------------------------------------------------------------------------
# Affine and pose
# --------------------------------------------------------------------------------------------


def test_affine_spacing_and_orthonormal_rotation(rendered: dict[str, SyntheticCmr]) -> None:
    spec = SaxSpec()
    for cmr in rendered.values():
        assert cmr.affine.shape == (4, 4)
        np.testing.assert_allclose(cmr.affine[3], [0, 0, 0, 1])
        spacing = spacing_from_affine(cmr.affine)
        np.testing.assert_allclose(spacing, (1.8, 1.8, 8.0 + 2.0), atol=1e-9)
        assert spacing == pytest.approx(spec.spacing_mm)
        rot = cmr.affine[:3, :3] / np.asarray(spacing)[None, :]
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
        assert abs(np.linalg.det(cmr.affine[:3, :3])) == pytest.approx(1.8 * 1.8 * 10.0)
        # double oblique: the slice normal is not along a scanner axis
        assert np.max(np.abs(rot[:, 2])) < 0.99


def test_affine_encodes_the_anatomical_long_axis(rendered: dict[str, SyntheticCmr]) -> None:
    """Base-to-apex LV centroids in world coordinates follow the state's azimuth/elevation."""
    for name, cmr in rendered.items():
        state = STATES[name]
        az = math.radians(float(state["heart_azimuth_deg"]))  # type: ignore[arg-type]
        el = math.radians(float(state["heart_elevation_deg"]))  # type: ignore[arg-type]
        # azimuth from the patient's left (-x) towards anterior (+y), elevation down (-z)
        axis = np.array([-math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                         -math.sin(el)])
        lv = cmr.labels_ed == LABEL_LV_BLOOD
        ks = np.flatnonzero(lv.any(axis=(0, 1)))
        first = np.zeros_like(lv)
        last = np.zeros_like(lv)
        first[:, :, ks[1]] = lv[:, :, ks[1]]
        last[:, :, ks[-2]] = lv[:, :, ks[-2]]
        direction = _world_centroid(cmr, last) - _world_centroid(cmr, first)
        direction /= np.linalg.norm(direction)
        assert math.degrees(math.acos(np.clip(direction @ axis, -1, 1))) < 15.0, name


def test_different_seeds_give_different_poses_and_same_seed_is_deterministic() -> None:
    state = STATES["small_female"]
    a = render_cmr(state, np.random.default_rng(11))
    b = render_cmr(state, np.random.default_rng(11))
    c = render_cmr(state, np.random.default_rng(12))
    for field in ("image_ed", "image_es", "labels_ed", "labels_es", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.allclose(a.affine, c.affine)
    rot_a = a.affine[:3, :2] / 1.8
    rot_c = c.affine[:3, :2] / 1.8
    assert not np.allclose(rot_a, rot_c, atol=1e-3)  # in-plane orientation differs too


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STATES))
def test_image_contrast_is_ssfp_like(rendered: dict[str, SyntheticCmr], name: str) -> None:
    cmr = rendered[name]
    for image, labels, tissue in ((cmr.image_ed, cmr.labels_ed, cmr.tissue_ed),
                                  (cmr.image_es, cmr.labels_es, cmr.tissue_es)):
        assert image.shape == labels.shape and labels.dtype == np.uint8
        assert np.all(np.isfinite(image.astype(float)))
        assert tissue.shape == image.shape
        blood = image[labels == LABEL_LV_BLOOD].mean()
        myo = image[labels == LABEL_LV_MYO].mean()
        lung = image[tissue == TISSUES.index("lung")].mean()
        fat = image[tissue == TISSUES.index("subcutaneous fat")].mean()
        assert blood > 1.8 * myo > 1.8 * lung
        assert fat > 1.5 * myo  # fat is bright in bSSFP
        assert image[labels == LABEL_RV_BLOOD].mean() > 1.8 * myo


def test_noise_is_rician_and_images_vary_with_seed() -> None:
    state = STATES["large_male"]
    quiet = render_cmr(state, np.random.default_rng(3), replace(SaxSpec(), noise_sigma=0.0))
    noisy = render_cmr(state, np.random.default_rng(3))
    air = TISSUES.index("air")
    np.testing.assert_array_equal(quiet.labels_ed, noisy.labels_ed)
    # magnitude images: air is 0 without noise (bar partial volume at the skin) and has a
    # positive noise floor with it
    assert np.median(quiet.image_ed[quiet.tissue_ed == air]) == 0
    assert np.median(noisy.image_ed[noisy.tissue_ed == air]) > 10
    assert noisy.image_ed.min() >= 0


def test_spec_changes_matrix_and_slice_count() -> None:
    spec = SaxSpec(matrix=(96, 80), n_slices=9)
    cmr = render_cmr(STATES["small_female"], np.random.default_rng(0), spec)
    assert cmr.image_ed.shape == cmr.labels_es.shape == (96, 80, 9)
    assert cmr.image_ed.dtype == np.int16


def test_bad_state_is_reported_with_the_subject() -> None:
    state = dict(STATES["small_female"])
    state["lvef"] = 62.0  # a percentage where a fraction is expected
    with pytest.raises(DataError, match="T1"):
        render_cmr(state, np.random.default_rng(0))
    del state["lvef"]
    with pytest.raises(DataError, match="lvef"):
        render_cmr(state, np.random.default_rng(0))
