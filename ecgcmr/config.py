"""Profiles: one name picks every size, from a CI smoke run to the paper's scale.

A profile shrinks sizes (cohort, grids, later epochs and model widths). One exception in method:
the ``paper`` profile follows the authors' public code where it differs from this project's
earlier choices (stage B's loss and optimiser, stage C's CMR freezing, covariates fused into the
outcome heads; ``PUBLIC_STAGE_FIELDS`` / ``PUBLIC_OPTIM_FIELDS`` below, each item cited where
it is implemented), while ``tiny`` and ``teaching`` keep those earlier choices.
Every choice is a parameter of its own.
Everything a profile sets can be overridden one parameter at a time (notebook ``parameters``
cell, ``ecgcmr reproduce --set key=value``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ecgcmr.constants import COVARIATES
from ecgcmr.data.cache import CacheSpec
from ecgcmr.data.cmr import CmrGrid
from ecgcmr.data.ecg import EcgPreprocessing
from ecgcmr.stages import OptimConfig, StageConfig

# The authors' public code's recipe, where it differs from this project's earlier choices:
# StageConfig fields and OptimConfig fields per stage. Sources:
# * stage B loss: angelbujalance/mae, models_mae.py (forward_loss) and main_pretrain.py
#   (--ncc_weight 0.1) -> ecgcmr.losses.public_mae_loss;
# * stage B optimiser: angelbujalance/mae, run_mae.sh (--lr 1e-4 --weight_decay 1e-4; AdamW
#   betas (0.9, 0.95) in main_pretrain.py, as here);
# * stage C freezing: qurAI-amsterdam/dual-phase-contrastive-learning,
#   ECG-CMR-CL/cmr_pretrain/models_cmr.py (ResNet503D_MLP) -> CmrEncoder.trainable_in_stage_c.
PUBLIC_STAGE_FIELDS: dict[str, dict[str, Any]] = {
    "ecg": {"mae_loss": "public"},
    "align": {"cmr_trainable": "fc"},
}
PUBLIC_OPTIM_FIELDS: dict[str, dict[str, Any]] = {
    "ecg": {"lr": 1e-4, "weight_decay": 1e-4},
}


@dataclass(frozen=True)
class Profile:
    """Sizes for one kind of run."""

    name: str
    description: str
    n_subjects: int                         # synthetic cohort size (paired subjects)
    # SaxSpec overrides of the synthetic cohort's rendered stacks (ecgcmr.synth.cohort.cohort_spec)
    sax: dict[str, Any] = field(default_factory=dict)
    # model grid (D slices, H, W): 14 slices x 10 mm covers base to apex of large hearts
    cmr_shape: tuple[int, int, int] = (14, 96, 96)
    cmr_spacing_mm: tuple[float, float, float] = (10.0, 1.8, 1.8)  # (slice, row, column)
    model_size: str = "paper"               # encoder presets (ecgcmr.models): tiny|teaching|paper
    # epochs per pretraining stage: A (CMR), B (ECG MAE), C (alignment); warm-up keeps the
    # paper's 40 % fraction (40 of 100 epochs)
    epochs: dict[str, int] = field(default_factory=lambda: {"cmr": 100, "ecg": 100, "align": 100})
    batch_size: int = 64                    # the paper's
    # per stage: StageConfig / OptimConfig fields other than the defaults (explicit overrides
    # of stage_config win)
    stage_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    optim_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    # covariates fused into the outcome heads (ecgcmr.evaluate.outcomes; empty: ECG alone).
    # The public code writes a covariate file per outcome endpoint
    # (ECG-CMR-CL/utils/generate_balanced_dataset.py) for its ECGwClinicalPredictor.
    outcome_covariates: tuple[str, ...] = ()

    def stage_config(self, stage: str, *, seed: int = 0, epochs: int | None = None,
                     batch_size: int | None = None, **overrides: Any) -> StageConfig:
        """The pretraining configuration of one stage at this profile's sizes (``epochs`` and
        ``batch_size`` None: the profile's)."""
        epochs = self.epochs[stage] if epochs is None else epochs
        optim = replace(OptimConfig(), **self.optim_fields.get(stage, {}), epochs=epochs,
                        warmup_epochs=round(0.4 * epochs),
                        batch_size=self.batch_size if batch_size is None else batch_size)
        fields = {**self.stage_fields.get(stage, {}), **overrides}
        return StageConfig(stage=stage, size=self.model_size, seed=seed, optim=optim, **fields)

    def cache_spec(self, **ecg: Any) -> CacheSpec:
        """The preprocessing of this profile's cache: its CMR grid, and the ECG chain's
        defaults (:class:`ecgcmr.data.ecg.EcgPreprocessing`) with ``ecg`` overrides, e.g.
        ``notch_hz=None`` (no notch)."""
        grid = replace(CmrGrid(), shape=self.cmr_shape, spacing_mm=self.cmr_spacing_mm)
        return CacheSpec(ecg=replace(EcgPreprocessing(), **ecg), grid=grid)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="tiny",
            description="CI smoke run: 48 subjects, small grids; the series in ~1-2 min on CPU",
            n_subjects=48,
            sax={"matrix": (96, 96)},
            cmr_shape=(10, 48, 48),
            cmr_spacing_mm=(10.0, 3.0, 3.0),
            model_size="tiny",
            epochs={"cmr": 3, "ecg": 3, "align": 4},
            batch_size=8,
        ),
        Profile(
            name="teaching",
            description="laptop: 2,000 subjects, 64x64 grids; the series in minutes on 2 CPU cores",
            n_subjects=2000,
            sax={"matrix": (128, 128)},
            cmr_shape=(12, 64, 64),
            cmr_spacing_mm=(10.0, 2.4, 2.4),
            model_size="teaching",
            # trained until the validation loss levels off (benchmarks/convergence.py,
            # benchmarks/measured/2026-12-07-convergence-teaching-cpu-2core.md): stage B
            # needs ~20 epochs to leave its plateau at loss 1.0 (6 epochs never did); stage
            # A's best is reached within 5 (20 with early stopping gave no better loss)
            epochs={"cmr": 5, "ecg": 40, "align": 24},
            batch_size=32,
            optim_fields={"ecg": {"patience": 4}, "align": {"patience": 4}},
        ),
        Profile(
            name="paper",
            description="the paper's scale: 34,000 subjects, 14x96x96 grids at 1.8 mm; GPU",
            n_subjects=34_000,
            sax={"matrix": (128, 128)},
            cmr_shape=(14, 96, 96),
            cmr_spacing_mm=(10.0, 1.8, 1.8),
            stage_fields=PUBLIC_STAGE_FIELDS,
            optim_fields=PUBLIC_OPTIM_FIELDS,
            outcome_covariates=COVARIATES,
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The named profile; a clear error lists the choices."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
