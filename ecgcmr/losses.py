"""Losses of the three training stages, and the contrastive retrieval metric.

Stage A (CMR phase encoders, supervised): :func:`masked_mse` — phenotype regression with
missing targets. Stage B (ECG masked autoencoder): :func:`mae_loss` (masked patches only), or
:func:`public_mae_loss` (the authors' public code: all patches, plus a cross-correlation
term; the paper profile's). Stage C (dual-phase contrastive alignment, DESIGN.md §5):
:func:`info_nce` and :func:`dual_phase_loss`, with the temperature from :class:`Temperature`;
:func:`retrieval_accuracy` for validation.

Numerics: every loss computes in float32 with autocast switched off locally, whatever the
dtype of its inputs (bf16 under ``torch.autocast``); the contrastive losses work on logits
with :func:`torch.nn.functional.cross_entropy` (a fused log-softmax: no explicit exp/log,
finite for any temperature).

Under DDP the contrastive losses gather the embeddings of all ranks, so the negatives come
from the global batch; see :func:`info_nce` for the exact value and gradient convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecgcmr import distributed as ddp
from ecgcmr.methods import METHODS, TERMS

# τ = 0.07: the paper's fixed temperature (DESIGN.md §5), also CLIP's initial value
# (Radford et al. 2021, ICML, "Learning Transferable Visual Models From Natural Language
# Supervision", §2.5, following Wu et al. 2018, CVPR).
DEFAULT_TEMPERATURE = 0.07
# the paper's loss: the three terms weighted equally
PAPER_WEIGHTS: tuple[float, float, float] = METHODS["dual"].loss_weights  # type: ignore[assignment]


Temp = float | Tensor  # a positive float, or a 0-d tensor (e.g. Temperature()())


# --------------------------------------------------------------------------- helpers
@contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    """Switch autocast off for ``device``: losses compute in float32 whatever the caller does."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _check_temperature(temperature: Temp) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
    elif not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")


def _as_fp32_scalar(temperature: Temp, device: torch.device) -> Tensor | float:
    if isinstance(temperature, Tensor):
        return temperature.to(device=device, dtype=torch.float32).reshape(())
    return float(temperature)


def _unit(z: Tensor) -> Tensor:
    """(B, D) → (B, D) float32 rows of unit L2 norm."""
    return F.normalize(z.float(), dim=-1)


def _check_pair(a: Tensor, b: Tensor, names: str = "a, b") -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"{names}: expected two non-empty (B, D) tensors of one shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def _want_gather(gather: bool | None) -> bool:
    return (ddp.world_size() > 1) if gather is None else (bool(gather) and ddp.world_size() > 1)


def _gathered_sizes(n_local: int, device: torch.device, gather: bool) -> list[int] | None:
    """Rows per rank of the global batch when gathering, else None (the local batch only)."""
    return ddp.gather_sizes(n_local, device=device) if gather else None


def _pair_loss(a: Tensor, b: Tensor, scale: Tensor | float) -> Tensor:
    """½[CE(â b̂ᵀ s, I) + CE(b̂ âᵀ s, I)], s = 1/τ, on unit fp32 rows (already gathered)."""
    labels = torch.arange(a.shape[0], device=a.device)
    logits_ab = (a @ b.T) * scale                                # (N, N): S
    logits_ba = (b @ a.T) * scale                                # (N, N): Sᵀ
    return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))


# --------------------------------------------------------------------------- contrastive
def info_nce(a: Tensor, b: Tensor, temperature: Temp = DEFAULT_TEMPERATURE, *,
             gather: bool | None = None) -> Tensor:
    """Symmetric CLIP / InfoNCE loss of a batch of B pairs ``(a_i, b_i)``.

    With â, b̂ the rows L2-normalised and S = â b̂ᵀ / τ (B × B, cosine similarity / τ)::

        L = ½ [ CE(S, I) + CE(Sᵀ, I) ],   CE(S, I) = -(1/B) Σ_i log softmax(S_i)_i

    i.e. each a_i must pick b_i among all b (and vice versa); the other B - 1 are negatives.
    Computed in float32 with ``F.cross_entropy`` on the logits (stable for any τ).

    Args:
        a, b: (B, D) embeddings of the two modalities (any float dtype; any norm — the loss
            is invariant to each row's scale).
        temperature: τ > 0, a float or a 0-d tensor.
        gather: under torch.distributed, take the negatives from every rank's batch
            (default None: gather whenever a process group with world size > 1 exists;
            False: the local batch only). ``a``/``b`` are then this rank's rows.

    Returns:
        0-d float32 tensor. When gathering, its value on every rank equals the
        single-process loss on the global batch (all ranks' rows concatenated in rank order).

    Distributed gradient convention: embeddings are gathered with their graph
    (:func:`ecgcmr.distributed.gather_with_grad`, whose backward sums over ranks) and every
    rank computes the global N × N loss, so the local embeddings of rank r receive
    ``world · ∂L/∂z_r``, and DDP's gradient **averaging** over ranks turns that into exactly
    ∂L/∂θ, the gradient of single-process training on the global batch. (Without DDP, average
    the gradients over ranks yourself; summing them would multiply the step by ``world``.)
    Every rank must call the loss, in the same order — it contains collectives.
    """
    _check_pair(a, b)
    _check_temperature(temperature)
    with _fp32(a.device):
        sizes = _gathered_sizes(a.shape[0], a.device, _want_gather(gather))
        scale = 1.0 / _as_fp32_scalar(temperature, a.device)
        ua, ub = _unit(a), _unit(b)
        if sizes is not None:
            ua, ub = ddp.gather_with_grad(ua, sizes), ddp.gather_with_grad(ub, sizes)
        return _pair_loss(ua, ub, scale)


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    w = tuple(float(x) for x in weights)
    if len(w) != 3:
        raise ValueError(f"weights: expected 3 values for {TERMS}, got {len(w)}")
    if not all(math.isfinite(x) and x >= 0 for x in w):
        raise ValueError(f"weights must be finite and non-negative, got {w}")
    total = sum(w)
    if total <= 0:
        raise ValueError(f"weights must not all be zero, got {w}")
    return (w[0] / total, w[1] / total, w[2] / total)


def dual_phase_loss(z_ecg: Tensor | None, z_ed: Tensor | None, z_es: Tensor | None,
                    temperature: Temp = DEFAULT_TEMPERATURE,
                    weights: Sequence[float] = PAPER_WEIGHTS, *,
                    gather: bool | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's multi-term contrastive loss (DESIGN.md §5)::

        L = λ_ecg_ed · info_nce(ECG, ED) + λ_ecg_es · info_nce(ECG, ES) + λ_ed_es · info_nce(ED, ES)

    with the weights ``(λ_ecg_ed, λ_ecg_es, λ_ed_es)`` renormalised to sum to 1 (⅓ each by
    default). A zero weight skips its term entirely, so the phase it alone needs may be None:
    weights ``(1, 0, 0)`` are the single-phase ECG↔ED baseline and ignore ``z_es``
    (:data:`ecgcmr.methods.METHODS` holds each method's weights).

    Args:
        z_ecg, z_ed, z_es: (B, D) projected embeddings of the same B subjects (this rank's
            rows under DDP); each is gathered at most once.
        temperature: τ, float or 0-d tensor, shared by the three terms.
        weights: three non-negative numbers, not all zero.
        gather: as in :func:`info_nce` (same value and gradient convention).

    Returns:
        ``(total, terms)``: ``total`` the 0-d weighted loss to backpropagate; ``terms`` maps
        each computed pair ("ecg_ed", "ecg_es", "ed_es") to its detached, unweighted
        info_nce value.

    Raises:
        ValueError: negative, non-finite or all-zero weights; a needed embedding is None;
            shapes differ.
    """
    w = _check_weights(weights)
    _check_temperature(temperature)
    pairs = {"ecg_ed": ("ecg", "ed"), "ecg_es": ("ecg", "es"), "ed_es": ("ed", "es")}
    given = {"ecg": z_ecg, "ed": z_ed, "es": z_es}
    active = [(name, wt) for name, wt in zip(TERMS, w, strict=True) if wt > 0]
    needed = sorted({m for name, _ in active for m in pairs[name]})
    missing = [m for m in needed if given[m] is None]
    if missing:
        raise ValueError(f"dual_phase_loss: weights {w} need z_{', z_'.join(missing)}")
    z: dict[str, Tensor] = {m: given[m] for m in needed}  # type: ignore[misc]
    first = z[needed[0]]
    for m in needed[1:]:
        _check_pair(first, z[m], f"z_{needed[0]}, z_{m}")

    device = first.device
    with _fp32(device):
        sizes = _gathered_sizes(first.shape[0], device, _want_gather(gather))
        scale = 1.0 / _as_fp32_scalar(temperature, device)
        unit = {m: _unit(t) for m, t in z.items()}
        if sizes is not None:
            unit = {m: ddp.gather_with_grad(u, sizes) for m, u in unit.items()}
        losses = {name: _pair_loss(unit[pairs[name][0]], unit[pairs[name][1]], scale)
                  for name, _ in active}
        total = sum((wt * losses[name] for name, wt in active),
                    start=torch.zeros((), device=device))
        terms = {name: loss.detach() for name, loss in losses.items()}
    return total, terms


# --------------------------------------------------------------------------- temperature
class Temperature(nn.Module):
    """The paper's fixed contrastive temperature τ, kept as a buffer (so a checkpoint says
    which τ it was trained with); ``forward()`` returns it as a 0-d float32 tensor."""

    def __init__(self, init: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        if not (math.isfinite(init) and init > 0):
            raise ValueError(f"Temperature: init must be a positive number, got {init}")
        self.register_buffer("tau", torch.tensor(init, dtype=torch.float32))

    def forward(self) -> Tensor:
        return self.tau

    def extra_repr(self) -> str:
        return f"tau={float(self()):.4g}"


# --------------------------------------------------------------------------- MAE, regression
def mae_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked-autoencoder reconstruction loss (He et al. 2022).

    ``ℓ_n = mean_p (pred_np - t_np)²`` per patch n, then ``L = Σ_n m_n ℓ_n / Σ_n m_n``: the
    mean over MASKED patches only (visible patches are not scored). A batch without masked
    patches gives 0.

    Args:
        pred: (B, N, P) predicted patches (for the ECG ViT, N = 12 leads × 50 patches and
            P = 100 samples).
        target: (B, N, P) the patchified input.
        mask: (B, N), 1 = masked (to reconstruct), 0 = visible.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:-1]:
        raise ValueError(f"mae_loss: pred {tuple(pred.shape)}, target {tuple(target.shape)} "
                         f"and mask {tuple(mask.shape)} do not fit (B, N, P), (B, N, P), (B, N)")
    with _fp32(pred.device):
        pred, target, mask = pred.float(), target.float(), mask.float()
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


# The authors' public MAE (``angelbujalance/mae``): ``--ncc_weight`` defaults to 0.1 in
# ``main_pretrain.py`` (and ``run_mae.sh`` leaves it there); ``models_mae.py``,
# ``MaskedAutoencoderViT.forward_loss``, returns ``(1 - w)·MSE + w·(1 - NCC)``.
PUBLIC_NCC_WEIGHT = 0.1
# the variance floor of that NCC: ``(x - mean) / (var + 1e-12) ** 0.5`` per signal
NCC_EPS = 1e-12
# ... and of its MSE: ``loss.sum() / (numel + 1e-5)``
PUBLIC_MSE_EPS = 1e-5
MAE_LOSSES: tuple[str, ...] = ("masked_mse", "public")


def ncc(a: Tensor, b: Tensor) -> Tensor:
    """Zero-normalised cross-correlation along the last axis, averaged over all other axes.

    Each signal (one lead of one subject, for ``(B, L, T)``) is standardised over its ``T``
    samples with the Bessel-corrected variance, ``ẑ = (x - mean) / sqrt(var + 1e-12)``, and
    ``r = Σ_t ẑ_a ẑ_b / (T - 1)`` (Pearson's r); the result is the mean of ``r`` over every
    signal. The formula of the public MAE (``angelbujalance/mae``, ``models_mae.py``,
    ``forward_loss``, and ``engine_pretrain.py``, ``ncc``), in float32.
    """
    if a.shape != b.shape or a.ndim < 1 or a.shape[-1] < 2:
        raise ValueError(f"ncc: two tensors of one shape with >= 2 samples on the last axis "
                         f"needed, got {tuple(a.shape)} and {tuple(b.shape)}")
    with _fp32(a.device):
        a, b = a.float(), b.float()
        za = (a - a.mean(dim=-1, keepdim=True)) / torch.sqrt(a.var(dim=-1, keepdim=True) + NCC_EPS)
        zb = (b - b.mean(dim=-1, keepdim=True)) / torch.sqrt(b.var(dim=-1, keepdim=True) + NCC_EPS)
        r = (za * zb).sum(dim=-1) / (a.shape[-1] - 1)          # one r per signal
        return r.mean()


def public_mae_loss(pred: Tensor, target: Tensor, n_leads: int, *,
                    ncc_weight: float = PUBLIC_NCC_WEIGHT) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage B's loss as the authors' public MAE computes it: ``(1 - w)·MSE + w·(1 - NCC)``.

    From ``angelbujalance/mae``, ``models_mae.py``, ``MaskedAutoencoderViT.forward_loss``:

    * ``MSE = Σ (pred - t)² / (numel + 1e-5)`` over ALL patches — masked and visible alike
      (the masked-only mean of MAE is commented out there) — where ``t`` is the patchified
      input (that code's ``norm_pix_loss`` option is not reproduced);
    * ``NCC`` = :func:`ncc` between the raw input signal and the reconstructed one
      (``unpatchify(pred)``: every patch, visible ones included), per subject and lead over
      the whole recording (the signal axis there is the last, time), averaged over subjects
      and leads.
    * ``w = 0.1`` (``main_pretrain.py``'s ``--ncc_weight`` default).

    Not reproduced: that repository's training loop also adds ``0.1 ×`` a SimSiam-style
    cosine term between two maskings (``engine_pretrain.py``, ``--cos_weight``).

    Args:
        pred, target: (B, N, P) predicted and input patches, lead-major (patch ``n`` of lead
            ``n // (N / n_leads)``, as :func:`ecgcmr.models.patchify` cuts them).
        n_leads: leads of the recording (12).

    Returns:
        ``(loss, {"mse": ..., "ncc": ...})``, the terms detached.
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[1] % n_leads:
        raise ValueError(f"public_mae_loss: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must be one (B, N, P) shape with N a "
                         f"multiple of n_leads={n_leads}")
    with _fp32(pred.device):
        pred, target = pred.float(), target.float()
        b = pred.shape[0]
        signal = target.reshape(b, n_leads, -1)              # the raw input, (B, L, T)
        recon = pred.reshape(b, n_leads, -1)                 # unpatchify(pred), (B, L, T)
        sq = (pred - target).pow(2)
        mse = sq.sum() / (sq.numel() + PUBLIC_MSE_EPS)
        r = ncc(signal, recon)
        loss = (1.0 - ncc_weight) * mse + ncc_weight * (1.0 - r)
        return loss, {"mse": mse.detach(), "ncc": r.detach()}


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the entries whose target is not NaN.

    ``L = Σ_{valid} (pred - target)² / #valid`` — every observed (subject, phenotype) value
    counts once (missing phenotypes in stage A's regression simply do not count). An all-NaN
    batch gives 0, still attached to ``pred``'s graph (a zero gradient, not NaN).

    Args:
        pred, target: (B, K) predictions and (standardised) targets; NaN marks missing.
    """
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ")
    with _fp32(pred.device):
        pred, target = pred.float(), target.float()
        valid = ~torch.isnan(target)
        # fill NaNs before subtracting, so no NaN ever enters the graph
        diff = torch.where(valid, pred - torch.where(valid, target, 0.0), 0.0)
        return diff.pow(2).sum() / valid.sum().clamp_min(1)


# --------------------------------------------------------------------------- metrics
@torch.no_grad()
def retrieval_accuracy(a: Tensor, b: Tensor, k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of retrieving b_i from query a_i among all b, by cosine similarity.

    The rank of the true partner is the number of OTHER candidates with similarity ≥ its own
    (ties count against the query: a collapsed embedding scores chance, not 100 %); a query
    is a top-k hit when that rank is < k. Chance level is k / B.

    Args:
        a, b: (B, D) paired embeddings (the local batch; gather first for a global metric).
        k: the cut-offs.

    Returns:
        ``{"top1": ..., "top5": ...}`` fractions in [0, 1].
    """
    _check_pair(a, b)
    if not k or any(int(x) < 1 for x in k):
        raise ValueError(f"retrieval_accuracy: k must be positive integers, got {tuple(k)}")
    with _fp32(a.device):
        sim = _unit(a) @ _unit(b).T  # (B, B) cosine similarities, query rows
        own = sim.diagonal().unsqueeze(1)  # (B, 1)
        beats = (sim >= own).sum(dim=1) - 1  # others at least as similar as the partner
        return {f"top{int(x)}": float((beats < int(x)).float().mean()) for x in k}
