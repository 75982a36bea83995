"""Heads on top of the encoders: contrastive projection (stage C), phenotype regression
(stage A), and the paper's downstream MLP. Input widths are always the encoder's ``out_dim``,
passed in — never hard-coded (a quirk of the public code, which wrote 1000 and 576 by hand).
"""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """SimCLR-style projection ``(B, in_dim) -> (B, out_dim)``: Linear → BN → ReLU → Linear.

    Why an MLP: SimCLR found that a nonlinear projection before the contrastive loss makes
    the representation *below* it much better than a linear or no projection, because the
    loss can discard information (e.g. augmentation-specific detail) in the projection rather
    than in the representation (Chen et al. 2020, ICML, "A Simple Framework for Contrastive
    Learning of Visual Representations", §4.2, Fig. 8). The BatchNorm after the hidden layer
    follows SimCLR's implementation and the ``SimCLRProjectionHead`` the public code uses;
    the hidden Linear has no bias because the BatchNorm's shift replaces it. Needs batches of
    more than one sample in training mode.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        _check_dims(in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RegressionHead(nn.Module):
    """Stage A phenotype regression ``(B, in_dim) -> (B, out_dim)``.

    A single linear layer by default (the public code's ``output_layer``); with ``hidden_dim``
    a one-hidden-layer GELU MLP.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden_dim or 1)
        self.in_dim, self.out_dim = in_dim, out_dim
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                     nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MlpHead(nn.Module):
    """The paper's downstream head ``(B, D) -> (B, out_dim)``: D → D/2 → D/4 → out, GELU.

    ``D = in_dim`` is the frozen encoder's ``out_dim`` (plus covariates when fused); the hidden
    widths follow from it (integer division, at least 1).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, out_dim=out_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        h1, h2 = max(1, in_dim // 2), max(1, in_dim // 4)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, h1), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(h1, h2), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(h2, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


__all__ = ["MlpHead", "ProjectionHead", "RegressionHead"]
