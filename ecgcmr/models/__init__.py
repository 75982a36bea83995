"""Neural networks: the ECG ViT (+ masked autoencoder), a 1D ECG ResNet, the 3D CMR phase
encoder, and the projection / regression / downstream heads. Pure PyTorch.

Shapes: ECG ``(B, 12, 5000)`` z-scored at 500 Hz; CMR ``(B, 1, D, H, W)`` short-axis stacks.
Every encoder takes its frozen config dataclass and exposes ``.cfg`` and ``.out_dim``.
"""

from ecgcmr.models.cmr_resnet3d import CMR_TRAINABLE, CmrEncoder, CmrEncoderConfig
from ecgcmr.models.ecg_cnn import EcgCnnConfig, EcgResNet1d
from ecgcmr.models.ecg_vit import EcgMAE, EcgViT, EcgVitConfig, patchify, unpatchify
from ecgcmr.models.factory import (
    ECG_KINDS,
    SIZES,
    build_cmr_encoder,
    build_ecg_encoder,
    count_parameters,
    ecg_config,
)
from ecgcmr.models.heads import MlpHead, ProjectionHead, RegressionHead

__all__ = [
    "CMR_TRAINABLE", "ECG_KINDS", "SIZES", "CmrEncoder", "CmrEncoderConfig", "EcgCnnConfig",
    "EcgMAE", "EcgResNet1d", "EcgViT", "EcgVitConfig", "MlpHead", "ProjectionHead",
    "RegressionHead",
    "build_cmr_encoder", "build_ecg_encoder", "count_parameters", "ecg_config", "patchify",
    "unpatchify",
]
