"""The small shipped weights: intact, of the configuration they claim, and as good on the
regenerated cohort as their model card says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecgcmr.config import get_profile
from ecgcmr.pretrain import evaluate_alignment, load_cmr_encoder, load_ecg_encoder, obtain_stage
from ecgcmr.pretrained import WEIGHTS_ROOT, card, file_name, sha256, shipped_checkpoint
from ecgcmr.train import load_stage

TEACHING = get_profile("teaching")


def _shipped_configs() -> list:
    return [TEACHING.stage_config("cmr", seed=0, phase="ed"),
            TEACHING.stage_config("cmr", seed=0, phase="es"),
            TEACHING.stage_config("ecg", seed=0),
            TEACHING.stage_config("align", seed=0, method="dual")]


def test_shipped_weights_are_intact_small_and_of_the_profiles_configuration() -> None:
    info = card("teaching")
    files = info["files"]
    assert sorted(files) == sorted(file_name(c) for c in _shipped_configs())
    total = sum((WEIGHTS_ROOT / "teaching" / f).stat().st_size for f in files)
    assert total < 8e6                                          # "a few MB"
    for cfg in _shipped_configs():
        path = shipped_checkpoint(cfg, "teaching")
        assert path is not None and sha256(path) == files[path.name]["sha256"]
        loaded_cfg, weights = load_stage(path)
        assert loaded_cfg == cfg
        assert all(v.dtype != torch.float16 for v in weights.values())  # loaded as float32
    assert load_cmr_encoder(WEIGHTS_ROOT / "teaching" / "stage_a_cmr_ed.pt").out_dim > 0
    assert load_ecg_encoder(WEIGHTS_ROOT / "teaching" / "stage_c_align_dual.pt").out_dim > 0
    assert "synthetic" in (WEIGHTS_ROOT / "teaching" / "MODEL_CARD.md").read_text()


def test_another_configuration_is_refused_and_uncovered_stages_train(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other settings .differs in: seed"):
        shipped_checkpoint(TEACHING.stage_config("ecg", seed=1), "teaching")
    with pytest.raises(FileNotFoundError, match="no pretrained weights.*'tiny'"):
        card("tiny")
    # stage C of a method that is not shipped is not found (obtain_stage then trains it)
    assert shipped_checkpoint(TEACHING.stage_config("align", seed=0, method="ed"),
                              "teaching") is None


def test_shipped_weights_reproduce_the_cards_validation_retrieval(tmp_path: Path) -> None:
    from ecgcmr.data.cache import build_cache
    from ecgcmr.data.manifest import read_manifest
    from ecgcmr.synth.cohort import cohort_spec, generate_cohort

    info = card("teaching")
    expected = info["metrics"]["stage_c_align_dual"]
    # only the validation subjects of the teaching cohort: the same files as in the whole
    # cohort (one seed per subject), so the same validation split the card was measured on
    spec = cohort_spec(TEACHING, seed=0)
    manifest = generate_cohort(tmp_path / "cohort", spec, workers=1, progress=False,
                               split="val")
    subjects = read_manifest(manifest)
    assert len(subjects) == info["metrics"]["n_val"]
    cache = build_cache(subjects, tmp_path / "cache", TEACHING.cache_spec(), progress=False)
    stage_c, trained = obtain_stage(cache, TEACHING.stage_config("align", seed=0),
                                    tmp_path / "unused", pretrained_profile="teaching")
    assert trained is None
    got = evaluate_alignment(cache, stage_c)
    one_subject = 1.0 / info["metrics"]["n_val"]
    for key in ("ecg_to_ed_top1", "ecg_to_ed_top5", "ecg_to_es_top1", "ecg_to_es_top5"):
        assert got[key] == pytest.approx(expected[key], abs=one_subject + 1e-6), key
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-3)
