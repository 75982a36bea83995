"""Phenotype regression from frozen ECG embeddings: linear probes, the paper's MLP head,
metrics with bootstrap CIs, and label-efficiency curves.

Inputs are plain DataFrames and nothing here reads or writes files:

- ``features``: one row per subject: ``subject_id``, ``split`` (``train``/``val``/``test``)
  and numeric feature columns — every other column is a feature (embeddings ``e000 ...``
  from ``ecgcmr embed``, or the classical measurements of :func:`classical_features`).
- ``table``: one row per subject: ``subject_id`` and target / covariate columns (phenotypes
  of :data:`ecgcmr.constants.PHENOTYPES` in their units, covariates of
  :data:`ecgcmr.constants.COVARIATES`), NaN where missing.

Leakage rules every function here keeps: a model, its penalty, its feature and target
standardisation and its imputation medians see **training rows only**; the validation split
is used only to stop the MLP early; the test split only to score. Predictions come back in
long form (``subject_id, target, y_true, y_pred``, target units) for the test subjects
whose target is observed, and :func:`evaluate_predictions` turns them into one tidy table
(``target, metric, value, ci_low, ci_high, n``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgcmr.constants import ECG_FS_HZ
from ecgcmr.ecg_measurements import measure_many
from ecgcmr.errors import DataError
from ecgcmr.losses import masked_mse
from ecgcmr.models import MlpHead
from ecgcmr.parallel import one_thread

# ============================================================================================
# Constants
# ============================================================================================
SPLITS: tuple[str, ...] = ("train", "val", "test")
ID_COLUMNS: tuple[str, ...] = ("subject_id", "split")
PREDICTION_COLUMNS: tuple[str, ...] = ("subject_id", "target", "y_true", "y_pred")
METRIC_COLUMNS: tuple[str, ...] = ("target", "metric", "value", "ci_low", "ci_high", "n")
LABEL_EFFICIENCY_COLUMNS: tuple[str, ...] = ("fraction", "n_train", *METRIC_COLUMNS)
METRICS: tuple[str, ...] = ("r2", "mae", "pearson_r")

#: Ridge penalties searched by the probe: 1e-3 ... 1e4, 15 values on a log grid.
DEFAULT_ALPHAS: np.ndarray = np.logspace(-3, 4, 15)
#: Folds of the probe's penalty search (fewer when the training split is smaller).
CV_FOLDS: int = 5
#: Two-sided 95 % percentile bootstrap interval.
CI_LEVEL: float = 0.95
#: The smallest labelled training subset of a label-efficiency curve: below ~10 subjects a
#: 5-fold penalty search has folds of one or two subjects and the curve says nothing.
MIN_TRAIN_LABELS: int = 10
#: Fractions of the training labels of a label-efficiency curve.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


# ============================================================================================
# Input handling
# ============================================================================================
def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature columns of a features frame: every column but ``subject_id`` and ``split``.

    Raises:
        DataError: ``subject_id``/``split`` missing, duplicate subjects, a split outside
            ``train/val/test``, no feature column, or a non-numeric feature column.
    """
    missing = [c for c in ID_COLUMNS if c not in features.columns]
    if missing:
        raise DataError("features frame lacks required columns", expected="subject_id, split",
                        found=", ".join(map(str, features.columns[:8])))
    dup = features["subject_id"][features["subject_id"].duplicated()]
    if len(dup):
        raise DataError("features frame has duplicate subjects", subject=str(dup.iloc[0]),
                        expected="one row per subject")
    bad = ~features["split"].isin(SPLITS)
    if bad.any():
        raise DataError(f"split {features['split'][bad].iloc[0]!r} is not allowed",
                        subject=str(features["subject_id"][bad].iloc[0]),
                        expected=" / ".join(SPLITS))
    cols = [c for c in features.columns if c not in ID_COLUMNS]
    if not cols:
        raise DataError("features frame has no feature column", expected="e000, e001, ...")
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(f"feature column {non_numeric[0]!r} is not numeric",
                        expected="numeric feature columns besides subject_id and split",
                        found=str(features[non_numeric[0]].dtype))
    return cols


def join_table(features: pd.DataFrame, table: pd.DataFrame,
               columns: Sequence[str]) -> pd.DataFrame:
    """``features`` with ``columns`` of ``table`` attached by ``subject_id`` (NaN where the
    table has no row for a subject). Row order of ``features`` is kept."""
    feature_columns(features)
    if "subject_id" not in table.columns:
        raise DataError("table lacks a subject_id column", expected="subject_id")
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise DataError(f"table lacks column {absent[0]!r}",
                        expected=", ".join(columns), found=", ".join(map(str, table.columns)))
    dup = table["subject_id"][table["subject_id"].duplicated()]
    if len(dup):
        raise DataError("table has duplicate subjects", subject=str(dup.iloc[0]),
                        expected="one row per subject")
    right = table[["subject_id", *columns]]
    clash = [c for c in columns if c in features.columns]
    if clash:
        raise DataError(f"column {clash[0]!r} is both a feature and a table column",
                        expected="targets, outcomes and covariates only in the table")
    return features.merge(right, on="subject_id", how="left", validate="one_to_one")


def _labelled(frame: pd.DataFrame, target: str, split: str, *, minimum: int) -> pd.DataFrame:
    rows = frame[(frame["split"] == split) & frame[target].notna()]
    if len(rows) < minimum:
        raise DataError(f"target {target!r}: {len(rows)} labelled {split} subjects",
                        expected=f"at least {minimum}")
    return rows


# ============================================================================================
# 1. Linear probe
# ============================================================================================
class ProbeResult(NamedTuple):
    """What :func:`linear_probe` returns (unpacks as ``predictions, alpha, model``)."""

    predictions: pd.DataFrame   # test split: subject_id, y_true, y_pred (target units)
    alpha: float                # ridge penalty chosen by K-fold CV on the training split
    model: Pipeline             # median imputer → scaler → Ridge(alpha), fitted on train rows


def linear_probe(features: pd.DataFrame, table: pd.DataFrame, target: str, *,
                 alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
                 seed: int = 0) -> ProbeResult:
    """Ridge regression of one target on frozen features, fitted on the training split only.

    The pipeline (median imputation → standardisation → ``Ridge``) is fitted on the
    training subjects whose ``target`` is observed; the penalty is chosen from ``alphas`` by
    shuffled K-fold CV (``K = min(5, n_train)``, seed ``seed``, mean squared error) on those
    same rows. Imputation medians and scaling statistics are therefore training statistics;
    the validation split is not used (it exists for the MLP's early stopping). Within the CV
    the scaler is shared by the folds: a within-training-set effect on the choice of the
    penalty only — no validation or test row ever reaches the fit.

    Args:
        features: see the module docstring.
        table: see the module docstring; must hold ``target``.
        target: the column to predict (e.g. ``"lvef_pct"``).
        alphas: candidate ridge penalties.
        seed: seed of the CV fold assignment.

    Returns:
        :class:`ProbeResult` whose ``predictions`` has one row per test subject with an
        observed target: ``subject_id, y_true, y_pred``.

    Raises:
        DataError: malformed frames, fewer than 2 labelled training subjects or no labelled
            test subject.
    """
    cols = feature_columns(features)
    frame = join_table(features, table, [target])
    train = _labelled(frame, target, "train", minimum=2)
    test = _labelled(frame, target, "test", minimum=1)
    # all-NaN training columns are dropped by the imputer (nothing to learn from them)
    prep = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    x = prep.fit_transform(train[cols].to_numpy(dtype=float))
    y = train[target].to_numpy(dtype=float)
    folds = KFold(n_splits=min(CV_FOLDS, len(train)), shuffle=True, random_state=seed)
    alpha = kfold_ridge_alpha(x, y, np.asarray(alphas, dtype=float), folds)
    model = Pipeline([*prep.steps, ("ridge", Ridge(alpha=alpha).fit(x, y))])
    y_pred = model.predict(test[cols].to_numpy(dtype=float))
    preds = pd.DataFrame({"subject_id": test["subject_id"].to_numpy(),
                          "y_true": test[target].to_numpy(dtype=float), "y_pred": y_pred})
    return ProbeResult(preds, alpha, model)


def kfold_ridge_alpha(x: np.ndarray, y: np.ndarray, alphas: np.ndarray, folds: KFold) -> float:
    """The penalty of ``alphas`` with the lowest mean squared error over ``folds``: what
    ``RidgeCV(alphas, cv=folds, scoring="neg_mean_squared_error")`` chooses (the unweighted
    mean of the folds' errors; a tie goes to the first penalty), computed from one SVD per
    fold for every penalty at once instead of one fit per penalty and fold (75 sklearn fits
    per probe took ~0.5 s, most of a grid cell's probes; this takes milliseconds).

    Each fold's ridge with intercept is the centred least-squares problem: with
    ``X_c = U S Vᵀ`` (fold-training rows centred), ``w(α) = V diag(s / (s² + α)) Uᵀ y_c`` and
    the intercept ``ȳ − x̄ w`` (Hastie, Tibshirani & Friedman 2009, *The Elements of
    Statistical Learning*, 2nd ed., §3.4.1, eq. 3.47).
    """
    errors = np.zeros(len(alphas))
    for fit_rows, held_out in folds.split(x):
        x_mean, y_mean = x[fit_rows].mean(axis=0), y[fit_rows].mean()
        u, s, vt = np.linalg.svd(x[fit_rows] - x_mean, full_matrices=False)
        shrink = s / (s**2 + alphas[:, None])                          # (A, k)
        weights = (shrink * (u.T @ (y[fit_rows] - y_mean))) @ vt        # (A, p)
        pred = (x[held_out] - x_mean) @ weights.T + y_mean              # (n_held_out, A)
        errors += ((pred - y[held_out, None]) ** 2).mean(axis=0)
    return float(alphas[int(np.argmin(errors))])


def linear_probes(features: pd.DataFrame, table: pd.DataFrame, targets: Sequence[str], *,
                  alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
                  seed: int = 0) -> pd.DataFrame:
    """:func:`linear_probe` for each target, in long form.

    Returns:
        ``subject_id, target, y_true, y_pred, alpha`` (``alpha``: that target's penalty).
    """
    parts = []
    for target in targets:
        res = linear_probe(features, table, target, alphas=alphas, seed=seed)
        parts.append(res.predictions.assign(target=target, alpha=res.alpha))
    return pd.concat(parts, ignore_index=True)[[*PREDICTION_COLUMNS, "alpha"]]


# ============================================================================================
# 2. The paper's MLP head
# ============================================================================================
class MlpResult(NamedTuple):
    """What :func:`mlp_head` returns (unpacks as ``predictions, history, best_epoch``)."""

    predictions: pd.DataFrame   # test split, long: subject_id, target, y_true, y_pred
    history: pd.DataFrame       # epoch, train_loss, val_loss (standardised-target MSE)
    best_epoch: int             # epoch (0-based) whose weights were restored


def _train_standardised(values: np.ndarray, train: np.ndarray,
                        impute: bool) -> np.ndarray:
    """Columns of ``values`` (N, K) standardised with the rows ``train`` (bool (N,)) only.

    NaN statistics ignore missing values; a constant (or single-valued) training column gets
    scale 1. With ``impute`` missing values become the training median before scaling
    (input features); without, NaN stays NaN (masked targets).
    """
    x = np.array(values, dtype=np.float64)
    tr = x[train]
    observed = np.isfinite(tr).any(axis=0)
    if impute:
        med = np.zeros(x.shape[1])
        med[observed] = np.nanmedian(tr[:, observed], axis=0)
        x = np.where(np.isnan(x), med, x)
        tr = x[train]
    mean = np.zeros(x.shape[1])
    std = np.ones(x.shape[1])
    mean[observed] = np.nanmean(tr[:, observed], axis=0)
    sd = np.nanstd(tr[:, observed], axis=0)
    std[observed] = np.where(sd > 0, sd, 1.0)
    return (x - mean) / std


@one_thread()
def mlp_head(features: pd.DataFrame, table: pd.DataFrame, targets: Sequence[str], *,
             covariates: Sequence[str] = (), epochs: int = 200, patience: int = 20,
             lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 64,
             seed: int = 0, device: str = "cpu") -> MlpResult:
    """The paper's downstream head on frozen features, all targets jointly.

    ``MlpHead(D, len(targets))`` (D → D/2 → D/4 → out, GELU) is trained with AdamW on the
    training split against targets standardised with training means/SDs, with the NaN-masked
    MSE (a subject missing one phenotype still teaches the others). After every epoch the
    same loss on the validation split decides early stopping (``patience`` epochs without a
    strict improvement); the weights of the best validation epoch are restored before the
    test split is predicted.

    Inputs: the feature columns, plus ``covariates`` from ``table`` when fused (the paper's
    age, sex, BMI, systolic BP, smoking, alcohol; codes used as numbers), concatenated.
    Every input column is median-imputed and standardised with training statistics: for an
    embedding this affine map changes nothing the first linear layer could not absorb, and
    it puts classical features (ms next to mV) and covariates on one scale. ``D`` is the
    number of input columns.

    Determinism: initial weights come from ``seed`` (drawn inside
    :func:`torch.random.fork_rng`, so the global torch RNG is left as it was) and batches from
    a ``torch.Generator`` seeded with ``seed``: on CPU the same seed gives identical
    predictions.

    Args:
        features, table: see the module docstring; ``table`` holds ``targets`` and
            ``covariates``.
        targets: columns to predict jointly.
        covariates: columns of ``table`` to fuse with the features (empty: ECG alone).
        epochs, patience: at most ``epochs`` epochs; stop after ``patience`` without
            improvement of the validation loss.
        lr, weight_decay, batch_size: AdamW and mini-batch settings.
        seed: initialisation and shuffling seed.
        device: torch device (``"cpu"``, ``"cuda"``).

    Returns:
        :class:`MlpResult`; ``predictions`` holds one row per (test subject, target) with an
        observed target, in target units.

    Raises:
        DataError: malformed frames, a target with fewer than 2 labelled training subjects,
            or no labelled validation/test subject.
    """
    if epochs < 1 or patience < 1 or batch_size < 1:
        raise ValueError("epochs, patience and batch_size must be >= 1, got "
                         f"{epochs}, {patience}, {batch_size}")
    targets, covariates = list(targets), list(covariates)
    if not targets:
        raise ValueError("mlp_head needs at least one target")
    cols = feature_columns(features)
    frame = join_table(features, table, [*targets, *covariates])
    for t in targets:
        _labelled(frame, t, "train", minimum=2)
    split = frame["split"].to_numpy()
    is_train = split == "train"
    x = _train_standardised(frame[cols + covariates].to_numpy(dtype=float), is_train,
                            impute=True)
    y = _train_standardised(frame[targets].to_numpy(dtype=float), is_train, impute=False)
    rows = _labelled_rows(frame, targets, y)

    dev = torch.device(device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)         # (N, D) standardised
    yt = torch.as_tensor(y, dtype=torch.float32, device=dev)         # (N, K) standardised, NaN
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MlpHead(xt.shape[1], len(targets)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history, best_state, best_epoch = _fit_early_stopping(
        model, xt, yt, rows, opt=opt, epochs=epochs, patience=patience,
        batch_size=batch_size, gen=gen)
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        z = model(xt[rows["test"]]).double().cpu().numpy()          # (n_test, K) standardised
    return MlpResult(_test_predictions(frame, targets, rows["test"], z, is_train), history,
                     best_epoch)


def _labelled_rows(frame: pd.DataFrame, targets: list[str], y: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Row numbers of each split that have at least one observed target (standardised ``y``).

    Rows with no observed target carry no loss, so they are left out of training and
    validation; a split without any labelled row is an error.
    """
    split = frame["split"].to_numpy()
    has_label = np.isfinite(y).any(axis=1)
    rows = {s: np.flatnonzero((split == s) & has_label) for s in SPLITS}
    for s in ("val", "test"):
        if rows[s].size == 0:
            raise DataError(f"no {s} subject has any of the targets {targets}",
                            expected=f"labelled {s} subjects")
    return rows


def _test_predictions(frame: pd.DataFrame, targets: list[str], test_rows: np.ndarray,
                      z: np.ndarray, is_train: np.ndarray) -> pd.DataFrame:
    """Long test predictions in target units from standardised outputs ``z`` (n_test, K)."""
    raw = frame[targets].to_numpy(dtype=float)
    tr_raw = raw[is_train]
    mean, std = np.nanmean(tr_raw, axis=0), np.nanstd(tr_raw, axis=0)
    std = np.where(std > 0, std, 1.0)
    y_pred = z * std + mean                                          # back to target units
    preds = pd.DataFrame({
        "subject_id": np.repeat(frame["subject_id"].to_numpy()[test_rows], len(targets)),
        "target": np.tile(targets, len(test_rows)),
        "y_true": raw[test_rows].ravel(),
        "y_pred": y_pred.ravel(),
    })
    return preds[preds["y_true"].notna()].reset_index(drop=True)


def _fit_early_stopping(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        rows: Mapping[str, np.ndarray], *, opt: torch.optim.Optimizer,
                        epochs: int, patience: int, batch_size: int, gen: torch.Generator,
                        eval_batch: int | None = None) -> tuple[pd.DataFrame, dict, int]:
    """Mini-batch training on ``rows["train"]``, early stopping on ``rows["val"]``.

    ``model(x[i])`` predicts rows ``i`` (``x`` holds features, or row numbers when the model
    reads its inputs itself, as the fine-tuned encoder does). The validation split is
    predicted in chunks of ``eval_batch`` rows (all at once when None) and scored once.
    Returns (history, state dict of the best validation epoch, that epoch).
    """
    train_idx = torch.as_tensor(rows["train"])
    val_idx = torch.as_tensor(rows["val"])
    best_loss, best_epoch, best_state = math.inf, -1, None
    log = []
    for epoch in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total, weight = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = masked_mse(model(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
            weight += len(batch)
        model.eval()
        with torch.no_grad():
            val_loss = float(masked_mse(_predict(model, x, val_idx, eval_batch), y[val_idx]))
        log.append((epoch, total / weight, val_loss))
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    history = pd.DataFrame(log, columns=["epoch", "train_loss", "val_loss"])
    if best_state is None:
        raise RuntimeError("the validation loss was never finite (diverged?); try a smaller lr")
    return history, best_state, best_epoch


def _predict(model: torch.nn.Module, x: torch.Tensor, idx: torch.Tensor,
             chunk: int | None) -> torch.Tensor:
    if chunk is None:
        return model(x[idx])
    return torch.cat([model(x[idx[i:i + chunk]]) for i in range(0, len(idx), chunk)])


# ============================================================================================
# 2b. The paper's head with the encoder fine-tuned
# ============================================================================================
class _EncoderWithHead(torch.nn.Module):
    """``forward(rows) -> (B, K)``: reads the ECGs of frame rows ``rows`` from ``ecg`` (e.g. the
    cache's memory map), encodes them, appends the standardised covariates, applies the head."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module, ecg: np.ndarray,
                 array_rows: np.ndarray, covariates: torch.Tensor) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.ecg, self.array_rows, self.covariates = ecg, array_rows, covariates

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        r = rows.cpu().numpy()
        order = np.argsort(self.array_rows[r])      # sorted reads are faster on a memory map
        signals = np.empty((len(r), *self.ecg.shape[1:]), dtype=np.float32)
        signals[order] = self.ecg[self.array_rows[r][order]]
        dev = self.covariates.device
        z = self.encoder(torch.from_numpy(signals).to(dev))
        return self.head(torch.cat([z.float(), self.covariates[rows]], dim=1))


def finetune_head(encoder: torch.nn.Module, ecg: np.ndarray, subjects: pd.DataFrame,
                  table: pd.DataFrame, targets: Sequence[str], *,
                  covariates: Sequence[str] = (), epochs: int = 20, patience: int = 5,
                  lr: float = 1e-3, encoder_lr: float = 1e-4, weight_decay: float = 1e-4,
                  batch_size: int = 32, seed: int = 0, device: str = "cpu") -> MlpResult:
    """The paper's head trained **with the ECG encoder** (the fine-tuning flag of DESIGN §5).

    Same contract as :func:`mlp_head` (training split only for fitting, validation for early
    stopping, test for the predictions; targets and covariates standardised with training
    statistics), but the input is the ECG itself: ``subjects`` has ``subject_id``, ``split``
    and ``row`` (index into ``ecg``, an ``(N, 12, T)`` array or memory map such as
    ``cache.ecg``); ``cache.rows()`` is such a frame. The encoder (a copy; the caller's is
    left untouched) trains at ``encoder_lr``, the new head at ``lr`` (AdamW): a smaller step
    for the pretrained weights keeps fine-tuning from erasing what pretraining learned.

    Returns:
        :class:`MlpResult` with test predictions in target units.
    """
    import copy

    if epochs < 1 or patience < 1 or batch_size < 1:
        raise ValueError("epochs, patience and batch_size must be >= 1, got "
                         f"{epochs}, {patience}, {batch_size}")
    targets, covariates = list(targets), list(covariates)
    if not targets:
        raise ValueError("finetune_head needs at least one target")
    missing = [c for c in ("subject_id", "split", "row") if c not in subjects.columns]
    if missing:
        raise DataError("subjects frame lacks required columns",
                        expected="subject_id, split, row", found=", ".join(subjects.columns))
    ids = subjects[["subject_id", "split", "row"]].rename(columns={"row": "_row"})
    frame = join_table(ids, table, [*targets, *covariates])
    for t in targets:
        _labelled(frame, t, "train", minimum=2)
    is_train = frame["split"].to_numpy() == "train"
    cov = _train_standardised(frame[covariates].to_numpy(dtype=float), is_train, impute=True) \
        if covariates else np.zeros((len(frame), 0))
    y = _train_standardised(frame[targets].to_numpy(dtype=float), is_train, impute=False)
    rows = _labelled_rows(frame, targets, y)

    dev = torch.device(device)
    yt = torch.as_tensor(y, dtype=torch.float32, device=dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = MlpHead(encoder.out_dim + len(covariates), len(targets))
    model = _EncoderWithHead(copy.deepcopy(encoder), head, ecg, frame["_row"].to_numpy(),
                             torch.as_tensor(cov, dtype=torch.float32, device=dev)).to(dev)
    opt = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": encoder_lr},
                             {"params": model.head.parameters(), "lr": lr}],
                            weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    row_numbers = torch.arange(len(frame))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)                  # dropout / stochastic depth of the encoder
        history, best_state, best_epoch = _fit_early_stopping(
            model, row_numbers, yt, rows, opt=opt, epochs=epochs, patience=patience,
            batch_size=batch_size, gen=gen, eval_batch=batch_size)
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        z = _predict(model, row_numbers, torch.as_tensor(rows["test"]), batch_size)
    return MlpResult(_test_predictions(frame, targets, rows["test"], z.double().cpu().numpy(),
                                       is_train), history, best_epoch)


# ============================================================================================
# 3. Metrics and bootstrap confidence intervals
# ============================================================================================
# Each metric works along the last axis, so one call scores all bootstrap resamples at once.
def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray | float:
    """Coefficient of determination ``1 - Σ(y - ŷ)² / Σ(y - ȳ)²`` (ȳ: mean of ``y_true``
    in the same sample; 0 = the sample mean, may be negative). NaN for constant ``y_true``."""
    ss_res = np.sum((y_true - y_pred) ** 2, axis=-1)
    ss_tot = np.sum((y_true - np.mean(y_true, axis=-1, keepdims=True)) ** 2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray | float:
    """Mean absolute error, in the target's units (mL, %, g)."""
    return np.mean(np.abs(y_true - y_pred), axis=-1)


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray | float:
    """Pearson correlation of truth and prediction. NaN when either is constant."""
    a = y_true - np.mean(y_true, axis=-1, keepdims=True)
    b = y_pred - np.mean(y_pred, axis=-1, keepdims=True)
    den = np.sqrt(np.sum(a * a, axis=-1) * np.sum(b * b, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.sum(a * b, axis=-1) / np.where(den > 0, den, 1.0), np.nan)


#: Metric name -> function of (y_true, y_pred) along the last axis.
METRIC_FUNCTIONS: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray | float]] = {
    "r2": r2_score, "mae": mean_absolute_error, "pearson_r": pearson_r,
}


def _finite_pair(y_true: np.ndarray | Sequence[float],
                 y_pred: np.ndarray | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true {a.shape} and y_pred {b.shape} differ")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def regression_metrics(y_true: np.ndarray | Sequence[float],
                       y_pred: np.ndarray | Sequence[float]) -> dict[str, float]:
    """``{"r2", "mae", "pearson_r", "n"}`` over the pairs where both values are finite.

    ``mae`` is in the target's units; ``n`` is the number of pairs scored.
    """
    a, b = _finite_pair(y_true, y_pred)
    out = {name: float(fn(a, b)) if a.size else math.nan
           for name, fn in METRIC_FUNCTIONS.items()}
    out["n"] = int(a.size)
    return out


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) int64 rows drawn with replacement (``numpy.random.default_rng(seed)``).

    Depends only on ``(n, n_boot, seed)``: the resamples of a saved result can be redrawn.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 and n_boot >= 1, got {n}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n), dtype=np.int64)


def percentile_ci(stats: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of bootstrap statistics, ignoring undefined (NaN) resamples."""
    stats = np.asarray(stats, dtype=float)
    if not np.isfinite(stats).any():
        return math.nan, math.nan
    tail = 100.0 * (1.0 - CI_LEVEL) / 2.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(y_true: np.ndarray | Sequence[float], y_pred: np.ndarray | Sequence[float],
                 metric_fn: Callable[[np.ndarray, np.ndarray], float], *, n_boot: int = 1000,
                 seed: int = 0) -> tuple[float, float, np.ndarray]:
    """95 % percentile bootstrap CI of ``metric_fn(y_true, y_pred)`` over resampled subjects.

    Pairs with a non-finite value are dropped first, so ``indices`` index the remaining
    pairs in input order. Resamples where the metric is undefined (NaN, e.g. R² of a constant
    resample) are left out of the percentiles.

    Returns:
        ``(low, high, indices)``; ``indices`` is the ``(n_boot, n)`` int array of resampled
        rows (:func:`bootstrap_indices`): ``metric_fn(y_true[i], y_pred[i])`` for each row
        ``i`` of it, then the 2.5th/97.5th percentiles, gives back ``(low, high)`` exactly.
    """
    a, b = _finite_pair(y_true, y_pred)
    idx = bootstrap_indices(a.size, n_boot, seed)
    stats = np.array([metric_fn(a[i], b[i]) for i in idx], dtype=float)
    low, high = percentile_ci(stats)
    return low, high, idx


def evaluate_predictions(pred_long_df: pd.DataFrame, *, n_boot: int = 1000,
                         seed: int = 0) -> pd.DataFrame:
    """Tidy metrics with bootstrap CIs: one row per target × metric.

    Within a target the pairs are first sorted by ``subject_id`` (the result does not depend
    on row order) and non-finite pairs dropped; the bootstrap resamples are
    ``bootstrap_indices(n, n_boot, seed)`` — the same rows for every metric, identical to
    :func:`bootstrap_ci` with that seed on the sorted pairs.

    Args:
        pred_long_df: ``subject_id, target, y_true, y_pred`` (other columns ignored).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        Columns ``target, metric, value, ci_low, ci_high, n`` (metrics ``r2``, ``mae`` in
        the target's units, ``pearson_r``); targets in order of first appearance.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in pred_long_df.columns]
    if missing:
        raise DataError("prediction frame lacks columns", expected=", ".join(PREDICTION_COLUMNS),
                        found=", ".join(map(str, pred_long_df.columns)))
    rows = []
    for target, group in pred_long_df.groupby("target", sort=False):
        group = group.sort_values("subject_id", kind="stable")
        a, b = _finite_pair(group["y_true"].to_numpy(), group["y_pred"].to_numpy())
        idx = bootstrap_indices(a.size, n_boot, seed) if a.size else None
        for metric, fn in METRIC_FUNCTIONS.items():
            value = float(fn(a, b)) if a.size else math.nan
            low, high = percentile_ci(fn(a[idx], b[idx])) if idx is not None else (math.nan,
                                                                                     math.nan)
            rows.append((target, metric, value, low, high, int(a.size)))
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


# ============================================================================================
# 4. Label efficiency
# ============================================================================================
def nested_subsets(subject_ids: Sequence[object] | np.ndarray, fractions: Sequence[float], *,
                   seed: int = 0, min_size: int = MIN_TRAIN_LABELS) -> dict[float, np.ndarray]:
    """Nested random subsets of ``subject_ids``: ``fraction -> ids``.

    One permutation (``numpy.random.default_rng(seed)``) of the ids sorted (as text) first,
    so the subsets do not depend on input order; the subset of fraction f is its first
    ``min(n, max(min_size, ceil(f·n)))`` ids. A larger fraction therefore always contains a
    smaller one's subset.
    """
    ids = np.asarray(subject_ids, dtype=object)
    ids = ids[np.argsort(ids.astype(str), kind="stable")]
    if len(pd.unique(ids)) != len(ids):
        raise ValueError("nested_subsets: duplicate subject ids")
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
    perm = ids[np.random.default_rng(seed).permutation(len(ids))]
    n = len(ids)
    # 1e-9 guards ceil against float products like 0.07 * 100 = 7.000000000000001
    return {float(f): perm[:min(n, max(min_size, math.ceil(f * n - 1e-9)))] for f in fractions}


def label_efficiency(features: pd.DataFrame, table: pd.DataFrame, targets: Sequence[str],
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                     model: Literal["probe", "mlp"] = "probe", seed: int = 0,
                     n_boot: int = 1000, min_size: int = MIN_TRAIN_LABELS,
                     **fit_kwargs: object) -> pd.DataFrame:
    """Test-set metrics as a function of the fraction of training subjects labelled.

    The training subjects are subsampled with :func:`nested_subsets` (seed ``seed``; at least
    ``min_size`` subjects); the unselected training rows are removed, the validation split
    (early stopping of the MLP) and the test split stay whole. Each subset is fitted with
    :func:`linear_probes` or :func:`mlp_head` (``fit_kwargs`` passed on, e.g. ``epochs``)
    and scored with :func:`evaluate_predictions`.

    Returns:
        Columns ``fraction, n_train, target, metric, value, ci_low, ci_high, n``
        (``n_train``: training subjects in the subset; ``n``: test pairs scored).
    """
    if model not in ("probe", "mlp"):
        raise ValueError(f"model must be 'probe' or 'mlp', got {model!r}")
    feature_columns(features)
    is_train = features["split"] == "train"
    subsets = nested_subsets(features.loc[is_train, "subject_id"], fractions, seed=seed,
                             min_size=min_size)
    parts = []
    for fraction, chosen in subsets.items():
        subset = features[~is_train | features["subject_id"].isin(chosen)]
        if model == "probe":
            preds = linear_probes(subset, table, targets, seed=seed, **fit_kwargs)
        else:
            preds = mlp_head(subset, table, targets, seed=seed, **fit_kwargs).predictions
        scored = evaluate_predictions(preds, n_boot=n_boot, seed=seed)
        scored.insert(0, "n_train", len(chosen))
        scored.insert(0, "fraction", fraction)
        parts.append(scored)
    return pd.concat(parts, ignore_index=True)[list(LABEL_EFFICIENCY_COLUMNS)]


# ============================================================================================
# 5. Relative improvement
# ============================================================================================
def relative_improvement(a: float, b: float, *, higher_is_better: bool = True) -> float:
    """Relative improvement of ``a`` over the baseline ``b``, in percent.

    ``100·(a − b)/|b|`` for a higher-is-better metric (R², Pearson r, AUC); with
    ``higher_is_better=False`` (MAE) ``100·(b − a)/|b|``, so a positive number always means
    ``a`` is better. This is the form of the paper's headline numbers ("↑ 9.2 %" for
    functional phenotypes, "↑ 0.7 %" for outcomes: Alvarez-Florez et al. 2026, arXiv
    2602.12883, abstract); the abstract does not give the formula, so this is our reading.

    Raises:
        ValueError: ``b`` is 0 or not finite (no relative change is defined).
    """
    if not math.isfinite(b) or b == 0:
        raise ValueError(f"relative_improvement: baseline must be finite and non-zero, got {b}")
    diff = (a - b) if higher_is_better else (b - a)
    return 100.0 * diff / abs(b)


# ============================================================================================
# 6. Classical baseline features
# ============================================================================================
def classical_features(ecgs: np.ndarray | Sequence[np.ndarray], subjects: pd.DataFrame,
                       fs: float = ECG_FS_HZ) -> pd.DataFrame:
    """The classical-baseline features frame: standard ECG measurements per subject.

    Args:
        ecgs: ``(N, 12, T)`` mV (raw, not z-scored: amplitudes are in mV) or N such arrays.
        subjects: N rows, in the order of ``ecgs``, with ``subject_id`` and ``split``.
        fs: sampling rate (Hz).

    Returns:
        ``subject_id, split`` and the columns of
        :data:`ecgcmr.ecg_measurements.FEATURE_NAMES` (NaN where a measurement cannot be
        made; the probe and the head impute training medians).
    """
    if not {"subject_id", "split"} <= set(subjects.columns):
        raise DataError("subjects frame lacks columns", expected="subject_id, split",
                        found=", ".join(map(str, subjects.columns)))
    ecgs = list(ecgs)
    if len(ecgs) != len(subjects):
        raise DataError("one ECG per subject needed", expected=f"{len(subjects)} ECGs",
                        found=str(len(ecgs)))
    measured = measure_many(ecgs, fs=fs)
    measured.insert(0, "split", subjects["split"].to_numpy())
    measured.insert(0, "subject_id", subjects["subject_id"].to_numpy())
    return measured


__all__ = [
    "DEFAULT_ALPHAS", "DEFAULT_FRACTIONS", "LABEL_EFFICIENCY_COLUMNS", "METRICS",
    "METRIC_COLUMNS", "METRIC_FUNCTIONS", "MIN_TRAIN_LABELS", "PREDICTION_COLUMNS",
    "MlpResult", "ProbeResult", "bootstrap_ci", "bootstrap_indices", "classical_features",
    "evaluate_predictions", "feature_columns", "label_efficiency", "linear_probe",
    "linear_probes", "mean_absolute_error", "mlp_head", "nested_subsets", "pearson_r",
    "r2_score", "regression_metrics", "relative_improvement",
]
