"""Stage C with the frozen CMR trunks read from a cache gives the same training as running them;
the flip augmentation and its variant draw agree; the cache is keyed, reused and refused where
it cannot be exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecgcmr.config import get_profile
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.data.dataset import Augment, PairedDataset, flip_left_right
from ecgcmr.losses import retrieval_accuracy
from ecgcmr.models import build_cmr_encoder
from ecgcmr.pretrain import build_task, datasets, train_stage
from ecgcmr.stages import StageConfig
from ecgcmr.train import to_device
from ecgcmr.trunk_cache import trunk_features, trunk_shape, worth_caching

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def stage_a(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny cache and one epoch of stage A per phase (real checkpoints to key the cache)."""
    root = tmp_path_factory.mktemp("trunk")
    cache = build_cache(read_manifest(tiny_cohort), root / "cache", TINY.cache_spec(),
                        progress=False)
    init = {}
    for phase in ("ed", "es"):
        cfg = TINY.stage_config("cmr", phase=phase, epochs=1, batch_size=4)
        init[phase] = train_stage(cache, cfg, root / f"A-{phase}", progress=False).out_dir \
            / "best.pt"
    return cache, init


def _align_cfg(**kw) -> StageConfig:
    """Stage C with the flip (two variants per volume: the harder case for the cache)."""
    return TINY.stage_config("align", **{"method": "dual", "epochs": 2, "batch_size": 4,
                                         "cmr_augment": "flip", **kw})


def test_forward_is_trunk_then_the_rest() -> None:
    enc = build_cmr_encoder("tiny", n_slices=10).eval()
    x = torch.randn(3, 1, 10, 48, 48)
    assert torch.equal(enc(x), enc.forward_from_trunk(enc.forward_trunk(x)))
    assert trunk_shape(enc, (10, 48, 48)) == tuple(enc.forward_trunk(x).shape[1:])


def test_stage_c_trains_identically_with_and_without_the_trunk_cache(stage_a, tmp_path) -> None:
    cache, init = stage_a
    on = train_stage(cache, _align_cfg(), tmp_path / "on", init=init, trunk_cache="on",
                     progress=False)
    off = train_stage(cache, _align_cfg(), tmp_path / "off", init=init, trunk_cache="off",
                      progress=False)
    assert len(on.history) == len(off.history) == 2
    for a, b in zip(on.history, off.history, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    w_on = torch.load(on.out_dir / "best.pt", weights_only=True)["model"]
    w_off = torch.load(off.out_dir / "best.pt", weights_only=True)["model"]
    for key in w_off:
        torch.testing.assert_close(w_on[key], w_off[key], rtol=1e-4, atol=1e-5)
    # the cached run really read features: one file per phase, both variants
    assert len(list((cache.root / "trunk_features").glob("*-v2-r*.npy"))) == 2


def test_a_training_batch_gives_the_same_loss_and_gradients(stage_a) -> None:
    cache, init = stage_a
    cfg = _align_cfg()
    torch.manual_seed(0)   # the projection heads are freshly initialised: the same in both
    volumes_task = build_task(cache, cfg, init)
    torch.manual_seed(0)
    trunk_task = build_task(cache, cfg, init, cmr_input="trunk")
    trunk = {f"cmr_{p}": trunk_features(cache, p, trunk_task.cmr[p], init[p], 2,
                                        progress=False) for p in ("ed", "es")}
    by_volume, _ = datasets(cache, volumes_task, cfg)
    by_trunk, _ = datasets(cache, trunk_task, cfg, trunk)
    flipped = set()
    for epoch in range(4):   # enough epochs that both variants occur
        for ds in (by_volume, by_trunk):
            ds.set_epoch(epoch)
        flipped |= {by_volume.augment.cmr_variant(by_volume._rng(i))
                    for i in range(len(by_volume))}
        grads = []
        for task, ds in ((volumes_task, by_volume), (trunk_task, by_trunk)):
            task.set_train_mode()
            task.zero_grad()
            batch = to_device([torch.stack(x) for x in zip(*[ds[i] for i in range(4)], strict=True)],
                              torch.device("cpu"))
            loss, _ = task(batch)
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in task.trainable_parameters()
                                          if p.grad is not None]))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
        for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
            torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)
    assert flipped == {0, 1}


def test_the_cache_is_keyed_by_the_checkpoint_and_reused(stage_a, monkeypatch) -> None:
    cache, init = stage_a
    enc_ed = build_task(cache, _align_cfg(), init).cmr["ed"]
    first = trunk_features(cache, "ed", enc_ed, init["ed"], 2, progress=False)
    import ecgcmr.trunk_cache as tc

    def must_not_compute(*args, **kwargs):
        raise AssertionError("recomputed a cached file")

    monkeypatch.setattr(tc, "_compute", must_not_compute)
    again = trunk_features(cache, "ed", enc_ed, init["ed"], 2, progress=False)
    assert again.filename == first.filename
    with pytest.raises(AssertionError, match="recomputed"):  # another checkpoint: another key
        trunk_features(cache, "ed", enc_ed, init["es"], 2, progress=False)
    rows = cache.rows()["row"].to_numpy()
    assert np.abs(first[rows]).sum() > 0 and first.shape[:2] == (len(cache.index), 2)


def test_flip_augmentation_and_its_variant_draw_agree(stage_a) -> None:
    cache, _ = stage_a
    aug = Augment(cmr_augment="flip")
    plain = PairedDataset(cache, "train", augment=None, fields=("cmr_ed", "cmr_es"))
    flipped = PairedDataset(cache, "train", augment=aug, fields=("cmr_ed", "cmr_es"))
    seen = set()
    for epoch in range(3):
        flipped.set_epoch(epoch)
        for i in range(len(flipped)):
            variant = aug.cmr_variant(flipped._rng(i))
            seen.add(variant)
            for a, b in zip(flipped[i], plain[i], strict=True):   # ED and ES flip together
                want = torch.from_numpy(flip_left_right(b.numpy()).copy()) if variant else b
                assert torch.equal(a, want)
    assert seen == {0, 1}


def test_the_cache_is_refused_where_it_cannot_be_exact(stage_a, tmp_path) -> None:
    cache, init = stage_a
    with pytest.raises(ValueError, match="finite set of variants"):
        train_stage(cache, _align_cfg(cmr_augment="random"), tmp_path / "r", init=init,
                    trunk_cache="on", progress=False)
    with pytest.raises(ValueError, match="finite set of variants"):
        PairedDataset(cache, "train", augment=Augment(), cmr_trunk={"cmr_ed": np.zeros(1)})
    with pytest.raises(ValueError, match="trunk_cache must be one of"):
        train_stage(cache, _align_cfg(), tmp_path / "x", init=init, trunk_cache="yes",
                    progress=False)


def test_auto_caches_where_features_are_smaller_than_volumes() -> None:
    teaching, paper = get_profile("teaching"), get_profile("paper")
    small = build_cmr_encoder("teaching", n_slices=teaching.cmr_shape[0])
    assert worth_caching(small, teaching.cmr_shape, variants=2)   # 2 x 12,288 <= 49,152
    big = build_cmr_encoder("paper", n_slices=paper.cmr_shape[0])
    # the paper's R50 trunk gives 1024 x 14 x 6 x 6 per variant: 4x the volume
    assert trunk_shape(big, paper.cmr_shape) == (1024, 14, 6, 6)
    assert not worth_caching(big, paper.cmr_shape, variants=1)


def test_stage_c_defaults_to_the_public_codes_flip() -> None:
    assert TINY.stage_config("align").cmr_augment == "flip"
    assert TINY.stage_config("cmr").cmr_augment == "random"


def test_unaugmented_cmr_caches_one_variant(stage_a, tmp_path) -> None:
    cache, init = stage_a
    cfg = _align_cfg(cmr_augment="none", epochs=1)
    train_stage(cache, cfg, tmp_path / "C", init=init, progress=False)   # trunk_cache="auto"
    assert len(list((cache.root / "trunk_features").glob("*-v1-r*.npy"))) == 2
    with pytest.raises(ValueError, match="cmr_augment"):
        StageConfig(stage="align", cmr_augment="rotate")


def test_validation_in_one_pass_matches_loss_and_retrieval_computed_apart(stage_a) -> None:
    cache, init = stage_a
    cfg = _align_cfg()
    task = build_task(cache, cfg, init)
    _, val = datasets(cache, task, cfg)
    loader = torch.utils.data.DataLoader(val, batch_size=2)
    got = task.evaluate(loader, torch.device("cpu"))
    task.eval()
    with torch.no_grad():
        losses = [(float(task(b)[0]), len(b[0])) for b in loader]
        z = [task.embed(b) for b in loader]
    want_loss = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    assert got["val_loss"] == pytest.approx(want_loss, rel=1e-6)
    ecg = torch.cat([b["ecg"] for b in z])
    for phase in ("ed", "es"):
        want = retrieval_accuracy(ecg, torch.cat([b[phase] for b in z]), k=(1, 5))
        for k, v in want.items():
            assert got[f"ecg_to_{phase}_{k}"] == pytest.approx(float(v))
