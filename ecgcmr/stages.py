"""What one pretraining stage trains, and its identity.

A stage's configuration (:class:`StageConfig`, with its :class:`OptimConfig`) is its identity:
:func:`identity` (the sha256 of its canonical JSON) names reusable stage folders
(:func:`stage_dir`), and :func:`check_same_stage` is the one check, with one message, that a
folder, a resume point (``last.pt``) or a shipped weight file was trained with exactly this
configuration before it is used as this stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ecgcmr.constants import PHENOTYPES
from ecgcmr.data.dataset import Augment
from ecgcmr.losses import MAE_LOSSES
from ecgcmr.methods import ALIGNED, PHASES
from ecgcmr.models import CMR_TRAINABLE

STAGES: tuple[str, ...] = ("cmr", "ecg", "align")
# cmr_augment=None means the stage's own default: random intensity, noise and shift in stage A;
# flip in stage C (the public code's only CMR transform there; docs/method.md compares them)
DEFAULT_CMR_AUGMENT: dict[str, str] = {"cmr": "random", "ecg": "random", "align": "flip"}


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule; defaults are the paper's (DESIGN §5)."""

    epochs: int = 100
    warmup_epochs: int = 40           # linear warm-up, then half-cycle cosine to min_lr
    batch_size: int = 64              # global batch (split evenly across DDP ranks)
    lr: float = 1e-3
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.005       # not applied to biases and norm parameters
    patience: int = 15                # early stopping on validation loss (epochs), once the
    #                                   learning rate is below half its peak (ecgcmr.train)
    max_steps_per_epoch: int = 0      # 0: whole epoch; >0 caps it (smoke runs)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (contrastive batches)")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError("warmup_epochs must be within [0, epochs]")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError("need 0 <= min_lr <= lr and lr > 0")


@dataclass(frozen=True)
class StageConfig:
    """What one pretraining stage trains. Saved as JSON next to and inside its checkpoints."""

    stage: str                                # "cmr" (A) | "ecg" (B) | "align" (C)
    size: str = "tiny"                        # model presets: tiny | teaching | paper
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True                      # training-time augmentation (never on val)
    # how CMR volumes are augmented (ecgcmr.data.dataset.CMR_AUGMENTS); None: the stage's
    # default (DEFAULT_CMR_AUGMENT), resolved at construction so configs say what ran
    cmr_augment: str | None = None
    # stage A
    phase: str = "ed"                         # which phase's CMR encoder
    targets: tuple[str, ...] = PHENOTYPES     # regressed phenotypes
    # stage B
    mask_ratio: float = 0.7
    # "masked_mse": MSE on the masked patches (He et al. 2022; ecgcmr.losses.mae_loss);
    # "public": the authors' public MAE, 0.9·MSE(all patches) + 0.1·(1 - NCC)
    # (ecgcmr.losses.public_mae_loss; the paper profile's)
    mae_loss: str = "masked_mse"
    # stage C
    method: str = "dual"                      # an aligned method of ecgcmr.methods.METHODS
    ecg_encoder: str = "vit"                  # vit | cnn (cnn: no MAE initialisation)
    proj_dim: int = 128
    temperature: float = 0.07
    # what trains of each frozen CMR encoder (CmrEncoder.trainable_in_stage_c): "last_stage"
    # (last residual stage, slice layer, output layer) or "fc" (the output layer only: the
    # public code's models_cmr.py; the paper profile's)
    cmr_trainable: str = "last_stage"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.method not in ALIGNED:
            raise ValueError(f"method must be one of {ALIGNED}, got {self.method!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError("mask_ratio must be in (0, 1)")
        if self.stage == "ecg" and self.ecg_encoder != "vit":
            raise ValueError("the masked autoencoder (stage B) needs ecg_encoder='vit'")
        if self.mae_loss not in MAE_LOSSES:
            raise ValueError(f"mae_loss must be one of {MAE_LOSSES}, got {self.mae_loss!r}")
        if self.cmr_trainable not in CMR_TRAINABLE:
            raise ValueError(f"cmr_trainable must be one of {CMR_TRAINABLE}, "
                             f"got {self.cmr_trainable!r}")
        if self.cmr_augment is None:
            object.__setattr__(self, "cmr_augment", DEFAULT_CMR_AUGMENT[self.stage])
        Augment(cmr_augment=self.cmr_augment)     # validates it (one check, in one place)

    def augmentation(self) -> Augment | None:
        """The training-time transform of this stage (None when ``augment`` is off)."""
        return Augment(cmr_augment=self.cmr_augment) if self.augment else None

    def to_json(self) -> dict[str, object]:
        """The configuration as plain JSON (lists for tuples): what a checkpoint stores."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StageConfig:
        data = dict(data)
        optim = OptimConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in data.pop("optim").items()})
        return cls(optim=optim, **{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in data.items()})


def identity(cfg: StageConfig) -> str:
    """The stage's identity: sha256 of its canonical JSON (every field, sorted keys)."""
    return hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode()).hexdigest()


def stage_dir(models_root: str | Path, cfg: StageConfig) -> Path:
    """Where a reusable stage (A or B) lives: named by its identity."""
    name = f"{cfg.stage}-{cfg.phase}" if cfg.stage == "cmr" else cfg.stage
    return Path(models_root) / f"{name}-{cfg.size}-seed{cfg.seed}-{identity(cfg)[:10]}"


def check_same_stage(saved: dict[str, object], cfg: StageConfig, where: str) -> None:
    """Refuse ``where`` (a folder, a checkpoint, shipped weights) unless the configuration
    saved there (``saved``, a ``to_json()``) is exactly ``cfg``; the error names the fields
    that differ. The one test of "is this the same stage?"."""
    wanted = cfg.to_json()
    if saved == wanted:
        return
    differ = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
    raise ValueError(f"{where} holds a {cfg.stage!r} stage trained with other settings "
                     f"(differs in: {', '.join(differ)}); use a new folder, the same settings, "
                     "or retrain")


__all__ = ["DEFAULT_CMR_AUGMENT", "STAGES", "OptimConfig", "StageConfig", "check_same_stage",
           "identity", "stage_dir"]
