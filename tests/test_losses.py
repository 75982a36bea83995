"""Losses against formulas written out here independently (numpy, float64, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecgcmr.losses import (
    Temperature,
    dual_phase_loss,
    info_nce,
    mae_loss,
    masked_mse,
    retrieval_accuracy,
)
from ecgcmr.methods import METHODS


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).float()


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp(x) by hand, shifted by the max so that it never overflows."""
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _clip_loss_by_hand(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """½ [CE(S, I) + CE(Sᵀ, I)] with S = â b̂ᵀ / τ, in float64 numpy."""
    a64, b64 = a.detach().double().numpy(), b.detach().double().numpy()
    a64 = a64 / np.linalg.norm(a64, axis=1, keepdims=True)
    b64 = b64 / np.linalg.norm(b64, axis=1, keepdims=True)
    s = a64 @ b64.T / tau
    diag = np.diag(s)
    rows = np.mean(_logsumexp(s, axis=1) - diag)   # -log softmax over each row, at i
    cols = np.mean(_logsumexp(s, axis=0) - diag)   # the same for Sᵀ
    return 0.5 * (rows + cols)


# --------------------------------------------------------------------------- info_nce
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
def test_info_nce_matches_formula(seed: int, tau: float) -> None:
    a, b = _randn(seed, 7, 5), _randn(seed + 100, 7, 5)
    expected = _clip_loss_by_hand(a, b, tau)
    assert info_nce(a, b, tau).item() == pytest.approx(expected, rel=1e-5)
    # a 0-d tensor temperature gives the same value
    assert info_nce(a, b, torch.tensor(tau)).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_orthonormal_closed_form() -> None:
    # â = b̂ = orthonormal rows: S_ii = 1/τ, S_ij = 0 → each CE term = log(1 + (B-1) e^{-1/τ})
    b_size, tau = 5, 0.3
    e = torch.eye(b_size, 8)
    expected = math.log(1 + (b_size - 1) * math.exp(-1 / tau))
    assert info_nce(e, e, tau).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_symmetric_and_scale_invariant() -> None:
    a, b = _randn(3, 9, 6), _randn(4, 9, 6)
    base = info_nce(a, b, 0.1)
    assert info_nce(b, a, 0.1).item() == pytest.approx(base.item(), rel=1e-6)
    row_scale = torch.linspace(0.01, 50.0, 9).unsqueeze(1)
    assert info_nce(a * row_scale, 7.0 * b, 0.1).item() == pytest.approx(base.item(), rel=1e-5)


def test_info_nce_aligned_beats_shuffled() -> None:
    a = _randn(5, 16, 8)
    aligned = info_nce(a, a + 0.05 * _randn(6, 16, 8), 0.1)
    shuffled = info_nce(a, a[torch.randperm(16, generator=torch.Generator().manual_seed(0))], 0.1)
    assert aligned.item() < 0.2 * shuffled.item()
    assert shuffled.item() > math.log(16) * 0.5


def test_info_nce_high_temperature_is_log_batch() -> None:
    # τ → ∞: S → 0, softmax uniform, CE = log B whatever the embeddings
    b_size = 32
    loss = info_nce(_randn(7, b_size, 16), _randn(8, b_size, 16), 1e4)
    assert loss.item() == pytest.approx(math.log(b_size), abs=1e-3)


def test_info_nce_finite_for_huge_logits() -> None:
    a = _randn(9, 8, 4)
    b = -a  # anti-aligned pairs: the positives are the worst candidates
    a.requires_grad_(True)
    loss = info_nce(a, b, 1e-6)  # logits up to 1e6
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e5
    assert torch.isfinite(a.grad).all()
    # the limit by hand: CE_i → (max_j S_ij - S_ii), exact to float32 here
    assert loss.item() == pytest.approx(_clip_loss_by_hand(a, b, 1e-6), rel=1e-4)


def test_info_nce_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    enc_a, enc_b = torch.nn.Linear(12, 6), torch.nn.Linear(12, 6)
    x = torch.randn(10, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za, zb = enc_a(x), enc_b(x + 0.1)
        assert za.dtype == torch.bfloat16
        loss = info_nce(za, zb, 0.07)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_clip_loss_by_hand(za.float(), zb.float(), 0.07), rel=1e-5)
    loss.backward()
    assert torch.isfinite(enc_a.weight.grad).all() and enc_a.weight.grad.abs().sum() > 0


def test_info_nce_learnable_temperature_gradient() -> None:
    a, b = _randn(10, 6, 3), _randn(11, 6, 3)
    tau = torch.tensor(0.2, requires_grad=True)
    info_nce(a, b, tau).backward()
    h = 1e-3  # central difference of the by-hand formula
    numeric = (_clip_loss_by_hand(a, b, 0.2 + h) - _clip_loss_by_hand(a, b, 0.2 - h)) / (2 * h)
    assert tau.grad.item() == pytest.approx(numeric, rel=1e-3)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan")])
def test_info_nce_rejects_bad_temperature(bad: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        info_nce(_randn(0, 4, 3), _randn(1, 4, 3), bad)


def test_info_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        info_nce(_randn(0, 4, 3), _randn(1, 5, 3))


# --------------------------------------------------------------------------- dual phase
def _three(seed: int, n: int = 8, d: int = 5) -> tuple[torch.Tensor, ...]:
    return tuple(_randn(seed + i, n, d).requires_grad_(True) for i in range(3))


def test_dual_phase_is_mean_of_three_terms() -> None:
    ecg, ed, es = _three(20)
    total, terms = dual_phase_loss(ecg, ed, es, 0.1)
    by_hand = {"ecg_ed": _clip_loss_by_hand(ecg, ed, 0.1),
               "ecg_es": _clip_loss_by_hand(ecg, es, 0.1),
               "ed_es": _clip_loss_by_hand(ed, es, 0.1)}
    assert set(terms) == set(by_hand)
    for name, value in by_hand.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5)
        assert not terms[name].requires_grad
    assert total.item() == pytest.approx(sum(by_hand.values()) / 3, rel=1e-5)


def test_dual_phase_weights_are_renormalised() -> None:
    ecg, ed, es = _three(30)
    t_default, _ = dual_phase_loss(ecg, ed, es, 0.1)
    t_scaled, _ = dual_phase_loss(ecg, ed, es, 0.1, weights=(5, 5, 5))
    assert t_scaled.item() == pytest.approx(t_default.item(), rel=1e-6)
    total, terms = dual_phase_loss(ecg, ed, es, 0.1, weights=(1, 3, 0))
    assert set(terms) == {"ecg_ed", "ecg_es"}  # the zero-weight term is skipped
    expected = 0.25 * _clip_loss_by_hand(ecg, ed, 0.1) + 0.75 * _clip_loss_by_hand(ecg, es, 0.1)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_dual_phase_ed_only_is_info_nce_and_ignores_es() -> None:
    ecg, ed, es = _three(40)
    total, terms = dual_phase_loss(ecg, ed, None, 0.1, weights=METHODS["ed"].loss_weights)
    assert total.item() == pytest.approx(info_nce(ecg, ed, 0.1).item(), rel=1e-6)
    assert set(terms) == {"ecg_ed"}
    total_es, _ = dual_phase_loss(ecg, None, es, 0.1, weights=METHODS["es"].loss_weights)
    assert total_es.item() == pytest.approx(info_nce(ecg, es, 0.1).item(), rel=1e-6)


def test_dual_phase_gradients_reach_the_right_inputs() -> None:
    ecg, ed, es = _three(50)
    dual_phase_loss(ecg, ed, es, 0.1)[0].backward()
    for z in (ecg, ed, es):
        assert z.grad is not None and z.grad.abs().sum() > 0
    ecg, ed, es = _three(60)
    dual_phase_loss(ecg, ed, es, 0.1, weights=METHODS["ed"].loss_weights)[0].backward()
    assert ecg.grad.abs().sum() > 0 and ed.grad.abs().sum() > 0
    assert es.grad is None


@pytest.mark.parametrize("weights", [(-1, 1, 1), (0, 0, 0), (1, 1), (1, float("inf"), 1)])
def test_dual_phase_rejects_bad_weights(weights: tuple[float, ...]) -> None:
    ecg, ed, es = _three(70)
    with pytest.raises(ValueError, match="weights"):
        dual_phase_loss(ecg, ed, es, 0.1, weights=weights)


def test_dual_phase_needs_the_weighted_phases() -> None:
    ecg, ed, _ = _three(80)
    with pytest.raises(ValueError, match="z_es"):
        dual_phase_loss(ecg, ed, None, 0.1)


# --------------------------------------------------------------------------- MAE
def _mae_by_hand(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    per_patch = ((pred - target) ** 2).mean(axis=-1)
    return float((per_patch * mask).sum() / mask.sum())


def test_mae_loss_by_hand() -> None:
    rng = np.random.default_rng(5)
    pred, target = rng.standard_normal((2, 6, 10)), 3 + 2 * rng.standard_normal((2, 6, 10))
    mask = (rng.random((2, 6)) < 0.7).astype(float)
    mask[0, 0], mask[0, 1] = 1.0, 0.0
    got = mae_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    assert got.item() == pytest.approx(_mae_by_hand(pred, target, mask), rel=1e-5)


def test_mae_loss_scores_only_masked_patches() -> None:
    pred, target = _randn(1, 3, 8, 4), _randn(2, 3, 8, 4)
    mask = torch.zeros(3, 8)
    mask[:, ::2] = 1.0
    base = mae_loss(pred, target, mask)
    visible_changed = pred.clone()
    visible_changed[:, 1::2] += 100.0
    assert mae_loss(visible_changed, target, mask).item() == pytest.approx(base.item(), rel=1e-6)
    masked_changed = pred.clone()
    masked_changed[:, 0] += 1.0
    assert mae_loss(masked_changed, target, mask).item() != pytest.approx(base.item(), rel=1e-3)
    assert mae_loss(pred, target, torch.zeros(3, 8)).item() == 0.0


# --------------------------------------------------------------------------- masked MSE
def test_masked_mse_ignores_nans() -> None:
    rng = np.random.default_rng(3)
    pred, target = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    target[rng.random((6, 4)) < 0.4] = np.nan
    expected = np.nanmean((pred - target) ** 2)
    p = torch.tensor(pred, requires_grad=True)
    loss = masked_mse(p, torch.tensor(target))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[torch.isnan(torch.tensor(target))] == 0).all()


def test_masked_mse_all_nan_is_zero_with_grad() -> None:
    p = torch.randn(3, 2, requires_grad=True)
    loss = masked_mse(p, torch.full((3, 2), float("nan")))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(p.grad, torch.zeros(3, 2))


# --------------------------------------------------------------------------- temperature
def test_fixed_temperature_has_no_parameters() -> None:
    t = Temperature()
    assert list(t.parameters()) == []
    assert t().item() == pytest.approx(0.07) and t().ndim == 0
    assert "tau" in t.state_dict()
    with pytest.raises(ValueError):
        Temperature(0.0)


# --------------------------------------------------------------------------- retrieval
def test_retrieval_accuracy_known_case() -> None:
    a = torch.eye(3)
    b = torch.tensor([[0.6, 0.8, 0.0],    # query 0 prefers b1 (0.8) over its partner (0.6)
                      [0.8, 0.6, 0.0],    # query 1 prefers b0 (0.8) over its partner (0.6)
                      [0.0, 0.28, 0.96]])  # query 2: its partner is the best (0.96)
    acc = retrieval_accuracy(a, b, k=(1, 2))
    assert acc == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0)}
    assert retrieval_accuracy(a, a, k=(1,)) == {"top1": 1.0}
    collapsed = torch.ones(4, 2)  # ties count against the query: chance, not perfect
    assert retrieval_accuracy(collapsed, collapsed, k=(1, 4)) == {"top1": 0.0, "top4": 1.0}
