"""The authors' public recipe as the ``paper`` profile's default (docs/deviations.md), with
this project's earlier choices kept as options, and what identifies a stage."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ecgcmr.config import get_profile
from ecgcmr.constants import CONDITIONS, COVARIATES
from ecgcmr.evaluate import outcomes
from ecgcmr.evaluate.outcomes import HeadSettings, balanced_classification
from ecgcmr.losses import mae_loss, ncc, public_mae_loss
from ecgcmr.manifests.ukb import (
    CARDIAC_ARREST_I46_ONLY,
    ICD10_GROUPS,
    UKB_FIELDS,
    ukb_table_to_columns,
)
from ecgcmr.models import build_cmr_encoder, build_ecg_encoder
from ecgcmr.stages import StageConfig, check_same_stage, identity, stage_dir
from ecgcmr.train import AlignTask, EcgMaeTask, make_optimizer


# ============================================================================================
# 1. Stage B: the public MAE loss and optimiser
# ============================================================================================
def _public_reference(imgs: torch.Tensor, pred: torch.Tensor, patch: int, w: float = 0.1
                      ) -> torch.Tensor:
    """``MaskedAutoencoderViT.forward_loss`` of angelbujalance/mae, step by step, for
    ``imgs`` (N, 1, leads, T) and patches (1, patch)."""
    n, c, h_img, w_img = imgs.shape
    p, q = 1, patch
    h, wn = h_img // p, w_img // q
    x = imgs.reshape(n, c, h, p, wn, q)
    x = torch.einsum("nchpwq->nhwpqc", x)
    target = x.reshape(n, h * wn, p * q * c)                       # patchify
    loss = (pred - target) ** 2
    y = pred.reshape(n, h, wn, p, q, 1)                            # unpatchify
    y = torch.einsum("nhwpqc->nchpwq", y)
    imgs_hat = y.reshape(n, 1, h * p, wn * q)
    tn = (imgs - imgs.mean(dim=-1, keepdim=True)) / (imgs.var(dim=-1, keepdim=True) + 1e-12) ** 0.5
    pn = (imgs_hat - imgs_hat.mean(dim=-1, keepdim=True)) / (
        imgs_hat.var(dim=-1, keepdim=True) + 1e-12) ** 0.5
    nb_of_signals = 1
    for dim in range(imgs.dim() - 1):
        nb_of_signals *= imgs.shape[dim]
    cross_corrs = (1.0 / (imgs.shape[-1] - 1)) * torch.sum(tn * pn, dim=-1)
    ncc_value = cross_corrs.sum() / nb_of_signals
    loss = loss.sum() / (torch.numel(loss) + 1e-5)
    return (1 - w) * loss + w * (1 - ncc_value)


def test_public_mae_loss_equals_the_public_codes_formula() -> None:
    g = torch.Generator().manual_seed(0)
    b, leads, t, patch = 3, 4, 40, 10
    ecg = torch.randn(b, leads, t, generator=g, dtype=torch.float64)
    target = ecg.reshape(b, leads * t // patch, patch)             # our lead-major patchify
    pred = target + 0.5 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    loss, terms = public_mae_loss(pred, target, leads)
    expected = _public_reference(ecg[:, None].float(), pred.float(), patch)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(0.9 * float(terms["mse"]) + 0.1 * (1 - float(terms["ncc"])),
                                        rel=1e-6)
    # every patch counts (not only masked ones) and NCC is per subject and lead
    assert float(ncc(ecg, ecg)) == pytest.approx(1.0, abs=1e-6)
    assert float(ncc(ecg, 3 * ecg + 1)) == pytest.approx(1.0, abs=1e-6)
    assert float(ncc(ecg, -ecg)) == pytest.approx(-1.0, abs=1e-6)


def test_the_masked_loss_stays_the_default_and_the_public_one_is_an_option() -> None:
    ecg = torch.randn(2, 12, 5000, generator=torch.Generator().manual_seed(1))
    base = StageConfig(stage="ecg", size="tiny")
    assert base.mae_loss == "masked_mse"
    torch.manual_seed(0)
    masked = EcgMaeTask(base)
    torch.manual_seed(0)
    public = EcgMaeTask(StageConfig(stage="ecg", size="tiny", mae_loss="public"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        loss_m, terms_m = masked((ecg,), torch.Generator().manual_seed(3))
        loss_p, terms_p = public((ecg,), g)
        pred, target, mask = masked.mae(ecg, 0.7, torch.Generator().manual_seed(3))
    assert set(terms_m) == {"mae"} and set(terms_p) == {"mae", "mse", "ncc"}
    assert float(loss_m) == pytest.approx(float(mae_loss(pred, target, mask)), rel=1e-6)
    assert float(loss_p) == pytest.approx(float(public_mae_loss(pred, target, 12)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="mae_loss"):
        StageConfig(stage="ecg", mae_loss="huber")


def test_paper_stage_b_has_its_own_optimiser_and_loss() -> None:
    paper = get_profile("paper")
    b = paper.stage_config("ecg")
    assert (b.optim.lr, b.optim.weight_decay, b.optim.betas) == (1e-4, 1e-4, (0.9, 0.95))
    assert b.mae_loss == "public" and b.mask_ratio == 0.7
    groups = make_optimizer([torch.nn.Parameter(torch.zeros(2, 2)),
                             torch.nn.Parameter(torch.zeros(2))], b.optim,
                            torch.device("cpu")).param_groups
    assert [(gr["lr"], gr["weight_decay"]) for gr in groups] == [(1e-4, 1e-4), (1e-4, 0.0)]
    for stage in ("cmr", "align"):                     # stages A and C keep lr 1e-3, wd 0.005
        cfg = paper.stage_config(stage)
        assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 0.005)
    assert paper.stage_config("ecg", mae_loss="masked_mse").mae_loss == "masked_mse"
    for name in ("tiny", "teaching"):
        cfg = get_profile(name).stage_config("ecg")
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.mae_loss) == (1e-3, 0.005,
                                                                         "masked_mse")


# ============================================================================================
# 2. Stage C: what trains of the frozen CMR encoders
# ============================================================================================
def _grads_after_one_step(cmr_trainable: str) -> dict[str, bool]:
    torch.manual_seed(0)
    cfg = StageConfig(stage="align", size="tiny", cmr_trainable=cmr_trainable)
    cmr = {p: build_cmr_encoder("tiny", n_slices=4) for p in ("ed", "es")}
    task = AlignTask(cfg, build_ecg_encoder("vit", "tiny"), cmr)
    task.set_train_mode()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 12, 5000, generator=g), torch.randn(4, 1, 4, 32, 32, generator=g),
             torch.randn(4, 1, 4, 32, 32, generator=g))
    loss, _ = task(batch)
    loss.backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for name, p in task.named_parameters()}


def test_public_freezing_trains_only_the_cmr_output_layer_and_the_heads() -> None:
    grads = _grads_after_one_step("fc")
    cmr = {n for n, has in grads.items() if n.startswith("cmr.") and has}
    assert cmr == {f"cmr.{p}.fc.{w}" for p in ("ed", "es") for w in ("weight", "bias")}
    trained = [n for n in grads if n.startswith(("proj.", "ecg.patch_embed", "ecg.blocks.0."))]
    assert len(trained) > 10 and all(grads[n] for n in trained)
    assert not any(grads[n] for n in grads if ".stages." in n or ".depth_collapse." in n)
    # the default (tiny, teaching): last stage, slice layer and output layer
    grads = _grads_after_one_step("last_stage")
    cmr = {n.split(".")[2] for n, has in grads.items() if n.startswith("cmr.") and has}
    assert cmr == {"stages", "depth_collapse", "fc"}
    assert not any(grads[n] for n in grads if ".stages.0." in n or ".stem." in n)
    assert get_profile("paper").stage_config("align").cmr_trainable == "fc"
    assert get_profile("teaching").stage_config("align").cmr_trainable == "last_stage"
    with pytest.raises(ValueError, match="cmr_trainable"):
        StageConfig(stage="align", cmr_trainable="none")


def test_the_cached_trunk_path_matches_under_the_public_freezing() -> None:
    torch.manual_seed(0)
    cfg = StageConfig(stage="align", size="tiny", cmr_trainable="fc")
    cmr = {p: build_cmr_encoder("tiny", n_slices=4) for p in ("ed", "es")}
    task = AlignTask(cfg, build_ecg_encoder("vit", "tiny"), cmr)
    task.set_train_mode()
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(4, 12, 5000, generator=g), torch.randn(4, 1, 4, 32, 32, generator=g),
             torch.randn(4, 1, 4, 32, 32, generator=g)]
    live, _ = task(batch)
    with torch.no_grad():
        trunks = [task.cmr[p].forward_trunk(x)
                  for p, x in zip(("ed", "es"), batch[1:], strict=True)]
    task.cmr_input = "trunk"
    cached, _ = task([batch[0], *trunks])
    assert float(cached.detach()) == pytest.approx(float(live.detach()), rel=1e-6)


# ============================================================================================
# 3. Stage identities: every field counts, one check
# ============================================================================================
def test_every_field_enters_the_stage_identity_and_configs_round_trip() -> None:
    base = get_profile("teaching").stage_config("align", seed=0)
    changed = {"seed": 1, "augment": False, "cmr_augment": "none", "mask_ratio": 0.5,
               "mae_loss": "public", "method": "ed", "ecg_encoder": "cnn", "proj_dim": 64,
               "temperature": 0.1, "cmr_trainable": "fc", "size": "tiny",
               "optim": replace(base.optim, lr=1e-4)}
    fields = {f.name for f in dataclasses.fields(StageConfig)} - {"stage", "phase", "targets"}
    assert set(changed) == fields, "a StageConfig field is missing from this test"
    identities = {identity(replace(base, **{k: v})) for k, v in changed.items()}
    assert len(identities) == len(changed) and identity(base) not in identities
    assert stage_dir("m", base).name.endswith(identity(base)[:10])
    for profile in ("tiny", "teaching", "paper"):
        for stage in ("cmr", "ecg", "align"):
            cfg = get_profile(profile).stage_config(stage)
            assert StageConfig.from_json(cfg.to_json()) == cfg


def test_a_stage_of_other_settings_is_refused_naming_the_fields() -> None:
    cfg = get_profile("tiny").stage_config("align")
    check_same_stage(cfg.to_json(), cfg, "here")                 # the same: accepted
    other = replace(cfg, method="ed", proj_dim=64).to_json()
    with pytest.raises(ValueError, match=r"here holds a .align. stage .*method, proj_dim"):
        check_same_stage(other, cfg, "here")


def test_paper_configs_name_the_public_choices() -> None:
    paper = get_profile("paper")
    b, c = paper.stage_config("ecg"), paper.stage_config("align")
    assert b.mae_loss == "public" and c.cmr_trainable == "fc"


# ============================================================================================
# 4. Outcomes: covariates fused into the heads
# ============================================================================================
def test_outcome_covariate_fusion_widens_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"s{i:03d}" for i in range(n)]
    features = pd.DataFrame({"subject_id": ids, "split": np.repeat(["train", "val", "test"], 20),
                             **{f"e{i:03d}": rng.normal(size=n) for i in range(5)}})
    table = pd.DataFrame({"subject_id": ids, "cad_ever": np.tile([0, 1], n // 2),
                          **{c: rng.normal(size=n) for c in COVARIATES}})
    widths: list[int] = []
    real = outcomes.MlpHead

    def recording(in_dim: int, out_dim: int, *args, **kwargs):
        widths.append(in_dim)
        return real(in_dim, out_dim, *args, **kwargs)

    monkeypatch.setattr(outcomes, "MlpHead", recording)
    settings = HeadSettings(epochs=1, patience=1)
    alone = balanced_classification(features, table, "cad", seeds=(0,), settings=settings)
    fused = balanced_classification(features, table, "cad", seeds=(0,), settings=settings,
                                    covariates=get_profile("paper").outcome_covariates)
    assert widths == [5, 5 + len(COVARIATES)]
    assert alone["value"].notna().all() and fused["value"].notna().all()
    assert get_profile("paper").outcome_covariates == COVARIATES
    assert get_profile("tiny").outcome_covariates == ()
    assert get_profile("teaching").outcome_covariates == ()


# ============================================================================================
# 5. Cardiac arrest: I46-I47, as the public code
# ============================================================================================
def _ukb_table(code: str) -> pd.DataFrame:
    row: dict[str, object] = {"eid": 1}
    for f in UKB_FIELDS:
        name = f"{f.field_id}-{f.instance or 0}.0"
        row[name] = {53: "2015-01-01", 41270: code, 41280: "2016-01-01", 40000: None,
                     31: 1, 20116: 0, 1558: 3}.get(f.field_id, 50.0)
    return pd.DataFrame([row])


def test_cardiac_arrest_is_icd10_i46_to_i47_with_i46_alone_an_option() -> None:
    assert ICD10_GROUPS["cardiac_arrest"] == ("I46", "I47")
    assert tuple(ICD10_GROUPS) == CONDITIONS
    for code, ever in (("I469", 1), ("I47.2", 1), ("I471", 1), ("I48", 0), ("I45", 0)):
        cols = ukb_table_to_columns(_ukb_table(code), censor_date="2020-01-01")
        assert cols.loc[0, "cardiac_arrest_ever"] == ever, code
    narrow = {**ICD10_GROUPS, "cardiac_arrest": CARDIAC_ARREST_I46_ONLY}
    cols = ukb_table_to_columns(_ukb_table("I472"), censor_date="2020-01-01",
                                icd10_groups=narrow)
    assert cols.loc[0, "cardiac_arrest_ever"] == 0
    cols = ukb_table_to_columns(_ukb_table("I460"), censor_date="2020-01-01",
                                icd10_groups=narrow)
    assert cols.loc[0, "cardiac_arrest_ever"] == 1 and cols.loc[0, "cardiac_arrest_event"] == 1
    with pytest.raises(ValueError, match="3-character"):
        ukb_table_to_columns(_ukb_table("I460"), censor_date="2020-01-01",
                             icd10_groups={**ICD10_GROUPS, "cardiac_arrest": ("I4",)})
