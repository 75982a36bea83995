"""A 1D residual CNN over the 12-lead ECG: the small-machine alternative to the ViT.

``EcgResNet1d.forward: (B, 12, T) -> (B, out_dim)`` with ``out_dim = widths[-1]``. The 12 leads
are the input channels; a strided stem and strided stages shrink time, then a global average
over time gives one vector per ECG (so any ``T`` works, though the data contract is 5000).

Layout: stem (conv k=15, stride 2 → BN → ReLU → max-pool 2), then ``len(widths)`` stages of
basic residual blocks (two convs of ``kernel_size`` each, He et al. 2016, CVPR, "Deep Residual
Learning for Image Recognition", Fig. 2 left), the first block of every stage after the first
halving time. A 15-sample (30 ms) stem kernel spans a QRS upstroke at 500 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from ecgcmr.constants import LEADS


@dataclass(frozen=True)
class EcgCnnConfig:
    """Shape of :class:`EcgResNet1d`."""

    n_leads: int = len(LEADS)                           # input channels (12 standard leads)
    stem_width: int = 32                                # channels after the stem
    stem_kernel: int = 15                               # stem conv kernel (samples; 30 ms)
    widths: tuple[int, ...] = (32, 64, 128, 256)        # channels of each stage
    blocks: tuple[int, ...] = (2, 2, 2, 2)              # residual blocks per stage
    kernel_size: int = 7                                # conv kernel inside blocks (odd)
    dropout: float = 0.0                                # dropout before the pooled output

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must be non-empty "
                             "and of equal length")
        values = (self.n_leads, self.stem_width, self.stem_kernel, self.kernel_size,
                  *self.widths, *self.blocks)
        if min(values) < 1:
            raise ValueError(f"all sizes of EcgCnnConfig must be >= 1, got {self}")
        if self.kernel_size % 2 == 0 or self.stem_kernel % 2 == 0:
            raise ValueError("kernel sizes must be odd (symmetric 'same' padding)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def out_dim(self) -> int:
        """Width of the pooled output (the last stage's channels)."""
        return self.widths[-1]

    @classmethod
    def paper(cls, **overrides: object) -> EcgCnnConfig:
        """ResNet-18-like: widths 64-128-256-512, 2 blocks each (≈ 8.7M parameters)."""
        return replace(cls(stem_width=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
                       **overrides)

    @classmethod
    def teaching(cls, **overrides: object) -> EcgCnnConfig:
        """Laptop size: widths 32-64-128-256, 1 block each."""
        return replace(cls(stem_width=32, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1)),
                       **overrides)

    @classmethod
    def tiny(cls, **overrides: object) -> EcgCnnConfig:
        """CI size: widths 8-16-32-64, 1 block each."""
        return replace(cls(stem_width=8, widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1)),
                       **overrides)


class BasicBlock1d(nn.Module):
    """Two convs with a residual connection: ``(B, C_in, T) -> (B, C_out, ceil(T / stride))``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection shortcut when the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class EcgResNet1d(nn.Module):
    """1D residual CNN ECG encoder. ``forward: (B, 12, T) -> (B, out_dim)``.

    Attributes:
        cfg: the :class:`EcgCnnConfig` it was built from.
        out_dim: ``cfg.widths[-1]``.
    """

    def __init__(self, cfg: EcgCnnConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or EcgCnnConfig()
        self.out_dim = cfg.out_dim
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.n_leads, cfg.stem_width, cfg.stem_kernel, stride=2,
                      padding=cfg.stem_kernel // 2, bias=False),
            nn.BatchNorm1d(cfg.stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        c_in = cfg.stem_width
        for i, (width, n_blocks) in enumerate(zip(cfg.widths, cfg.blocks, strict=True)):
            blocks = [BasicBlock1d(c_in if j == 0 else width, width, cfg.kernel_size,
                                   stride=2 if (i > 0 and j == 0) else 1)
                      for j in range(n_blocks)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(cfg.dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):  # He init for ReLU networks (He et al. 2015, ICCV)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[1] != self.cfg.n_leads:
            raise ValueError(f"EcgResNet1d expects ECGs of shape (B, {self.cfg.n_leads}, T), "
                             f"got {tuple(x.shape)}")
        feats = self.stages(self.stem(x))             # (B, C, T / 32)
        return self.drop(feats.mean(dim=-1))          # (B, C): global average over time


__all__ = ["BasicBlock1d", "EcgCnnConfig", "EcgResNet1d"]
