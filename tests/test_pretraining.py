"""The three stages on a small synthetic cohort: each lowers its loss, and the dual-phase
alignment retrieves the right CMR for an ECG well above chance on held-out subjects."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ecgcmr.config import get_profile
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.pretrain import (
    ecg_encoder_for,
    embed_ecg,
    load_cmr_encoder,
    load_ecg_encoder,
    phase_retrieval,
    train_stage,
)
from ecgcmr.synth.cohort import cohort_spec, generate_cohort

PROFILE = get_profile("tiny")


def _train_all_stages(root: Path) -> dict[str, object]:
    manifest = generate_cohort(root / "cohort", cohort_spec(PROFILE, seed=5, n_subjects=160),
                               workers=1, progress=False)
    cache = build_cache(read_manifest(manifest), root / "cache", PROFILE.cache_spec(),
                        progress=False)
    out: dict[str, object] = {"cache": cache, "root": root}
    for phase in ("ed", "es"):
        cfg = PROFILE.stage_config("cmr", phase=phase, epochs=4, batch_size=16)
        out[phase] = train_stage(cache, cfg, root / f"A-{phase}", progress=False)
    cfg = PROFILE.stage_config("ecg", epochs=4, batch_size=16)
    out["ecg"] = train_stage(cache, cfg, root / "B", progress=False)
    init = {k: out[k].out_dir / "best.pt" for k in ("ed", "es", "ecg")}
    cfg = PROFILE.stage_config("align", method="dual", epochs=12, batch_size=16)
    out["align"] = train_stage(cache, cfg, root / "C", init=init, progress=False)
    return out


def test_the_three_stages_end_to_end(tmp_path: Path) -> None:
    """One test on purpose: the stages are trained once (a fixture shared by several tests
    is rebuilt on each pytest-xdist worker that runs one of them)."""
    stages = _train_all_stages(tmp_path)
    for stage in ("ed", "es", "ecg", "align"):
        _check_lowers_its_validation_loss(stages, stage)
    _check_alignment_retrieves_well_above_chance(stages)
    _check_finished_stages_are_reused_not_retrained(stages)
    _check_each_phase_loads_its_own_cmr_checkpoint(stages)
    _check_retrieval_of_both_phases_for_every_method(stages)
    for method in ("dual", "ecg_only", "random"):
        _check_embeddings_cover_every_subject(stages, method)


def _check_lowers_its_validation_loss(stages, stage: str) -> None:
    losses = [h["val_loss"] for h in stages[stage].history]
    assert min(losses[1:]) < losses[0], losses


def _check_alignment_retrieves_well_above_chance(stages) -> None:
    # 24 validation subjects: chance top-5 is 5/24 = 0.21; single top-k values on so few
    # subjects are noisy, so the check is on the mean over both phases at the best epoch
    n_val = len(stages["cache"].rows("val"))
    best = stages["align"].history[stages["align"].best_epoch]
    top5 = (best["ecg_to_ed_top5"] + best["ecg_to_es_top5"]) / 2
    assert top5 > 1.75 * 5 / n_val, best


def _check_retrieval_of_both_phases_for_every_method(stages) -> None:
    n_val = len(stages["cache"].rows("val"))
    dual = phase_retrieval(stages["cache"], stages["align"].out_dir / "best.pt").set_index("phase")
    assert list(dual["tower"]) == ["ed", "es"] and (dual["n"] == n_val).all()
    best = stages["align"].history[stages["align"].best_epoch]
    for phase in ("ed", "es"):   # what training reported for the same weights and subjects
        assert abs(dual.loc[phase, "top5"] - best[f"ecg_to_{phase}_top5"]) <= 1 / n_val + 1e-9
    # notebook 02 hands it the embedding it made: the same table without a second ECG pass
    best_pt = stages["align"].out_dir / "best.pt"
    embedding = embed_ecg(load_ecg_encoder(best_pt), stages["cache"])
    reused = phase_retrieval(stages["cache"], best_pt, ecg_embedding=embedding)
    pd.testing.assert_frame_equal(reused.set_index("phase"), dual)
    with pytest.raises(ValueError, match="no row for"):
        phase_retrieval(stages["cache"], best_pt,
                        ecg_embedding=embedding[embedding["split"] != "val"])
    cfg = PROFILE.stage_config("align", method="ed", epochs=2, batch_size=16)
    init = {"ed": stages["ed"].out_dir / "best.pt", "ecg": stages["ecg"].out_dir / "best.pt"}
    ed_only = train_stage(stages["cache"], cfg, stages["root"] / "C-ed", init=init,
                          progress=False)                 # no ES encoder needed
    single = phase_retrieval(stages["cache"], ed_only.out_dir / "best.pt").set_index("phase")
    assert list(single["tower"]) == ["ed", "ed"]          # ES seen through the ED tower
    assert single[["top1", "top5"]].stack().between(0, 1).all()


def _check_finished_stages_are_reused_not_retrained(stages) -> None:
    cfg = PROFILE.stage_config("cmr", phase="ed", epochs=4, batch_size=16)
    steps_before = (stages["ed"].out_dir / "steps.csv").stat().st_mtime_ns
    again = train_stage(stages["cache"], cfg, stages["ed"].out_dir, progress=False)
    assert again.best_val_loss == stages["ed"].best_val_loss
    assert (stages["ed"].out_dir / "steps.csv").stat().st_mtime_ns == steps_before


def _check_each_phase_loads_its_own_cmr_checkpoint(stages) -> None:
    ed = load_cmr_encoder(stages["ed"].out_dir / "best.pt")
    es = load_cmr_encoder(stages["es"].out_dir / "best.pt")
    assert any(not torch.equal(a, b) for a, b in zip(ed.state_dict().values(),
                                                     es.state_dict().values(), strict=True))


def _check_embeddings_cover_every_subject(stages, method: str) -> None:
    encoder = ecg_encoder_for(method, seed=0, size=PROFILE.model_size,
                              stage_b=stages["ecg"].out_dir / "best.pt",
                              stage_c=stages["align"].out_dir / "best.pt")
    emb = embed_ecg(encoder, stages["cache"], device="cpu")
    cache_ok = stages["cache"].rows()
    assert list(emb["subject_id"]) == list(cache_ok["subject_id"])
    assert set(emb["split"]) == {"train", "val", "test"}
    features = emb.filter(regex=r"^e\d+$")
    assert features.shape[1] == encoder.out_dim and features.notna().all().all()
    assert isinstance(emb, pd.DataFrame)


def test_the_paper_stage_defaults_are_the_papers() -> None:
    cfg = get_profile("paper").stage_config("align")
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == (1e-3, (0.9, 0.95), 0.005)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.batch_size) == (100, 40, 64)
    assert (cfg.optim.patience, cfg.temperature, cfg.proj_dim, cfg.mask_ratio) == (
        15, 0.07, 128, 0.7)
    assert cfg.method == "dual" and cfg.size == "paper"


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method"):
        PROFILE.stage_config("align", method="triple")


def test_a_folder_with_a_stage_of_other_settings_is_refused(tmp_path: Path) -> None:
    from ecgcmr.config import get_profile
    from ecgcmr.pretrain import ecg_encoder_for, train_stage

    cfg = get_profile("tiny").stage_config("align", seed=0, method="dual")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_json()))
    other = get_profile("tiny").stage_config("align", seed=0, method="ed")
    with pytest.raises(ValueError, match="other settings.*method.*new folder"):
        train_stage(None, other, tmp_path)          # refused before the cache is read
    with pytest.raises(ValueError, match="ecg_only.*no stage B"):
        ecg_encoder_for("ecg_only", seed=0, size="tiny", ecg_kind="cnn", stage_b=None)
