"""Training does not depend on the number of DataLoader workers: an augmented dataset must
not be served by workers that outlive an epoch (they would keep epoch 0's augmentation)."""

from __future__ import annotations

from pathlib import Path

import torch

from ecgcmr.config import get_profile
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.data.dataset import Augment, PairedDataset
from ecgcmr.pretrain import train_stage
from ecgcmr.train import loader_options

TINY = get_profile("tiny")


def test_stage_b_weights_are_the_same_with_0_and_1_workers(tiny_cohort: Path,
                                                            tmp_path: Path) -> None:
    cache = build_cache(read_manifest(tiny_cohort), tmp_path / "cache", TINY.cache_spec(),
                        progress=False)
    cfg = TINY.stage_config("ecg", epochs=3, batch_size=4)   # ECG augmentation every epoch
    weights = []
    for workers in (0, 1):
        result = train_stage(cache, cfg, tmp_path / f"w{workers}", progress=False,
                             num_workers=workers)
        weights.append(torch.load(result.out_dir / "last.pt", weights_only=True)["model"])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_only_unaugmented_datasets_keep_their_workers(tiny_cohort: Path, tmp_path: Path) -> None:
    cache = build_cache(read_manifest(tiny_cohort), tmp_path / "cache", TINY.cache_spec(),
                        progress=False)
    cpu = torch.device("cpu")
    augmented = PairedDataset(cache, "train", augment=Augment(), fields=("ecg",))
    plain = PairedDataset(cache, "val", augment=None, fields=("ecg",))
    assert loader_options(augmented, 2, cpu)["persistent_workers"] is False
    assert loader_options(plain, 2, cpu)["persistent_workers"] is True
    assert loader_options(plain, 0, cpu)["persistent_workers"] is False
