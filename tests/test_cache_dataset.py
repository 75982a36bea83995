"""The preprocessing cache (QC report, resume, determinism) and the torch dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb

import ecgcmr.data.cache as cache_module
from ecgcmr.config import get_profile
from ecgcmr.data import Augment, PairedDataset, build_cache, open_cache, read_manifest
from ecgcmr.errors import DataError

SPEC = get_profile("tiny").cache_spec()


@pytest.fixture(scope="module")
def cache(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_cache(read_manifest(tiny_cohort), tmp_path_factory.mktemp("cache"), SPEC,
                       progress=False)


def test_cache_arrays_are_model_ready(cache) -> None:
    n = len(cache.index)
    assert cache.ecg.shape == (n, 12, 5000)
    assert cache.cmr_ed.shape == cache.cmr_es.shape == (n, *SPEC.grid.shape)
    assert cache.index["ok"].all() and cache.qc_report.empty
    ecg = np.asarray(cache.ecg, dtype=np.float64)
    assert np.allclose(ecg.mean(axis=(1, 2)), 0, atol=1e-2)   # z-scored per record
    assert np.allclose(ecg.std(axis=(1, 2)), 1, atol=1e-2)
    ed = np.asarray(cache.cmr_ed, dtype=np.float32)
    assert np.isfinite(ed).all() and ed.min() >= -0.01 and ed.max() <= 1.01
    # the heart was centred: ED blood pool (bright) is brighter in the middle than at the rim
    d, h, w = SPEC.grid.shape
    centre = ed[:, :, h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4].mean()
    assert centre > ed[:, :, :4, :].mean()


def test_bad_records_are_reported_and_left_out(tiny_cohort: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    df = read_manifest(cohort / "manifest.csv")
    ecg_bad, cmr_bad = df["subject_id"].iloc[1], df["subject_id"].iloc[2]
    wfdb.wrsamp(ecg_bad, fs=500, units=["mV"] * 2, sig_name=["I", "II"],
                p_signal=np.zeros((5000, 2)) + [[0.1, 0.2]], fmt=["16"] * 2,
                write_dir=str(cohort / "ecg"))
    Path(df["cmr_es_path"].iloc[2]).write_bytes(b"not a nifti file")
    cache = build_cache(df, tmp_path / "cache", SPEC, progress=False)
    qc = cache.qc_report
    assert set(qc["subject_id"]) == {ecg_bad, cmr_bad}
    assert qc.set_index("subject_id").loc[ecg_bad, "modality"] == "ecg"
    assert "aVR" in qc.set_index("subject_id").loc[ecg_bad, "reason"]  # names missing leads
    assert qc.set_index("subject_id").loc[cmr_bad, "file"].endswith("_es.nii.gz")
    assert not cache.index.set_index("subject_id").loc[[ecg_bad, cmr_bad], "ok"].any()
    assert cache.index["ok"].sum() == len(df) - 2
    served = PairedDataset(cache, split=None).subject_ids
    assert ecg_bad not in served and cmr_bad not in served
    on_disk = pd.read_csv(tmp_path / "cache" / "qc_report.csv")
    assert len(on_disk) == 2


def test_interrupted_build_resumes_to_the_same_arrays(tiny_cohort: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      cache) -> None:
    df = read_manifest(tiny_cohort)
    real = cache_module.preprocess_subject
    calls = {"n": 0}

    def crash_after_five(*args):  # noqa: ANN002, ANN202
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cache_module, "_COMMIT_EVERY", 2)
    monkeypatch.setattr(cache_module, "preprocess_subject", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        build_cache(df, tmp_path / "c", SPEC, progress=False)
    monkeypatch.setattr(cache_module, "preprocess_subject", real)
    resumed = build_cache(df, tmp_path / "c", SPEC, progress=False)
    for sid in df["subject_id"]:
        for field, array in resumed.arrays_of(sid).items():
            np.testing.assert_array_equal(array, cache.arrays_of(sid)[field])


def test_a_cache_built_with_other_settings_is_refused(tiny_cohort: Path, tmp_path: Path) -> None:
    df = read_manifest(tiny_cohort).head(2)
    build_cache(df, tmp_path, SPEC, progress=False)
    other = get_profile("tiny").cache_spec(notch_hz=60.0)
    with pytest.raises(DataError, match="other preprocessing settings"):
        build_cache(df, tmp_path, other, progress=False)


def test_open_cache_on_a_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a finished preprocessing cache"):
        open_cache(tmp_path)


def test_dataset_items(cache) -> None:
    ds = PairedDataset(cache, "train", targets=("lvedv_ml", "lvef_pct"))
    assert len(ds) == int((cache.index["split"] == "train").sum())
    ecg, ed, es, y = ds[0]
    assert ecg.shape == (12, 5000) and ecg.dtype == torch.float32
    assert ed.shape == es.shape == (1, *SPEC.grid.shape)
    row = ds.subjects.iloc[0]
    assert y.tolist() == pytest.approx([row["lvedv_ml"], row["lvef_pct"]], rel=1e-6)
    np.testing.assert_array_equal(ecg.numpy(), cache.ecg[row["row"]].astype(np.float32))


def test_augmentation_is_reproducible_and_changes_with_epoch(cache) -> None:
    ds = PairedDataset(cache, "train", augment=Augment(), seed=5)
    a = ds[1]
    again = PairedDataset(cache, "train", augment=Augment(), seed=5)[1]
    for x, y in zip(a, again, strict=True):
        torch.testing.assert_close(x, y)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a[0])
    plain = PairedDataset(cache, "train")[1]
    assert not torch.equal(a[1], plain[1])


def test_ed_and_es_are_shifted_together(cache) -> None:
    aug = Augment(ecg_scale=(1, 1), ecg_noise_sd=0, ecg_shift_max=0, cmr_intensity=(1, 1),
                  cmr_noise_sd=0, cmr_shift_max=3)
    ds, plain = PairedDataset(cache, "train", augment=aug, seed=1), PairedDataset(cache, "train")
    for i in range(4):
        _, ed, es = ds[i]
        _, ed0, es0 = plain[i]
        # find the shift of ED by brute force, and check ES moved by the same one
        shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
        best = min(shifts, key=lambda s: (torch.roll(ed0, s, dims=(-2, -1)) - ed)
                   [..., 3:-3, 3:-3].abs().sum())
        torch.testing.assert_close(torch.roll(es0, best, dims=(-2, -1))[..., 3:-3, 3:-3],
                                   es[..., 3:-3, 3:-3])


def test_dataloader_workers_give_the_same_batches(cache) -> None:
    ds = PairedDataset(cache, "train", augment=Augment(), seed=2)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        batches.append(next(iter(loader)))
    for x, y in zip(*batches, strict=True):
        torch.testing.assert_close(x, y)


def test_augment_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="ecg_scale"):
        Augment(ecg_scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="cmr_noise_sd"):
        Augment(cmr_noise_sd=-1)


def test_fields_select_what_is_read_and_augmentation_is_per_field(cache) -> None:
    full = PairedDataset(cache, "train", augment=Augment(), seed=3)
    ecg_only = PairedDataset(cache, "train", augment=Augment(), seed=3, fields=("ecg",))
    item = ecg_only[2]
    assert len(item) == 1
    torch.testing.assert_close(item[0], full[2][0])
    with pytest.raises(ValueError, match="fields"):
        PairedDataset(cache, "train", fields=("ecg", "labels"))
