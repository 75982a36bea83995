"""The fast paths give the results of the plain ones they replace.

Each check compares a faster implementation with the straightforward one: the sparse CMR
resampler with the dense separable product, the direct WFDB writer and reader with ``wfdb``,
the NIfTI writer with ``nib.save``, the culled CMR renderer with painting every point.
"""

from __future__ import annotations

import functools
import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import wfdb

from ecgcmr.config import get_profile
from ecgcmr.constants import LEADS
from ecgcmr.data import cmr as cmr_data
from ecgcmr.data import ecg as ecg_data
from ecgcmr.data.writers import _nifti_image, write_nifti, write_wfdb
from ecgcmr.parallel import one_blas_thread, one_thread
from ecgcmr.synth import cmr as render
from ecgcmr.synth.cohort import _write_ecg, cohort_spec
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# --- CMR resampling --------------------------------------------------------------------------


def _dense(array: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The plain separable product: one dense matrix per axis."""
    out = np.tensordot(weights[0], array, axes=(1, 0))
    out = np.tensordot(out, weights[1], axes=(1, 1))
    return np.tensordot(out, weights[2], axes=(1, 1))


@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_sparse_resampler_equals_the_dense_product(seed: int, nearest: bool) -> None:
    rng = np.random.default_rng(seed)
    shape_in = tuple(int(n) for n in rng.integers(5, 40, 3))
    shape_out = tuple(int(n) for n in rng.integers(3, 30, 3))
    # down- and upsampling, same spacing (a copy), centres off the volume (padding rows)
    zooms = [1.0, float(rng.uniform(0.4, 0.95)), float(rng.uniform(1.05, 3.0))]
    rng.shuffle(zooms)
    weights = [cmr_data._axis_weights(n_in, n_out, zoom, float(rng.uniform(-3, n_in + 3)),
                                      nearest=nearest)
               for n_in, n_out, zoom in zip(shape_in, shape_out, zooms, strict=True)]
    array = (rng.integers(0, 4, shape_in) if nearest else rng.gamma(2.0, 300.0, shape_in)
             ).astype(np.float32)
    fast, dense = cmr_data._apply_separable(array, weights), _dense(array, weights)
    assert fast.shape == dense.shape == shape_out and fast.dtype == np.float32
    if nearest:
        np.testing.assert_array_equal(fast, dense)  # one tap of weight 1 per row: copies
    else:  # the same sums in another order: float32 rounding only
        np.testing.assert_allclose(fast, dense, rtol=0, atol=2e-6 * float(np.abs(dense).max()))


def test_to_grid_on_the_cohort_matches_the_dense_product(tiny_cohort: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from ecgcmr.data import read_manifest
    from ecgcmr.data.cache import _heart_center

    grid = get_profile("teaching").cache_spec().grid
    for record in read_manifest(tiny_cohort).head(4).to_dict("records"):
        ed = cmr_data.load_cmr_canonical(record["cmr_ed_path"])
        es = cmr_data.load_cmr_canonical(record["cmr_es_path"])
        centre = _heart_center(record, ed, es)
        fast = cmr_data.to_grid(ed, grid, center_vox=centre)
        with monkeypatch.context() as m:
            m.setattr(cmr_data, "_apply_separable", _dense)
            dense = cmr_data.to_grid(ed, grid, center_vox=centre)
        assert np.abs(fast - dense).max() < 1e-6  # normalised to [0, 1]: float32 rounding


# --- WFDB ------------------------------------------------------------------------------------


def _wrsamp_digital(folder: Path, name: str, digital: np.ndarray, fs: float,
                    gains: list[float], comments: list[str]) -> None:
    wfdb.wrsamp(record_name=name, fs=fs, units=["mV"] * 12, sig_name=list(LEADS),
                d_signal=digital.T, fmt=["16"] * 12, adc_gain=gains, baseline=[0] * 12,
                comments=comments, write_dir=str(folder))


@pytest.mark.parametrize(("fs", "gain"), [(500, 1000.0), (257.5, 200.0), (1000.0, None)])
def test_wfdb_writer_writes_what_wrsamp_writes(tmp_path: Path, fs: float,
                                               gain: float | None) -> None:
    rng = np.random.default_rng(1)
    gains = rng.uniform(100.0, 2000.0, 12).round(1) if gain is None else np.full(12, gain)
    signal = rng.normal(0.0, 1.0, (12, 2000))
    signal[3, 17] = np.nan  # an invalid sample
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    write_wfdb(ours, "r1", signal, fs, adc_gain_per_mv=gains, comments=["a\ncomment"])
    digital = np.where(np.isnan(signal), -32768, np.round(signal * gains[:, None])).astype(np.int16)
    _wrsamp_digital(theirs, "r1", digital, int(fs) if float(fs).is_integer() else fs,
                    [float(g) for g in gains], ["a comment"])
    for suffix in (".hea", ".dat"):
        assert (ours / f"r1{suffix}").read_bytes() == (theirs / f"r1{suffix}").read_bytes()
    record = wfdb.rdrecord(str(ours / "r1"), physical=False)
    np.testing.assert_array_equal(record.d_signal.T, digital)
    assert record.adc_gain == [float(g) for g in gains] and record.baseline == [0] * 12
    assert record.units == ["mV"] * 12 and record.sig_name == list(LEADS) and record.fs == fs


def test_cohort_ecg_files_are_what_wrsamp_wrote(tmp_path: Path) -> None:
    """The synthetic cohort's records, byte for byte as ``wfdb.wrsamp(p_signal=...)`` wrote."""
    ecg = simulate_ecg(sample_state(np.random.default_rng(3), "S3"), np.random.default_rng(3))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    _write_ecg(ours, "SYN000003", ecg)
    wfdb.wrsamp(record_name="SYN000003", fs=500, units=["mV"] * 12, sig_name=list(LEADS),
                p_signal=np.asarray(ecg, dtype=np.float64).T, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12,
                comments=["synthetic ECG generated by ecgcmr (not a real person)"],
                write_dir=str(theirs))
    for suffix in (".hea", ".dat"):
        assert ((ours / f"SYN000003{suffix}").read_bytes()
                == (theirs / f"SYN000003{suffix}").read_bytes())


def _read_with_wfdb(hea: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, float]:
    with monkeypatch.context() as m:
        m.setattr(ecg_data, "_read_simple_record", lambda base, hea: None)
        return ecg_data.read_ecg(hea)


def test_fast_wfdb_reader_reads_what_wfdb_reads(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    signal = rng.normal(0.0, 1.0, (4000, 14))
    signal[100, 2] = np.nan
    names = ["V6", "-aVR", "I", "resp", *LEADS[1:3], *LEADS[4:11], "X"]  # shuffled, inverted, extra
    gains = list(rng.uniform(100.0, 2000.0, 14).round(2))
    baselines = [int(b) for b in rng.integers(-50, 50, 14)]
    d_signal = np.where(np.isnan(signal), -32768, np.round(signal * np.array(gains)
                                                           + np.array(baselines))).astype(np.int16)
    wfdb.wrsamp(record_name="mixed", fs=250, units=["mV"] * 7 + ["uV"] * 7, sig_name=names,
                d_signal=d_signal, fmt=["16"] * 14, adc_gain=gains, baseline=baselines,
                write_dir=str(tmp_path))
    write_wfdb(tmp_path, "plain", rng.normal(0.0, 1.0, (12, 5000)), 500,
               adc_gain_per_mv=1000.0)
    for name in ("mixed", "plain"):
        hea = tmp_path / f"{name}.hea"
        base = tmp_path / name
        raw = ecg_data._read_simple_record(base, hea)
        assert raw is not None  # the fast path was taken ...
        record = wfdb.rdrecord(str(base))
        np.testing.assert_array_equal(raw[0], record.p_signal)  # ... and gives wfdb's numbers
        assert raw[1] == record.sig_name and raw[2] == record.units
        fast, fs_fast = ecg_data.read_ecg(hea)
        slow, fs_slow = _read_with_wfdb(hea, monkeypatch)
        assert fs_fast == fs_slow
        np.testing.assert_array_equal(fast, slow)


def test_records_of_other_kinds_take_the_wfdb_path(tmp_path: Path) -> None:
    signal = np.random.default_rng(4).normal(0.0, 1.0, (5000, 12))
    wfdb.wrsamp(record_name="f212", fs=500, units=["mV"] * 12, sig_name=list(LEADS),
                p_signal=signal, fmt=["212"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))
    write_wfdb(tmp_path, "short", signal.T, 500, adc_gain_per_mv=200.0)
    with open(tmp_path / "short.dat", "r+b") as f:
        f.truncate(1000)  # truncated: reported by the wfdb path's own check
    assert ecg_data._read_simple_record(tmp_path / "f212", tmp_path / "f212.hea") is None
    assert ecg_data._read_simple_record(tmp_path / "short", tmp_path / "short.hea") is None
    x, fs = ecg_data.read_ecg(tmp_path / "f212.hea")
    assert fs == 500 and x.shape == (12, 5000)
    with pytest.raises(ecg_data.DataError, match="truncated"):
        ecg_data.read_ecg(tmp_path / "short.hea")


# --- NIfTI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "shape"), [
    (np.int16, (20, 18, 7)), (np.uint8, (20, 18, 7)), (np.float32, (9, 8, 7)),
    (np.float32, (5, 6, 7, 3)), (np.float64, (9, 8, 7)), (np.int32, (6, 5, 4)),
])
def test_nifti_writer_decodes_to_what_nib_save_writes(tmp_path: Path, dtype: type,
                                                      shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    array = (rng.normal(0.0, 500.0, shape) if np.dtype(dtype).kind == "f"
             else rng.integers(0, 100, shape)).astype(dtype)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * rng.uniform(0.5, 10.0, 3)
    affine[:3, 3] = rng.uniform(-100.0, 100.0, 3)
    for name in ("a.nii.gz", "a.nii"):
        write_nifti(tmp_path, name, array, affine)
        nib.save(_nifti_image(array, affine), tmp_path / f"nib_{name}")
        ours, theirs = (tmp_path / name).read_bytes(), (tmp_path / f"nib_{name}").read_bytes()
        if name.endswith(".gz"):
            ours, theirs = gzip.decompress(ours), gzip.decompress(theirs)
        assert ours == theirs
    img = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), array)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)


# --- CMR rendering ---------------------------------------------------------------------------


def _render_every_point(layers, intensity, pose, spec, crop, n_inplane, origin, frame):  # noqa: ANN001, ANN202
    """_render_layers as plainly as possible: paint every voxel centre, test every voxel, and
    paint every sub-sample of every voxel that may straddle a surface."""
    xs, ys = crop
    dx, sp = spec.pixel_mm, spec.slice_spacing_mm
    m = frame.T @ pose.rotation
    o = frame.T @ (pose.affine[:3, 3] - origin)
    plane = [(m[k, 0] * (np.arange(xs.start, xs.stop) * dx)[:, None]
              + m[k, 1] * (np.arange(ys.start, ys.stop) * dx)[None, :] + o[k]).astype(np.float32)
             for k in range(3)]
    half_extent = (m * np.array([dx / 2, dx / 2, spec.slice_thickness_mm / 2])[None, :]).T
    sub_xy = render._sample_offsets(n_inplane) * dx
    sub_z = render._sample_offsets(spec.through_plane_samples) * spec.slice_thickness_mm
    sub = np.stack([g.reshape(-1) for g in np.meshgrid(sub_xy, sub_xy, sub_z, indexing="ij")])
    offsets = (m @ sub).astype(np.float32)
    zs = np.arange(pose.shape[2]).astype(np.float32)[:, None, None]
    centre = tuple(plane[k][None] + np.float32(m[k, 2] * sp) * zs for k in range(3))
    tissue = render._paint(layers, centre)
    value, frac = intensity[tissue], (tissue != 0).astype(np.float32)
    bounds = render._layer_bounds(layers, render._Squares(centre), half_extent)
    near = np.flatnonzero(functools.reduce(np.logical_or, (i & o for i, o in bounds)))
    fine = tuple(c.reshape(-1)[near][None, :] + offsets[k][:, None] for k, c in enumerate(centre))
    codes = render._paint(layers, fine)
    value.reshape(-1)[near] = intensity[codes].mean(axis=0)
    frac.reshape(-1)[near] = np.count_nonzero(codes, axis=0) / np.float32(codes.shape[0])
    return tissue.transpose(1, 2, 0), frac.transpose(1, 2, 0), value.transpose(1, 2, 0)


@pytest.mark.parametrize("seed", range(3))
def test_culled_rendering_equals_painting_every_point(seed: int) -> None:
    spec = cohort_spec("tiny").sax
    rng = np.random.default_rng(seed)
    targets = render._targets(sample_state(np.random.default_rng(100 + seed), f"S{seed}"))
    heart = render._build_heart(targets, rng)
    body = render._build_body(targets, heart, spec, rng)
    pose = render._plan_stack(heart, body, spec, rng)
    heart_intensity, body_intensity = render._tissue_contrast(spec, rng)
    cases = [(render._heart_layers(ph, heart), heart_intensity, pose.crop[:2], spec.supersample,
              body.heart_origin, heart.frame) for ph in (heart.ed, heart.es)]
    cases.append((render._body_layers(body), body_intensity,
                   (slice(0, pose.shape[0]), slice(0, pose.shape[1])), 1, body.origin, np.eye(3)))
    for layers, intensity, crop, n_inplane, origin, frame in cases:
        args = (layers, intensity, pose, spec, crop, n_inplane, origin, frame)
        for fast, plain in zip(render._render_layers(*args), _render_every_point(*args),
                               strict=True):
            assert fast.dtype == plain.dtype
            np.testing.assert_array_equal(fast, plain)


# --- one BLAS thread, the benchmark ----------------------------------------------------------


def test_one_blas_thread_is_undone_after_the_block() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()
              if p["user_api"] == "blas"]
    with one_blas_thread():
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info()
                   if p["user_api"] == "blas")
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas"] == before


def test_the_heads_on_one_thread_give_what_two_threads_give() -> None:
    """``one_thread`` is a speed option only: an MLP head and a Cox model on one thread
    predict exactly what they predict on two (and the thread settings come back after)."""
    import numpy as np
    import pandas as pd
    import threadpoolctl
    import torch

    from ecgcmr.evaluate.phenotypes import mlp_head

    rng = np.random.default_rng(0)
    n = 300
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)],
                          "split": np.repeat(["train", "val", "test"], [200, 50, 50]),
                          "lvedv_ml": rng.normal(150, 30, n), "lvef_pct": rng.normal(60, 6, n)})
    features = table[["subject_id", "split"]].assign(
        **{f"e{i:03d}": rng.normal(size=n) for i in range(32)})
    features["e000"] += (table["lvedv_ml"] - 150) / 30
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = mlp_head.__wrapped__(features, table, ["lvedv_ml", "lvef_pct"], epochs=30)
        one = mlp_head(features, table, ["lvedv_ml", "lvef_pct"], epochs=30)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert two.predictions.equals(one.predictions) and two.best_epoch == one.best_epoch
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    with one_thread():
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info()
                   if p["user_api"] == "blas")
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas"] == blas


def test_synthesis_benchmark_runs(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import synthesis
    finally:
        sys.path.remove(str(BENCHMARKS))
    table = synthesis.main(["--profile", "tiny", "--n", "2", "--out", str(tmp_path)])
    assert (tmp_path / "synthesis-tiny.csv").is_file()
    assert (table["median_ms_per_subject"] > 0).all()
    assert {"WFDB write", "whole subject (as ecgcmr synth)"} <= set(table["step"])


def test_an_empty_crop_renders_to_empty_arrays() -> None:
    spec = cohort_spec("tiny").sax
    rng = np.random.default_rng(0)
    targets = render._targets(sample_state(np.random.default_rng(0), "S0"))
    heart = render._build_heart(targets, rng)
    body = render._build_body(targets, heart, spec, rng)
    pose = render._plan_stack(heart, body, spec, rng)
    intensity, _ = render._tissue_contrast(spec, rng)
    out = render._render_layers(render._heart_layers(heart.ed, heart), intensity, pose, spec,
                                (slice(0, 0), slice(0, 0)), 2, body.heart_origin, heart.frame)
    assert [a.shape for a in out] == [(0, 0, pose.shape[2])] * 3
    assert [a.dtype for a in out] == [np.uint8, np.float32, np.float32]
