"""ECG Vision Transformer over 1×100 patches, and its masked autoencoder (stage B).

Input contract: ``(B, 12, T)`` — the 12 leads in :data:`ecgcmr.constants.LEADS` order, z-scored,
``T = 5000`` samples (10 s at 500 Hz). Each lead is cut into patches of ``patch_size`` samples
(one lead × 0.2 s at 500 Hz), so the paper's ECG is a sequence of 12 × 50 = 600 tokens, ordered
lead-major: token ``n = lead * 50 + t``.

Design choices, and why:

* **Patch embedding** is one :class:`torch.nn.Linear` over the 100 samples of a patch — the same
  map as a 1×100 convolution with stride 100, without the reshaping.
* **Positions**: a fixed 2D sine-cosine embedding over (lead, time), as MAE uses for images
  (He et al. 2022, CVPR, "Masked Autoencoders Are Scalable Vision Learners", §A.1; the 1D
  form is Vaswani et al. 2017, NeurIPS, §3.5), plus a small *learned* lead embedding: the
  sine-cosine code only says "row 3", the learned vector can say what lead III looks like.
* **Pooling**: :meth:`EcgViT.forward` mean-pools the tokens; there is no CLS token. In MAE
  pretraining the decoder discards any CLS token, so no loss reaches it; MAE's authors report
  their model "works similarly well without this token (with average pooling)" (He et al.
  2022, Appendix A.1); and a mean is defined for any subset of tokens.
* **Blocks**: pre-norm transformer blocks (LayerNorm → attention / MLP → residual) with
  :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels on GPU, bf16-safe).
* **Initialisation**: xavier-uniform linear layers, zero biases, as MAE's reference
  implementation (He et al. 2022, §A.1: "we use xavier_uniform to initialize all Transformer
  blocks"); learned embeddings and the mask token ~ N(0, 0.02²).

The paper-size preset is the public code's ``mae_vit_mediumDeep_patchX_dec256d2b``
(576-d, 12 blocks, 8 heads of 72, MLP ratio 4; decoder 256-d, 2 blocks, 8 heads; repository
``angelbujalance/mae``, ``models_mae.py``); see :meth:`EcgVitConfig.paper` for its size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgcmr.constants import ECG_N_SAMPLES, LEADS

INIT_STD = 0.02          # N(0, 0.02²) for learned embeddings / mask token (ViT, MAE convention)
LN_EPS = 1e-6            # LayerNorm epsilon of the ViT/MAE reference presets
SINCOS_BASE = 10_000.0   # wavelength base of the sine-cosine code (Vaswani et al. 2017, §3.5)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class EcgVitConfig:
    """Shape of the ECG ViT encoder and of its MAE decoder."""

    n_leads: int = len(LEADS)          # ECG channels (12 standard leads)
    n_samples: int = ECG_N_SAMPLES     # samples per lead (10 s at 500 Hz)
    patch_size: int = 100              # samples per patch (0.2 s at 500 Hz; one lead per patch)
    dim: int = 576                     # token width of the encoder
    depth: int = 12                    # encoder transformer blocks
    heads: int = 8                     # attention heads (dim / heads = 72 per head here)
    mlp_ratio: float = 4.0             # MLP hidden width / dim
    decoder_dim: int = 256             # token width of the MAE decoder
    decoder_depth: int = 2             # MAE decoder blocks
    decoder_heads: int = 8             # MAE decoder heads

    def __post_init__(self) -> None:
        for name in ("n_leads", "n_samples", "patch_size", "dim", "depth", "heads",
                     "decoder_dim", "decoder_depth", "decoder_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EcgVitConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_samples % self.patch_size:
            raise ValueError(f"n_samples ({self.n_samples}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        for width, heads, which in ((self.dim, self.heads, ""),
                                    (self.decoder_dim, self.decoder_heads, "decoder_")):
            if width % heads:
                raise ValueError(f"{which}dim ({width}) must be divisible by {which}heads "
                                 f"({heads})")
            # the 2D sine-cosine code splits the width in 2 axes × (sin, cos)
            if width % 4:
                raise ValueError(f"{which}dim ({width}) must be divisible by 4 "
                                 "(2D sine-cosine positions)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    @property
    def patches_per_lead(self) -> int:
        """Time patches per lead (50 for 5000 samples / 100)."""
        return self.n_samples // self.patch_size

    @property
    def n_patches(self) -> int:
        """Tokens per ECG (600 for the paper's input)."""
        return self.n_leads * self.patches_per_lead

    # -- presets --------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: object) -> EcgVitConfig:
        """The public code's ECG encoder: 576-d, 12 blocks, 8 heads; decoder 256-d, 2 blocks.

        ≈ 47.9M encoder parameters (12·d²·depth ≈ 47.8M for the blocks alone). The paper's
        "~25M" matches the "nb_params: 24.68M encoder" comment that the public code copied
        from its 640-d, 5-block ``medium`` preset (``EcgVitConfig(dim=640, depth=5,
        heads=10)``), not this architecture.
        """
        return replace(cls(dim=576, depth=12, heads=8, decoder_dim=256, decoder_depth=2,
                           decoder_heads=8), **overrides)

    @classmethod
    def teaching(cls, **overrides: object) -> EcgVitConfig:
        """Laptop size: 96-d, 3 blocks (≈ 0.35M parameters); sized so the teaching series
        finishes on 2 CPU cores (attention over 600 tokens dominates the cost)."""
        return replace(cls(dim=96, depth=3, heads=4, decoder_dim=64, decoder_depth=1,
                           decoder_heads=4), **overrides)

    @classmethod
    def tiny(cls, **overrides: object) -> EcgVitConfig:
        """CI size: 32-d, 2 blocks (≈ 30k parameters)."""
        return replace(cls(dim=32, depth=2, heads=2, decoder_dim=32, decoder_depth=1,
                           decoder_heads=2), **overrides)


# --------------------------------------------------------------------------- building blocks
def sincos_2d(n_rows: int, n_cols: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine position code, ``(n_rows * n_cols, dim)``, row-major.

    The first ``dim/2`` channels encode the row (lead), the last ``dim/2`` the column (time);
    each half is ``[sin(p·ω_k), cos(p·ω_k)]`` with ``ω_k = SINCOS_BASE^(-k/(dim/4))``,
    ``k = 0 .. dim/4 - 1`` (Vaswani et al. 2017, §3.5, per axis).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = SINCOS_BASE ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    rows = torch.arange(n_rows, dtype=torch.float64).repeat_interleave(n_cols)       # (N,)
    cols = torch.arange(n_cols, dtype=torch.float64).repeat(n_rows)                  # (N,)
    parts = []
    for pos in (rows, cols):
        angle = pos[:, None] * omega[None, :]                                        # (N, dim/4)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()                                           # (N, dim)


class Attention(nn.Module):
    """Multi-head self-attention: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, h, d/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                     # each (B, h, N, d/h)
        out = F.scaled_dot_product_attention(q, k, v)                       # (B, h, N, d/h)
        out = out.transpose(1, 2).reshape(b, n, d)                         # (B, N, D)
        return self.proj(out)


class Mlp(nn.Module):
    """Token-wise MLP ``D -> hidden -> D`` with GELU: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(round(dim * mlp_ratio)))

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) → (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_transformer(module: nn.Module) -> None:
    """xavier-uniform linear weights, zero biases, unit LayerNorms (MAE reference init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, L, T) -> (B, L * T/p, p)``: lead-major patches (token ``n = lead * T/p + t``)."""
    b, n_leads, t = x.shape
    if t % patch_size:
        raise ValueError(f"ECG length {t} is not a multiple of the patch size {patch_size}")
    return x.reshape(b, n_leads * (t // patch_size), patch_size)


def unpatchify(p: Tensor, n_leads: int) -> Tensor:
    """``(B, L * T/p, p) -> (B, L, T)``: the inverse of :func:`patchify`."""
    b, n, size = p.shape
    if n % n_leads:
        raise ValueError(f"{n} patches do not split into {n_leads} leads")
    return p.reshape(b, n_leads, (n // n_leads) * size)


def random_masking(b: int, n: int, mask_ratio: float, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE per-sample random masking by sorting uniform noise (He et al. 2022, §3).

    Keeps ``round(n * (1 - mask_ratio))`` tokens per sample (at least 1). The masks depend only
    on ``generator``'s state: a seeded generator gives the same masks on every run.

    Returns:
        ids_keep: (B, n_keep) int64 indices of the visible tokens, in shuffled order.
        mask: (B, N) float, 1 = masked (removed), 0 = visible, in the original token order.
        ids_restore: (B, N) int64, the permutation that puts [visible, masked] back in order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(round(n * (1.0 - mask_ratio))))
    # draw on the generator's own device (a CPU generator gives the same masks for CPU and
    # CUDA inputs), then move to where the tokens are
    where = generator.device if generator is not None else device
    noise = torch.rand(b, n, device=where, generator=generator).to(device)  # (B, N) in [0, 1)
    ids_shuffle = torch.argsort(noise, dim=1)                           # small noise: kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=device)
    mask[:, :n_keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)                           # back to token order
    return ids_shuffle[:, :n_keep], mask, ids_restore


# --------------------------------------------------------------------------- encoder
class EcgViT(nn.Module):
    """ECG ViT encoder. ``forward: (B, 12, T) -> (B, dim)`` (mean of the final tokens).

    Attributes:
        cfg: the :class:`EcgVitConfig` it was built from.
        out_dim: width of :meth:`forward`'s output (``cfg.dim``).
    """

    def __init__(self, cfg: EcgVitConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or EcgVitConfig()
        self.out_dim = cfg.dim
        self.patch_embed = nn.Linear(cfg.patch_size, cfg.dim)       # ≡ Conv1×100, stride 100
        self.lead_embed = nn.Parameter(torch.zeros(cfg.n_leads, cfg.dim))  # learned, per lead
        # fixed: not a parameter, not in the state dict (rebuilt from the config)
        self.register_buffer("pos_embed", sincos_2d(cfg.n_leads, cfg.patches_per_lead, cfg.dim),
                             persistent=False)                        # (N, dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        _init_transformer(self)
        nn.init.normal_(self.lead_embed, std=INIT_STD)

    def _check_input(self, x: Tensor) -> None:
        want = (self.cfg.n_leads, self.cfg.n_samples)
        if x.ndim != 3 or tuple(x.shape[1:]) != want:
            raise ValueError(f"EcgViT expects ECGs of shape (B, {want[0]}, {want[1]}) "
                             f"(leads, samples at 500 Hz), got {tuple(x.shape)}")

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 12, T) -> (B, N, dim)``: patch embedding + positions + lead embedding."""
        self._check_input(x)
        tokens = self.patch_embed(patchify(x, self.cfg.patch_size))            # (B, N, dim)
        lead = self.lead_embed.repeat_interleave(self.cfg.patches_per_lead, dim=0)  # (N, dim)
        return tokens + (self.pos_embed + lead).to(tokens.dtype)

    def forward_tokens(self, x: Tensor, mask_ratio: float = 0.0,
                       generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible tokens of ``x`` after MAE-style random masking.

        Args:
            x: (B, 12, T) z-scored ECG.
            mask_ratio: fraction of the N tokens removed per sample (0: keep all, in order).
            generator: drives the masks (any device; CPU or ``x``'s), for reproducible masking.

        Returns:
            tokens: (B, n_keep, dim) final-normed tokens of the visible patches, in the
                shuffled order ``ids_restore`` undoes; ``n_keep = round(N (1 - mask_ratio))``.
            mask: (B, N) float, 1 = masked, 0 = visible.
            ids_restore: (B, N) int64 permutation back to token order.
        """
        tokens = self.embed(x)                                                 # (B, N, dim)
        b, n, d = tokens.shape
        if mask_ratio > 0.0:
            ids_keep, mask, ids_restore = random_masking(b, n, mask_ratio, x.device, generator)
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        else:
            mask = torch.zeros(b, n, device=x.device)
            ids_restore = torch.arange(n, device=x.device).expand(b, n)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens), mask, ids_restore

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 12, T) -> (B, dim)``: mean over all 600 final tokens."""
        tokens, _, _ = self.forward_tokens(x, mask_ratio=0.0)
        return tokens.mean(dim=1)


# --------------------------------------------------------------------------- MAE
class EcgMAE(nn.Module):
    """Masked autoencoder around :class:`EcgViT` (stage B).

    ``forward(x: (B, 12, T)) -> (pred (B, N, p), target (B, N, p), mask (B, N))``; the loss
    is computed by the caller: :func:`ecgcmr.losses.mae_loss` over the masked patches, or
    :func:`ecgcmr.losses.public_mae_loss` over all of them (the public code's).

    Attributes:
        encoder: the :class:`EcgViT` (what later stages keep).
        out_dim: the encoder's output width.
    """

    def __init__(self, cfg: EcgVitConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or EcgVitConfig()
        self.encoder = EcgViT(cfg)
        self.out_dim = self.encoder.out_dim
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(cfg.decoder_dim))
        self.decoder_lead_embed = nn.Parameter(torch.zeros(cfg.n_leads, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_2d(cfg.n_leads, cfg.patches_per_lead, cfg.decoder_dim),
                             persistent=False)                                   # (N, dd)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, cfg.patch_size)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm,
                     self.decoder_pred):
            _init_transformer(part)
        nn.init.normal_(self.mask_token, std=INIT_STD)
        nn.init.normal_(self.decoder_lead_embed, std=INIT_STD)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, 12, T) -> (B, N, patch_size)``, lead-major."""
        return patchify(x, self.cfg.patch_size)

    def unpatchify(self, p: Tensor) -> Tensor:
        """``(B, N, patch_size) -> (B, 12, T)``; exact inverse of :meth:`patchify`."""
        return unpatchify(p, self.cfg.n_leads)

    def decode(self, tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """Visible tokens ``(B, n_keep, dim)`` -> predicted patches ``(B, N, patch_size)``."""
        x = self.decoder_embed(tokens)                                    # (B, n_keep, dd)
        b, n_keep, dd = x.shape
        n = ids_restore.shape[1]
        fill = self.mask_token.to(x.dtype).expand(b, n - n_keep, dd)      # (B, N - n_keep, dd)
        x = torch.cat([x, fill], dim=1)                                   # shuffled order
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # token order
        lead = self.decoder_lead_embed.repeat_interleave(self.cfg.patches_per_lead, dim=0)
        x = x + (self.decoder_pos_embed + lead).to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))                    # (B, N, p)

    def forward(self, x: Tensor, mask_ratio: float = 0.7,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Mask, encode, decode.

        Args:
            x: (B, 12, T) z-scored ECG.
            mask_ratio: fraction of patches hidden from the encoder (paper: 0.7).
            generator: drives the masks (any device; CPU or ``x``'s).

        Returns:
            pred: (B, N, patch_size) reconstruction of every patch.
            target: (B, N, patch_size) the patchified input.
            mask: (B, N) float, 1 = masked (to be scored), 0 = visible.
        """
        tokens, mask, ids_restore = self.encoder.forward_tokens(x, mask_ratio, generator)
        return self.decode(tokens, ids_restore), self.patchify(x), mask


__all__ = ["EcgMAE", "EcgViT", "EcgVitConfig", "patchify", "random_masking", "sincos_2d",
           "unpatchify"]
