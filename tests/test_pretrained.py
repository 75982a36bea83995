"""Shipped weight sets: how one is made (``train_weight_set``, on the tiny profile), and the
sets the package ships: intact, of the configuration they claim, small, described by a card
rendered from their record, and as good on the regenerated cohort as that card says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from ecgcmr.config import get_profile
from ecgcmr.data.cache import Cache, build_cache
from ecgcmr.data.manifest import read_manifest
from ecgcmr.pretrain import evaluate_stage, load_cmr_encoder, load_ecg_encoder, train_stage
from ecgcmr.pretrained import (
    CARD,
    MODEL_CARD,
    NOT_CLINICAL,
    WEIGHTS_ROOT,
    card,
    comparison_grid,
    file_name,
    measure_weight_set,
    render_model_card,
    set_configs,
    set_dir,
    sha256,
    shipped_checkpoint,
    shipped_sets,
    shipped_validation,
    train_weight_set,
)
from ecgcmr.synth.cohort import cohort_spec, generate_cohort
from ecgcmr.train import load_stage

# the tests of the tiny set share one worker, so the set is trained once
ONE_SET = pytest.mark.xdist_group("tiny_weight_set")
PROVENANCE = {"git_sha": "0" * 40, "git_dirty": False, "platform": "test", "cpu_count": 1,
              "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cache, Path]:
    """A tiny-profile set for dual, ed, ecg_only and random, trained into a temporary root."""
    tmp = tmp_path_factory.mktemp("weights")
    manifest = generate_cohort(tmp / "cohort", cohort_spec("tiny", seed=0), workers=1,
                               progress=False)
    cache = build_cache(read_manifest(manifest), tmp / "cache", get_profile("tiny").cache_spec(),
                        progress=False)
    train_weight_set(cache, "tiny", 0, ["dual", "ed", "ecg_only", "random"],
                     work_dir=tmp / "work", command="ecgcmr weights --profile tiny",
                     provenance=PROVENANCE, root=tmp / "root", progress=False, device="cpu")
    return cache, tmp / "root"


@ONE_SET
def test_a_set_holds_every_stage_its_methods_need_with_a_card_from_its_record(tiny_set) -> None:  # noqa: ANN001
    cache, root = tiny_set
    info = card("tiny", 0, root)
    configs = set_configs("tiny", 0, ["dual", "ed", "ecg_only", "random"])
    assert list(info["files"]) == [file_name(c) for c in configs] == [
        "stage_a_cmr_ed.pt", "stage_a_cmr_es.pt", "stage_b_ecg_mae.pt",
        "stage_c_align_dual.pt", "stage_c_align_ed.pt"]
    for cfg in configs:
        path = shipped_checkpoint(cfg, "tiny", root)
        assert path is not None and sha256(path) == info["files"][path.name]["sha256"]
        loaded_cfg, weights = load_stage(path)
        assert loaded_cfg == cfg
        assert all(v.dtype != torch.float16 for v in weights.values())   # loaded as float32
        assert torch.load(path, weights_only=True)["model"][next(iter(weights))].dtype in (
            torch.float16, torch.int64, torch.bool)                      # stored small
        record = info["training"][path.name]
        assert 1 <= record["best_epoch"] <= record["epochs_run"] <= record["epochs_allowed"]
        curve = pd.read_csv(set_dir("tiny", 0, root) / "curves" / f"{path.stem}.csv")
        assert len(curve) == record["epochs_run"]
        assert curve["val_loss"].min() == pytest.approx(record["best_val_loss"])
    # held-out metrics: every file's validation, a probe per trained method (random has none)
    assert set(info["metrics"]["validation"]) == set(info["files"])
    assert set(info["metrics"]["probe_test_r2"]) == {"dual", "ed", "ecg_only"}
    text = (set_dir("tiny", 0, root) / MODEL_CARD).read_text()
    assert text == render_model_card(info)
    assert NOT_CLINICAL in text.lower() and "0" * 40 in text


@ONE_SET
def test_the_cards_metrics_are_what_the_shipped_files_measure(tiny_set) -> None:  # noqa: ANN001
    cache, root = tiny_set
    info = card("tiny", 0, root)
    again = measure_weight_set(cache, set_dir("tiny", 0, root), info["files"],
                               ["dual", "ed", "ecg_only", "random"], 0)
    for name, metrics in info["metrics"]["validation"].items():
        assert again["validation"][name] == pytest.approx(metrics, rel=1e-6), name
        # what notebook 02 shows for shipped weights instead of measuring them again
        assert shipped_validation(set_dir("tiny", 0, root) / name) == metrics
    for method, r2 in info["metrics"]["probe_test_r2"].items():
        assert again["probe_test_r2"][method] == pytest.approx(r2, rel=1e-6), method


@ONE_SET
def test_stage_c_retrained_from_the_shipped_files_repeats_its_logged_first_steps(
        tiny_set, tmp_path: Path) -> None:  # noqa: ANN001
    cache, root = tiny_set
    folder = set_dir("tiny", 0, root)
    cfg = get_profile("tiny").stage_config("align", seed=0, method="dual")
    init = {"ed": folder / "stage_a_cmr_ed.pt", "es": folder / "stage_a_cmr_es.pt",
            "ecg": folder / "stage_b_ecg_mae.pt"}
    logged = card("tiny", 0, root)["training"]["stage_c_align_dual.pt"]["first_steps"]
    result = train_stage(cache, cfg, tmp_path / "again", init=init, progress=False,
                         device="cpu", stop_after_steps=len(logged))
    assert result.partial and not (tmp_path / "again" / "done.json").exists()
    steps = pd.read_csv(tmp_path / "again" / "steps.csv")
    assert list(steps["step"]) == [s["step"] for s in logged]
    assert list(steps["loss"]) == pytest.approx([s["loss"] for s in logged], rel=1e-5)


@ONE_SET
def test_another_configuration_is_refused_and_a_missing_one_is_not_found(tiny_set) -> None:  # noqa: ANN001
    cache, root = tiny_set
    tiny = get_profile("tiny")
    ecg = tiny.stage_config("ecg", seed=0)
    # only on the cohort the set was trained on: another (here one subject fewer) trains anew
    assert shipped_checkpoint(ecg, "tiny", root, cache=cache) is not None
    other = dataclasses.replace(cache, index=cache.index.iloc[:-1])
    assert other.content_key() != cache.content_key()
    assert shipped_checkpoint(ecg, "tiny", root, cache=other) is None
    with pytest.raises(ValueError, match="differs in: optim"):
        shipped_checkpoint(tiny.stage_config("ecg", seed=0, epochs=99), "tiny", root)
    assert shipped_checkpoint(tiny.stage_config("ecg", seed=1), "tiny", root) is None
    assert shipped_checkpoint(tiny.stage_config("align", seed=0, method="es"), "tiny",
                              root) is None
    with pytest.raises(FileNotFoundError, match="no pretrained weights.*'tiny' seed 3.*tiny "
                                                "seed 0"):
        card("tiny", 3, root)


def test_the_comparison_takes_the_methods_every_set_ships_plus_random(tmp_path: Path) -> None:
    import json

    for seed, methods in ((0, ["ed", "dual", "ecg_only"]), (1, ["dual", "ecg_only"])):
        set_dir("tiny", seed, tmp_path).mkdir(parents=True)
        (set_dir("tiny", seed, tmp_path) / CARD).write_text(json.dumps({"methods": methods}))
    # the methods' own order, ed left out (seed 1 lacks it: no cell may train), random added
    assert comparison_grid("tiny", tmp_path) == (["dual", "ecg_only", "random"], [0, 1])
    with pytest.raises(ValueError, match="no pretrained weights are shipped for profile "
                                         "'paper'.*'tiny'"):
        comparison_grid("paper", tmp_path)


# --------------------------------------------------------------------------- what is shipped
SHIPPED = shipped_sets()


def test_the_package_ships_sets_that_are_intact_small_and_of_their_profiles_recipe() -> None:
    assert SHIPPED, "no weight set is shipped"
    total = 0
    for profile, seed in SHIPPED:
        info = card(profile, seed)
        folder = set_dir(profile, seed)
        assert info["profile"] == profile and info["seed"] == seed
        assert list(info["files"]) == [file_name(c) for c in
                                       set_configs(profile, seed, info["methods"])]
        for cfg in set_configs(profile, seed, info["methods"]):
            assert shipped_checkpoint(cfg, profile) == folder / file_name(cfg)
        total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert (folder / MODEL_CARD).read_text() == render_model_card(info)
        assert load_cmr_encoder(folder / "stage_a_cmr_ed.pt").out_dim > 0
        assert load_ecg_encoder(folder / "stage_b_ecg_mae.pt").out_dim > 0
    assert total <= 40e6                                   # all sets together


def test_shipped_sets_reproduce_their_validation_metrics_on_the_regenerated_cohort(
        tmp_path: Path) -> None:
    """The validation split of each shipped set's cohort regenerated from its seed (the same
    files as in the whole cohort), every shipped file measured again."""
    for profile, seed in SHIPPED:
        info = card(profile, seed)
        prof = get_profile(profile)
        manifest = generate_cohort(tmp_path / profile, cohort_spec(prof, seed=0), workers=1,
                                   progress=False, split="val")
        subjects = read_manifest(manifest)
        assert len(subjects) == info["cohort"]["n"]["val"]
        cache = build_cache(subjects, tmp_path / f"{profile}-cache", prof.cache_spec(),
                            progress=False)
        one_subject = 1.0 / len(subjects)
        for name, expected in info["metrics"]["validation"].items():
            got = evaluate_stage(cache, set_dir(profile, seed) / name)
            assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-3), name
            for key in set(expected) - {"val_loss"}:   # retrieval: within one subject
                assert got[key] == pytest.approx(expected[key], abs=one_subject + 1e-6), key


def test_the_weights_root_holds_nothing_but_sets() -> None:
    stray = [p for p in WEIGHTS_ROOT.glob("*/*") if not (p.is_dir() and (p / CARD).is_file())]
    assert not stray, stray
