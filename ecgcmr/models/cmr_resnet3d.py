"""3D residual encoder of one cardiac phase's short-axis CMR stack (stage A, frozen in C).

Input contract: ``(B, 1, D, H, W)`` — ``D`` short-axis slices (base → apex, e.g. 10-14), ``H``
and ``W`` in-plane pixels (e.g. 48-96), intensities normalised by ``ecgcmr.data.cmr``.
``CmrEncoder.forward -> (B, out_dim)``.

Layout, the paper's as its public code builds it (``ResNet50-3D-MLP`` in
``qurAI-amsterdam/dual-phase-contrastive-learning``, ``cmr_pretrain/models_cmr.py``: the
SlowOnly-R50 trunk of PyTorchVideo without its head, average over H', W', a ``Linear(D', 1)``
over slice positions, then ``Linear(2048, 768)``). SlowOnly (Feichtenhofer et al. 2019, ICCV,
"SlowFast Networks for Video Recognition", Table 1, Slow pathway):

* stem: ``1×7×7`` conv, stride ``(1, 2, 2)``, then a ``1×3×3`` max-pool, stride ``(1, 2, 2)``;
* stages res2..res5 with (3, 4, 6, 3) bottleneck blocks (inner widths 64-128-256-512,
  expansion 4 → 2048 channels); res2, res3 use ``1×1×1`` first convs (no mixing along the
  slice axis), res4, res5 "inflate" it to ``3×1×1``; the middle conv is always ``1×3×3``;
  spatial stride 2 at the start of res3..res5 (in the ``1×3×3`` conv), never along slices.

Here the stride along the slice axis is 1 everywhere, so ``D' = D`` and the learned
depth-collapse layer needs ``n_slices`` up front. The smaller presets keep the method and use
basic blocks (two convs, the first ``k×3×3`` with ``k = 3`` in inflated stages).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

BLOCKS: tuple[str, ...] = ("basic", "bottleneck")
BOTTLENECK_EXPANSION = 4   # output channels / inner width of a bottleneck (He et al. 2016)
INFLATED_KERNEL = 3        # kernel along the slice axis in inflated stages (SlowOnly res4-5)
# what stage C trains of a frozen CMR encoder (CmrEncoder.trainable_in_stage_c)
CMR_TRAINABLE: tuple[str, ...] = ("last_stage", "fc")


@dataclass(frozen=True)
class CmrEncoderConfig:
    """Shape of :class:`CmrEncoder`."""

    n_slices: int = 14                                   # D: short-axis slices of the input
    in_channels: int = 1                                 # image channels (one MR intensity)
    block: str = "bottleneck"                            # "bottleneck" (paper) | "basic"
    layers: tuple[int, ...] = (3, 4, 6, 3)               # residual blocks per stage (R50)
    widths: tuple[int, ...] = (64, 128, 256, 512)        # inner width of each stage
    inflate: tuple[bool, ...] = (False, False, True, True)  # 3-tap slice-axis conv per stage
    stem_width: int = 64                                 # channels after the stem conv
    stem_kernel: int = 7                                 # in-plane kernel of the stem (1×k×k)
    out_dim: int = 768                                   # width of the encoder's output

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if not (len(self.layers) == len(self.widths) == len(self.inflate) >= 1):
            raise ValueError(f"layers {self.layers}, widths {self.widths} and inflate "
                             f"{self.inflate} must be non-empty and of equal length")
        sizes = (self.n_slices, self.in_channels, self.stem_width, self.stem_kernel,
                 self.out_dim, *self.layers, *self.widths)
        if min(sizes) < 1:
            raise ValueError(f"all sizes of CmrEncoderConfig must be >= 1, got {self}")
        if self.stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd, got {self.stem_kernel}")

    @property
    def expansion(self) -> int:
        return BOTTLENECK_EXPANSION if self.block == "bottleneck" else 1

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage (2048 for the paper's R50)."""
        return self.widths[-1] * self.expansion

    @classmethod
    def paper(cls, n_slices: int = 14, **overrides: object) -> CmrEncoderConfig:
        """SlowOnly-R50 trunk, 1 input channel, 2048 → 768 (≈ 33M parameters)."""
        return replace(cls(n_slices=n_slices), **overrides)

    @classmethod
    def teaching(cls, n_slices: int = 12, **overrides: object) -> CmrEncoderConfig:
        """Basic blocks (1, 1, 1, 1), widths 16-32-64-128, output 128."""
        return replace(cls(n_slices=n_slices, block="basic", layers=(1, 1, 1, 1),
                           widths=(16, 32, 64, 128), stem_width=16, out_dim=128), **overrides)

    @classmethod
    def tiny(cls, n_slices: int = 10, **overrides: object) -> CmrEncoderConfig:
        """Basic blocks (1, 1, 1, 1), widths 8-16-32-64, output 64."""
        return replace(cls(n_slices=n_slices, block="basic", layers=(1, 1, 1, 1),
                           widths=(8, 16, 32, 64), stem_width=8, out_dim=64), **overrides)


def _conv_bn(c_in: int, c_out: int, kernel: tuple[int, int, int],
             stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Sequential:
    """Conv3d ('same' padding, no bias: the BatchNorm has one) followed by BatchNorm3d."""
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False),
                         nn.BatchNorm3d(c_out))


class ResBlock3d(nn.Module):
    """A basic or bottleneck residual block: ``(B, C_in, D, H, W) -> (B, C_out, D, H/s, W/s)``.

    basic:      ``k×3×3`` (stride s) → ``1×3×3``;
    bottleneck: ``k×1×1`` → ``1×3×3`` (stride s) → ``1×1×1`` (×4 channels);
    ``k = 3`` in inflated stages, 1 elsewhere. Projection shortcut when the shape changes.
    """

    def __init__(self, c_in: int, width: int, block: str, inflate: bool, stride: int) -> None:
        super().__init__()
        k = INFLATED_KERNEL if inflate else 1
        s = (1, stride, stride)  # never downsample along the slice axis
        if block == "bottleneck":
            c_out = width * BOTTLENECK_EXPANSION
            self.branch = nn.Sequential(
                _conv_bn(c_in, width, (k, 1, 1)), nn.ReLU(inplace=True),
                _conv_bn(width, width, (1, 3, 3), s), nn.ReLU(inplace=True),
                _conv_bn(width, c_out, (1, 1, 1)))
        else:
            c_out = width
            self.branch = nn.Sequential(
                _conv_bn(c_in, width, (k, 3, 3), s), nn.ReLU(inplace=True),
                _conv_bn(width, width, (1, 3, 3)))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = _conv_bn(c_in, c_out, (1, 1, 1), s)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class CmrEncoder(nn.Module):
    """3D ResNet encoder of one phase. ``forward: (B, 1, D, H, W) -> (B, out_dim)``.

    Attributes:
        cfg: the :class:`CmrEncoderConfig` it was built from.
        out_dim: ``cfg.out_dim``.
        stages: the residual stages; ``stages[-1]`` trains in stage C with
            ``cmr_trainable="last_stage"``, stays frozen with ``"fc"`` (the public code's).
        depth_collapse: ``Linear(D, 1)`` over slice positions (learned weighting of slices).
        fc: ``Linear(feature_dim, out_dim)``.
    """

    def __init__(self, cfg: CmrEncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CmrEncoderConfig()
        self.out_dim = cfg.out_dim
        k = cfg.stem_kernel
        self.stem = nn.Sequential(
            _conv_bn(cfg.in_channels, cfg.stem_width, (1, k, k), (1, 2, 2)),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages = []
        c_in = cfg.stem_width
        for i, (n_blocks, width, inflate) in enumerate(
                zip(cfg.layers, cfg.widths, cfg.inflate, strict=True)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ResBlock3d(c_in, width, cfg.block, inflate, stride))
                c_in = blocks[-1].out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.depth_collapse = nn.Linear(cfg.n_slices, 1)
        self.fc = nn.Linear(cfg.feature_dim, cfg.out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):  # He init for ReLU networks (He et al. 2015, ICCV)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # start the learned slice weighting as a plain mean over slices: training moves it
        # from a sensible point instead of a random mix of base and apex
        nn.init.constant_(self.depth_collapse.weight, 1.0 / cfg.n_slices)
        nn.init.zeros_(self.depth_collapse.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels or x.shape[2] != self.cfg.n_slices:
            raise ValueError(
                f"CmrEncoder expects volumes of shape (B, {self.cfg.in_channels}, "
                f"{self.cfg.n_slices}, H, W) (channels, short-axis slices, rows, columns), "
                f"got {tuple(x.shape)}")

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 1, D, H, W) -> (B, feature_dim, D, H', W')``, ``H' ≈ H/32``."""
        return self.stages[-1](self.forward_trunk(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_trunk(self.forward_trunk(x))

    # Stage C trains at most the last stage, the depth collapse and the fc (see
    # trainable_in_stage_c): everything before is the frozen "trunk", whose output can be
    # computed once per volume and cached (ecgcmr.trunk_cache). forward() is exactly
    # forward_from_trunk(forward_trunk(x)), so both paths run the same operations.
    def forward_trunk(self, x: Tensor) -> Tensor:
        """``(B, 1, D, H, W) -> (B, C3, D, H'', W'')``: stem and all stages but the last."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages[:-1]:
            x = stage(x)
        return x

    def forward_from_trunk(self, h: Tensor) -> Tensor:
        """``(B, C3, D, H'', W'') -> (B, out_dim)``: the last stage, pooling and fc."""
        feats = self.stages[-1](h).mean(dim=(-2, -1))          # (B, C, D): in-plane average
        pooled = self.depth_collapse(feats).squeeze(-1)        # (B, C): learned over slices
        return self.fc(pooled)                                 # (B, out_dim)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters that stay trainable in stage C: last stage, depth collapse, output fc."""
        return [*self.stages[-1].parameters(), *self.depth_collapse.parameters(),
                *self.fc.parameters()]

    def trainable_in_stage_c(self, trainable: str = "last_stage") -> list[nn.Parameter]:
        """The parameters stage C trains, by :data:`CMR_TRAINABLE` choice.

        ``"last_stage"``: :meth:`last_layer_parameters` (this project's default before the
        paper profile followed the public code; the tiny and teaching profiles' choice).
        ``"fc"``: only the output ``fc`` (``Linear(feature_dim, out_dim)``, 2048 → 768 at the
        paper size) — the public code's freezing: ``ResNet503D_MLP.initialize_model`` in
        ``qurAI-amsterdam/dual-phase-contrastive-learning``,
        ``ECG-CMR-CL/cmr_pretrain/models_cmr.py``, sets ``requires_grad = False`` on the
        whole SlowOnly trunk (``model.blocks[:-1]``: stem and res2..res5) and on
        ``temporal_mlp`` (the slice layer, here ``depth_collapse``) when
        ``contrastive_learning``, leaving ``fc`` (and the projection heads) to train.
        """
        if trainable == "last_stage":
            return self.last_layer_parameters()
        if trainable == "fc":
            return list(self.fc.parameters())
        raise ValueError(f"trainable must be one of {CMR_TRAINABLE}, got {trainable!r}")

    def freeze_except_last_layer(self, trainable: str = "last_stage") -> None:
        """``requires_grad = False`` everywhere except :meth:`trainable_in_stage_c`
        (by default :meth:`last_layer_parameters`).

        BatchNorm running statistics are buffers, not parameters: keep the frozen encoder in
        ``eval()`` mode so they stay those learned in stage A. Either choice freezes at least
        :meth:`forward_trunk`, so the cached trunk features (``ecgcmr.trunk_cache``) stay
        valid for both.
        """
        params = self.trainable_in_stage_c(trainable)
        self.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)


__all__ = ["CMR_TRAINABLE", "CmrEncoder", "CmrEncoderConfig", "ResBlock3d"]
