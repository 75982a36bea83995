"""Build encoders by name, so configs and notebooks pick models with two strings."""

from __future__ import annotations

from torch import nn

from ecgcmr.models.cmr_resnet3d import CmrEncoder, CmrEncoderConfig
from ecgcmr.models.ecg_cnn import EcgCnnConfig, EcgResNet1d
from ecgcmr.models.ecg_vit import EcgViT, EcgVitConfig

SIZES: tuple[str, ...] = ("tiny", "teaching", "paper")
ECG_KINDS: tuple[str, ...] = ("vit", "cnn")


def _check(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def ecg_config(kind: str, size: str, **overrides: object) -> EcgVitConfig | EcgCnnConfig:
    """The config preset ``size`` of ECG encoder ``kind`` (fields overridable)."""
    _check(kind, ECG_KINDS, "ECG encoder kind")
    _check(size, SIZES, "model size")
    cls = EcgVitConfig if kind == "vit" else EcgCnnConfig
    return getattr(cls, size)(**overrides)


def build_ecg_encoder(kind: str = "vit", size: str = "paper",
                      **overrides: object) -> EcgViT | EcgResNet1d:
    """A freshly initialised ECG encoder: ``(B, 12, T) -> (B, out_dim)``.

    Args:
        kind: ``"vit"`` (the paper's; MAE-pretrainable) or ``"cnn"`` (1D ResNet).
        size: ``"tiny"`` | ``"teaching"`` | ``"paper"``.
        overrides: config fields to change (e.g. ``depth=4``).
    """
    cfg = ecg_config(kind, size, **overrides)
    return EcgViT(cfg) if isinstance(cfg, EcgVitConfig) else EcgResNet1d(cfg)


def build_cmr_encoder(size: str = "paper", n_slices: int = 14,
                      **overrides: object) -> CmrEncoder:
    """A freshly initialised CMR phase encoder: ``(B, 1, n_slices, H, W) -> (B, out_dim)``."""
    _check(size, SIZES, "model size")
    return CmrEncoder(getattr(CmrEncoderConfig, size)(n_slices=n_slices, **overrides))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ECG_KINDS", "SIZES", "build_cmr_encoder", "build_ecg_encoder", "count_parameters",
           "ecg_config"]
