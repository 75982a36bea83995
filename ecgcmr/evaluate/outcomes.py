"""Outcomes from frozen ECG embeddings: the paper's balanced classification, natural-prevalence
AUROC/AUPRC with bootstrap CIs, and survival analysis (Cox PH, concordance, KM, log-rank).

Inputs are plain DataFrames and nothing here reads or writes files:

- ``features``: one row per subject: ``subject_id``, ``split`` (``train``/``val``/``test``)
  and numeric feature columns (embeddings ``e000 ...``); every other column is a feature.
- ``table``: one row per subject: ``subject_id`` and, for each condition ``c`` of
  :data:`ecgcmr.constants.CONDITIONS`, ``c_ever`` (0/1, the paper's "ever diagnosed" label),
  ``c_event`` (0/1 incident event after imaging; NaN = prevalent at imaging, so not at risk and
  left out of every incident analysis) and ``c_time_years`` (years from imaging to the event
  or to censoring); covariates of :data:`ecgcmr.constants.COVARIATES`.

Covariate fusion (``covariates=``): the covariate columns are appended to the features, so the
head's input width is ``D + len(covariates)``; imputed and standardised like the features. The
authors' public code does this for the outcome endpoints only: it writes a covariate file per
endpoint (``qurAI-amsterdam/dual-phase-contrastive-learning``,
``ECG-CMR-CL/utils/generate_balanced_dataset.py``, from ``generate_clinical_data.py``: sex, age,
smoking, systolic BP, BMI and one-hot alcohol intake, 12 columns) and its
``ECGwClinicalPredictor`` (``ECG-CMR-CL/ECGEncoder.py``) concatenates them to the frozen ECG
embedding. The ``paper`` profile therefore fuses :data:`ecgcmr.constants.COVARIATES`
(``Profile.outcome_covariates``; pass ``covariates=get_profile(p).outcome_covariates``); the
``tiny`` and ``teaching`` profiles use the ECG alone. Differences kept: alcohol enters as its
ordinal code (not one-hot), and the head is this project's ``MlpHead`` (the public fused head is
a 1024-512-256-128 MLP with BatchNorm and dropout).

Leakage rules, as in :mod:`ecgcmr.evaluate.phenotypes`: every imputation median, scaling
statistic, PCA basis, penalty and model weight is fitted on **training rows only**; the
validation split only stops the MLP early; the test split is only scored. A condition with
too few cases or events in a split never raises: its metrics are NaN and ``note`` says why.

Library: survival uses **lifelines** (0.30.3), not statsmodels. lifelines' ``CoxPHFitter``
fits a *penalised* Cox model (L2 / elastic net, Efron's method for tied times) and still
reports standard errors; it has Harrell's C (``concordance_index``, the reference
:func:`c_index` is tested against), ``KaplanMeierFitter`` with pointwise CIs,
``multivariate_logrank_test`` and the scaled
Schoenfeld-residual test of proportional hazards (``proportional_hazard_test``, Grambsch &
Therneau 1994, Biometrika 81:515). statsmodels' ``PHReg`` has no penalised fit with inference
(``fit_regularized`` returns coefficients only), no concordance and no PH-assumption test.

Harrell's C convention (lifelines'; Harrell et al. 1996, Stat Med 15:361): a pair (i, j) is
comparable when subject i had the event and ``t_i < t_j``, or ``t_i == t_j`` with j censored
(a censored subject is taken to outlive an event at its own time); two events at the same
time are not comparable. A comparable pair counts 1 when i has the higher risk, ½ for tied
risks, 0 otherwise; C = (concordant + ½·tied) / comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError
from lifelines.statistics import multivariate_logrank_test, proportional_hazard_test
from scipy.stats import rankdata
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgcmr.constants import CONDITIONS
from ecgcmr.errors import DataError

# one CI convention for the whole evaluation: two-sided 95 % (percentile bootstrap; Wald for
# the hazard ratio)
from ecgcmr.evaluate.phenotypes import (
    CI_LEVEL,
    bootstrap_indices,
    feature_columns,
    join_table,
    percentile_ci,
)
from ecgcmr.models import MlpHead
from ecgcmr.parallel import one_thread

# ============================================================================================
# Constants
# ============================================================================================
SPLITS: tuple[str, ...] = ("train", "val", "test")
Head = Literal["mlp", "logistic"]

#: Columns of :func:`balanced_classification`'s table (one row per seed).
BALANCED_COLUMNS: tuple[str, ...] = (
    "condition", "model", "seed", "metric", "value", "n_cases", "n_controls", "note",
)
#: Columns of :func:`classification_metrics` / :func:`natural_prevalence_metrics`.
NATURAL_COLUMNS: tuple[str, ...] = (
    "condition", "model", "metric", "value", "ci_low", "ci_high", "n", "n_cases", "note",
)
#: Columns of :attr:`SurvivalResult.metrics`.
SURVIVAL_COLUMNS: tuple[str, ...] = (
    "condition", "covariates", "n_components", "metric", "value", "ci_low", "ci_high", "n",
    "n_events", "note",
)
KM_COLUMNS: tuple[str, ...] = (
    "condition", "quartile", "time_years", "survival", "ci_low", "ci_high", "at_risk",
    "events", "censored",
)
PH_COLUMNS: tuple[str, ...] = ("condition", "covariate", "test_statistic", "p", "note")
COEF_COLUMNS: tuple[str, ...] = (
    "condition", "covariate", "coef", "se", "hr", "hr_ci_low", "hr_ci_high",
)
PREDICTION_COLUMNS: tuple[str, ...] = (
    "subject_id", "time_years", "event", "risk", "risk_sd", "quartile",
)

#: Cases (and, for the natural-prevalence task, controls) needed in each split a model uses:
#: below this a stratified CV fold or an early-stopping set has one or no case.
MIN_CASES: int = 3
#: Training events needed before a Cox model is fitted; with fewer the coefficients of
#: ``n_components`` PCs + covariates are not estimable in any useful sense.
MIN_TRAIN_EVENTS: int = 5
#: Test events needed before test-set survival metrics are reported.
MIN_TEST_EVENTS: int = 2
#: A standardised training column with a smaller SD is constant (rounding residue of 0).
CONSTANT_SD: float = 1e-12
#: Number of predicted-risk groups of the Kaplan–Meier curves (quartiles).
N_RISK_GROUPS: int = 4
#: Inverse regularisation strengths searched by the logistic head: 1e-4 ... 1e4, 17 values.
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 17))


@dataclass(frozen=True)
class HeadSettings:
    """Training settings of the classification heads (the MLP's match ``mlp_head``'s)."""

    epochs: int = 200            # MLP: at most this many epochs
    patience: int = 20           # MLP: stop after this many epochs without a val improvement
    lr: float = 1e-3             # MLP: AdamW learning rate
    weight_decay: float = 1e-4   # MLP: AdamW weight decay
    batch_size: int = 64         # MLP: mini-batch size
    cs: tuple[float, ...] = DEFAULT_CS  # logistic: candidate C (inverse L2 strength)
    cv_folds: int = 5            # logistic: stratified folds for C (fewer if few cases)

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size", "cv_folds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HeadSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not self.cs or min(self.cs) <= 0:
            raise ValueError("HeadSettings: lr > 0, weight_decay >= 0 and positive cs needed")


# ============================================================================================
# Input handling
# ============================================================================================
def _sorted_by_id(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by ``subject_id`` as text: results never depend on input row order."""
    order = np.argsort(frame["subject_id"].astype(str).to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def _joined(features: pd.DataFrame, table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``features`` with ``columns`` of ``table`` attached by ``subject_id``, sorted by subject."""
    return _sorted_by_id(join_table(features, table, columns))


def _check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")


def _check_binary(frame: pd.DataFrame, column: str) -> None:
    """Raise DataError naming the first subject whose non-NaN ``column`` is not 0/1."""
    values = frame[column]
    bad = values.notna() & ~values.isin([0, 1])
    if bad.any():
        raise DataError(f"{column} must be 0, 1 or missing", expected="0/1/NaN",
                        subject=str(frame.loc[bad, "subject_id"].iloc[0]),
                        found=str(values[bad].iloc[0]))


# ============================================================================================
# 1. Metrics: AUROC, AUPRC, bootstrap
# ============================================================================================
def auroc(y_true: np.ndarray | Sequence[float],
          y_score: np.ndarray | Sequence[float]) -> np.ndarray | float:
    """Area under the ROC curve as the Mann–Whitney probability P(score_case > score_control)
    (+½ for ties), from mid-ranks, along the last axis (so a stack of bootstrap resamples is
    scored at once). NaN where a row lacks either class."""
    y, s = np.broadcast_arrays(np.asarray(y_true, dtype=float),
                               np.asarray(y_score, dtype=float))
    n1 = np.sum(y == 1, axis=-1)
    n0 = y.shape[-1] - n1
    ranks = rankdata(s, axis=-1)            # mid-ranks: a tied pair counts one half
    u = np.sum(np.where(y == 1, ranks, 0.0), axis=-1) - n1 * (n1 + 1) / 2.0
    both = (n1 > 0) & (n0 > 0)
    value = np.where(both, u / np.where(both, n1 * n0, 1), np.nan)
    return float(value) if value.ndim == 0 else value


def average_precision(y_true: np.ndarray | Sequence[float],
                      y_score: np.ndarray | Sequence[float]) -> float:
    """Area under the precision–recall curve as average precision,
    AP = Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds in decreasing order (the
    step-wise sum, no interpolation; tied scores enter together). NaN without a case."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(y_score, dtype=float)
    n1 = int(np.sum(y == 1))
    if n1 == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y == 1)
    fp = np.cumsum(y != 1)
    # last position of each block of equal scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))



def classification_metrics(y_true: np.ndarray | Sequence[float],
                           y_score: np.ndarray | Sequence[float], *, n_boot: int = 1000,
                           seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """AUROC, AUPRC and prevalence with 95 % percentile bootstrap CIs.

    The subjects are resampled with replacement (``bootstrap_indices(n, n_boot, seed)``, not
    stratified); a resample without a case or without a control leaves AUROC undefined and is
    left out of its percentiles. AUPRC's chance level is the prevalence, reported alongside.

    Args:
        y_true: (n,) 0/1 labels.
        y_score: (n,) scores, higher = more likely a case.

    Returns:
        ``(metrics, indices)``: metrics with columns ``metric`` (auroc, auprc, prevalence),
        ``value, ci_low, ci_high, n, n_cases``; ``indices`` the ``(n_boot, n)`` resampled rows:
        scoring ``y_true[i], y_score[i]`` for each row ``i`` and taking the 2.5th/97.5th
        percentiles (NaN ignored) reproduces the CIs exactly.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"y_true {y.shape} and y_score {s.shape}: equal, non-empty needed")
    if not np.all(np.isin(y, (0.0, 1.0))) or not np.all(np.isfinite(s)):
        raise ValueError("classification_metrics: labels must be 0/1 and scores finite")
    idx = bootstrap_indices(y.size, n_boot, seed)
    functions = {"auroc": auroc, "auprc": average_precision,
                 "prevalence": lambda a, _b: float(np.mean(a))}
    rows = []
    for name, fn in functions.items():
        stats = np.array([fn(y[i], s[i]) for i in idx])
        low, high = percentile_ci(stats)
        rows.append((name, fn(y, s), low, high, y.size, int(y.sum())))
    frame = pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n", "n_cases"])
    return frame, idx


# ============================================================================================
# 2. Classification heads
# ============================================================================================
def _classification_frame(features: pd.DataFrame, table: pd.DataFrame, condition: str,
                          covariates: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Subjects with a known ``<condition>_ever`` label (column ``y``), input columns."""
    _check_condition(condition)
    label = f"{condition}_ever"
    cols = feature_columns(features)
    frame = _joined(features, table, [label, *covariates])
    _check_binary(frame, label)
    frame = frame[frame[label].notna()].rename(columns={label: "y"}).reset_index(drop=True)
    frame["y"] = frame["y"].astype(int)
    return frame, [*cols, *covariates]


def balanced_sample(frame: pd.DataFrame, seed: int, *, label: str = "y") -> pd.DataFrame:
    """1:1 case–control sample within each split.

    Within a split all cases are kept and the controls are subsampled without replacement to
    the number of cases (if a split has fewer controls than cases, the cases are subsampled
    to the number of controls instead). One ``numpy.random.default_rng(seed)`` draws the
    splits in the order train, val, test from rows sorted by ``subject_id``, so the sample
    depends on ``seed`` but not on the input row order.

    Args:
        frame: ``subject_id``, ``split`` and the 0/1 ``label`` column.

    Returns:
        The selected rows (all columns), sorted by split then subject.
    """
    rng = np.random.default_rng(seed)
    frame = _sorted_by_id(frame)
    keep = []
    for split in SPLITS:
        rows = frame.index[frame["split"] == split].to_numpy()
        cases = rows[frame.loc[rows, label].to_numpy() == 1]
        controls = rows[frame.loc[rows, label].to_numpy() == 0]
        k = min(len(cases), len(controls))
        # the larger class is subsampled; the draw is made even when k == len() so every split
        # consumes the generator the same way for a given pair of counts
        for group in (cases, controls):
            keep.append(np.sort(rng.choice(group, size=k, replace=False)) if k else group[:0])
    return frame.loc[np.concatenate(keep)].reset_index(drop=True)


def _shortfall(frame: pd.DataFrame, splits: Sequence[str], min_cases: int) -> str:
    """'' when each split has at least ``min_cases`` cases and controls, else a note."""
    for split in splits:
        y = frame.loc[frame["split"] == split, "y"]
        n1, n0 = int((y == 1).sum()), int((y == 0).sum())
        if min(n1, n0) < min_cases:
            return (f"too few in {split}: {n1} cases, {n0} controls "
                    f"(at least {min_cases} of each needed)")
    return ""


def _needed_splits(head: Head) -> tuple[str, ...]:
    if head not in ("mlp", "logistic"):
        raise ValueError(f"head must be 'mlp' or 'logistic', got {head!r}")
    # the logistic head chooses C by CV on train and never looks at val
    return ("train", "val", "test") if head == "mlp" else ("train", "test")


def _fit_score(frame: pd.DataFrame, columns: Sequence[str], head: Head, seed: int,
               settings: HeadSettings) -> np.ndarray:
    """Fit ``head`` on the train rows of ``frame`` (label ``y``) and return (n_test,) scores
    (logits / decision values) of its test rows, in frame order."""
    masks = {s: (frame["split"] == s).to_numpy() for s in SPLITS}
    x_all = frame[list(columns)].to_numpy(dtype=float)               # (N, D)
    y_all = frame["y"].to_numpy(dtype=float)                         # (N,) 0/1
    # median imputation + standardisation with training statistics only
    prep = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    prep.fit(x_all[masks["train"]])
    x_all = prep.transform(x_all)
    if head == "logistic":
        return _logistic_scores(x_all, y_all, masks, seed, settings)
    return _mlp_scores(x_all, y_all, masks, seed, settings)


def _logistic_scores(x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray], seed: int,
                     settings: HeadSettings) -> np.ndarray:
    """L2 logistic regression, C chosen by stratified K-fold ROC-AUC on train."""
    y_tr = y[masks["train"]].astype(int)
    folds = min(settings.cv_folds, int(np.bincount(y_tr, minlength=2).min()))
    model = LogisticRegressionCV(
        Cs=list(settings.cs), l1_ratios=(0.0,), scoring="roc_auc", max_iter=2000,
        cv=StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=seed),
        use_legacy_attributes=False,
    )
    model.fit(x[masks["train"]], y_tr)
    return model.decision_function(x[masks["test"]])


@one_thread()
def _mlp_scores(x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray], seed: int,
                settings: HeadSettings) -> np.ndarray:
    """The paper's head ``MlpHead(D, 1)`` with BCE; early stopping on the val BCE, the best
    val epoch's weights restored. Seeded: CPU runs repeat exactly."""
    xt = torch.as_tensor(x, dtype=torch.float32)                     # (N, D) standardised
    yt = torch.as_tensor(y, dtype=torch.float32)[:, None]            # (N, 1) 0/1
    tr = torch.as_tensor(np.flatnonzero(masks["train"]))
    va = torch.as_tensor(np.flatnonzero(masks["val"]))
    te = torch.as_tensor(np.flatnonzero(masks["test"]))
    with torch.random.fork_rng(devices=[]):       # leave the global torch RNG untouched
        torch.manual_seed(seed)
        model = MlpHead(xt.shape[1], 1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best, best_epoch = math.inf, -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for epoch in range(settings.epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = loss_fn(model(xt[batch]), yt[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(model(xt[va]), yt[va]))
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        return model(xt[te])[:, 0].double().numpy()


def balanced_classification(features: pd.DataFrame, table: pd.DataFrame, condition: str, *,
                            seeds: Sequence[int] = (0, 1, 2), head: Head = "mlp",
                            covariates: Sequence[str] = (), min_cases: int = MIN_CASES,
                            settings: HeadSettings | None = None) -> pd.DataFrame:
    """The paper's outcome task: "ever diagnosed" ``condition`` from frozen features, 1:1
    balanced, ROC-AUC on the balanced test split, one row per seed.

    For each seed: :func:`balanced_sample` (cases and controls 1:1 within every split), then
    the head is trained on the balanced train split — ``"mlp"``: the paper's ``MlpHead``
    (D → D/2 → D/4 → 1, GELU) with BCE and early stopping on the balanced val split;
    ``"logistic"``: L2 logistic regression with C chosen by stratified CV (ROC-AUC) on the
    balanced train split — and scored by ROC-AUC on the balanced test split. Inputs (features
    and optional ``covariates`` from ``table``) are median-imputed and standardised with
    training statistics. The seed sets the control sample, the MLP's initial weights and its
    batch order, and the CV folds.

    Returns:
        Columns :data:`BALANCED_COLUMNS`; ``metric = "auroc_balanced"``, ``n_cases`` /
        ``n_controls`` of the balanced test split, ``model`` the head. When a split the head
        needs has fewer than ``min_cases`` cases (or controls) the value is NaN and ``note``
        says which split; nothing raises for a rare condition.
    """
    needed = _needed_splits(head)
    frame, columns = _classification_frame(features, table, condition, covariates)
    rows = []
    for seed in seeds:
        sample = balanced_sample(frame, int(seed))
        test_y = sample.loc[sample["split"] == "test", "y"]
        note = _shortfall(sample, needed, min_cases)
        value = math.nan
        if not note:
            scores = _fit_score(sample, columns, head, int(seed), settings or HeadSettings())
            value = auroc(test_y.to_numpy(), scores)
        rows.append((condition, head, int(seed), "auroc_balanced", value,
                     int((test_y == 1).sum()), int((test_y == 0).sum()), note))
    return pd.DataFrame(rows, columns=list(BALANCED_COLUMNS))


@dataclass(frozen=True)
class NaturalPrevalenceResult:
    """What :func:`natural_prevalence_metrics` returns."""

    metrics: pd.DataFrame       # NATURAL_COLUMNS: auroc, auprc, prevalence with 95 % CIs
    predictions: pd.DataFrame   # test split sorted by subject: subject_id, y_true, y_score
    indices: np.ndarray | None  # (n_boot, n_test) resampled rows of ``predictions``


def natural_prevalence_metrics(features: pd.DataFrame, table: pd.DataFrame, condition: str,
                               *, head: Head = "mlp", covariates: Sequence[str] = (),
                               n_boot: int = 1000, seed: int = 0,
                               min_cases: int = MIN_CASES,
                               settings: HeadSettings | None = None
                               ) -> NaturalPrevalenceResult:
    """"Ever diagnosed" ``condition`` at its natural prevalence: AUROC and AUPRC on the full
    (unbalanced) test split with bootstrap CIs.

    The head is trained on every labelled training subject (no subsampling: the prevalence
    the model sees is the cohort's), the MLP stopped early on the full val split, and scored
    on the full test split; metrics by :func:`classification_metrics`. AUPRC depends on the
    prevalence (its chance level), which is reported as its own metric row.

    Returns:
        :class:`NaturalPrevalenceResult`; with too few cases in a split the metrics are NaN
        with a ``note``, ``predictions`` is empty and ``indices`` None.
    """
    needed = _needed_splits(head)
    frame, columns = _classification_frame(features, table, condition, covariates)
    test = frame[frame["split"] == "test"]
    note = _shortfall(frame, needed, min_cases)
    if note:
        metrics = pd.DataFrame({"metric": ["auroc", "auprc", "prevalence"], "value": math.nan,
                                "ci_low": math.nan, "ci_high": math.nan, "n": len(test),
                                "n_cases": int(test["y"].sum())})
        preds = pd.DataFrame(columns=["subject_id", "y_true", "y_score"])
        indices = None
    else:
        scores = _fit_score(frame, columns, head, seed, settings or HeadSettings())
        preds = pd.DataFrame({"subject_id": test["subject_id"].to_numpy(),
                              "y_true": test["y"].to_numpy(), "y_score": scores})
        metrics, indices = classification_metrics(preds["y_true"], preds["y_score"],
                                                  n_boot=n_boot, seed=seed)
    metrics.insert(0, "model", head)
    metrics.insert(0, "condition", condition)
    metrics["note"] = note
    return NaturalPrevalenceResult(metrics[list(NATURAL_COLUMNS)], preds, indices)


# ============================================================================================
# 3. Survival
# ============================================================================================
@dataclass(frozen=True)
class SurvivalResult:
    """What :func:`cox_survival` returns. Every frame is tidy and carries ``condition``."""

    metrics: pd.DataFrame        # SURVIVAL_COLUMNS, one row per metric
    km: pd.DataFrame             # KM_COLUMNS: test-set KM tables by predicted-risk quartile
    ph_check: pd.DataFrame       # PH_COLUMNS: Schoenfeld-residual test per train covariate
    coefficients: pd.DataFrame   # COEF_COLUMNS: the penalised train fit, per SD of each input
    predictions: pd.DataFrame    # PREDICTION_COLUMNS: test subjects sorted by subject_id
    indices: np.ndarray | None   # (n_boot, n_test) bootstrap rows of ``predictions``
    design: ColumnTransformer | None = field(default=None, repr=False)  # fitted on train only


def horizon_labels(time_years: np.ndarray | Sequence[float],
                   event: np.ndarray | Sequence[float], horizon_years: float) -> np.ndarray:
    """Binary status at a fixed horizon, for a simple AUROC at that horizon.

    1 (case): event at or before the horizon; 0 (control): time beyond the horizon (event-free
    at the horizon, whatever happened later); NaN (excluded): censored at or before the
    horizon (status unknown). This drops early-censored subjects rather than reweighting them
    (no inverse-probability-of-censoring weights), so with heavy or risk-dependent early
    censoring the estimate is biased; it is exact without censoring before the horizon.
    """
    t = np.asarray(time_years, dtype=float)
    e = np.asarray(event, dtype=float)
    out = np.full(t.shape, np.nan)
    out[(e == 1) & (t <= horizon_years)] = 1.0
    out[t > horizon_years] = 0.0
    return out


def _survival_frame(features: pd.DataFrame, table: pd.DataFrame, condition: str,
                    covariates: Sequence[str]) -> pd.DataFrame:
    """The incident cohort (non-NaN ``<c>_event``) with columns ``time``, ``event``."""
    _check_condition(condition)
    ev, tm = f"{condition}_event", f"{condition}_time_years"
    frame = _joined(features, table, [ev, tm, *covariates])
    _check_binary(frame, ev)
    frame = frame[frame[ev].notna()].rename(columns={ev: "event", tm: "time"})
    bad = ~np.isfinite(frame["time"].to_numpy(dtype=float)) | (frame["time"] < 0)
    if bad.any():
        raise DataError(f"{tm} must be a finite time >= 0 wherever {ev} is 0/1",
                        subject=str(frame.loc[bad, "subject_id"].iloc[0]),
                        expected="years from imaging to event/censoring",
                        found=str(frame.loc[bad, "time"].iloc[0]))
    frame["event"] = frame["event"].astype(int)
    return frame.reset_index(drop=True)


def _design(columns: Sequence[str], covariates: Sequence[str], k: int) -> ColumnTransformer:
    """Features → median-impute → standardise → PCA(k) → standardise; covariates →
    median-impute → standardise. Every step is fitted by the caller on train rows only, so
    each design column (``pc01..``, then covariates) has SD 1 in train: Cox coefficients are
    log-hazard ratios per training SD."""
    parts = []
    if k > 0:
        parts.append(("ecg", Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=k, svd_solver="full")),
            ("rescale", StandardScaler()),
        ]), list(columns)))
    if covariates:
        parts.append(("cov", make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()),
            list(covariates)))
    return ColumnTransformer(parts, remainder="drop")


def _metric_rows(meta: dict, rows: list[tuple]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n",
                                      "n_events", "note"])
    for i, (key, value) in enumerate(meta.items()):
        out.insert(i, key, value)
    return out[list(SURVIVAL_COLUMNS)]


def _nan_row(metric: str, n: int, n_events: int, note: str) -> tuple:
    return (metric, math.nan, math.nan, math.nan, n, n_events, note)


@one_thread()
def cox_survival(features: pd.DataFrame, table: pd.DataFrame, condition: str, *,
                 n_components: int = 10, covariates: Sequence[str] = (),
                 penalizer: float = 0.1, horizon_years: float = 5.0, n_boot: int = 200,
                 seed: int = 0, min_train_events: int = MIN_TRAIN_EVENTS,
                 min_test_events: int = MIN_TEST_EVENTS) -> SurvivalResult:
    """Incident ``condition`` from frozen features: penalised Cox PH on train, scored on test.

    Cohort: subjects with a non-NaN ``<c>_event`` (prevalent cases are not at risk). Inputs:
    the first ``n_components`` principal components of the features (imputation, scaling and
    PCA fitted on the training rows of the cohort only; ``n_components=0`` gives a
    covariates-only baseline) plus optional ``covariates`` (e.g. ``("age_years", "sex")``),
    each standardised with training statistics. The validation split is not used.

    Model: ``lifelines.CoxPHFitter(penalizer=penalizer)`` (L2 penalty
    ``½·penalizer·‖β‖²``, Efron ties) on the training rows; risk score = linear predictor Xβ.

    Test-set metrics (rows of ``metrics``):

    - ``c_index``: Harrell's C of the risk score (module docstring for ties) with a 95 %
      percentile bootstrap CI over test subjects (``indices``);
    - ``auroc_<h>y``: AUROC of the risk score for the status at ``horizon_years``
      (:func:`horizon_labels`: censored-before-horizon excluded), same bootstrap;
    - ``hr_per_sd``: hazard ratio per SD of the test-set risk score (univariable, unpenalised
      Cox on the standardised score) with its Wald 95 % CI;
    - ``logrank_chi2`` / ``logrank_p``: multivariate log-rank test across risk quartiles (3 df);
    - ``c_index_train``: apparent C on the training rows (no CI; compare for overfitting).

    ``km`` holds the Kaplan–Meier table of each test-set risk quartile (Q1 lowest risk; equal
    groups by rank, ties in risk broken by subject order) with pointwise 95 % CIs;
    ``ph_check`` the scaled Schoenfeld-residual test (rank time transform) of each input of
    the training fit (small p: that input's hazard ratio drifts over follow-up).

    Few events never raise: with fewer than ``min_train_events`` training events nothing is
    fitted and every metric is NaN with a ``note``; with fewer than ``min_test_events`` test
    events the test metrics are NaN with a note (the fit, its coefficients and PH check and the
    KM tables are still returned).

    Returns:
        :class:`SurvivalResult`.
    """
    if n_components < 0 or penalizer < 0 or horizon_years <= 0:
        raise ValueError("n_components >= 0, penalizer >= 0 and horizon_years > 0 needed")
    if n_components == 0 and not covariates:
        raise ValueError("cox_survival: nothing to fit (n_components=0 and no covariates)")
    cols = feature_columns(features)
    frame = _survival_frame(features, table, condition, covariates)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    k = min(n_components, len(cols), max(len(train) - 1, 0))
    meta = {"condition": condition, "covariates": "+".join(covariates) or "none",
            "n_components": k}
    n_tr, e_tr = len(train), int(train["event"].sum())
    n_te, e_te = len(test), int(test["event"].sum())
    test_metrics = ("c_index", f"auroc_{horizon_years:g}y", "hr_per_sd", "logrank_chi2",
                    "logrank_p")

    if e_tr < min_train_events:
        note = f"only {e_tr} training events (at least {min_train_events} needed)"
        rows = [_nan_row(m, n_te, e_te, note) for m in test_metrics]
        rows.append(_nan_row("c_index_train", n_tr, e_tr, note))
        return _empty_result(condition, _metric_rows(meta, rows))

    design = _design(cols, covariates, k).fit(train)
    names = [f"pc{i + 1:02d}" for i in range(k)] + list(covariates)
    x_tr = pd.DataFrame(design.transform(train), columns=names)
    x_te = pd.DataFrame(design.transform(test) if n_te else np.empty((0, len(names))),
                        columns=names)
    # a constant training column (e.g. one sex only) carries nothing and stalls Newton steps
    names = [c for c in names if x_tr[c].std() > CONSTANT_SD]
    if not names:
        note = "every input column is constant in the training rows"
        rows = [_nan_row(m, n_te, e_te, note) for m in (*test_metrics, "c_index_train")]
        return _empty_result(condition, _metric_rows(meta, rows), design)
    fit_df = x_tr[names].assign(time=train["time"].to_numpy(), event=train["event"].to_numpy())
    try:
        cph = CoxPHFitter(penalizer=penalizer).fit(fit_df, "time", "event")
    except ConvergenceError as err:
        note = f"Cox fit did not converge: {str(err).splitlines()[0]}"
        rows = [_nan_row(m, n_te, e_te, note) for m in (*test_metrics, "c_index_train")]
        return _empty_result(condition, _metric_rows(meta, rows), design)

    beta = cph.params_[names].to_numpy()
    risk_tr = x_tr[names].to_numpy() @ beta
    risk_te = x_te[names].to_numpy() @ beta                          # (n_test,) log-hazard
    rows = [("c_index_train", c_index(train["time"], train["event"], risk_tr), math.nan,
             math.nan, n_tr, e_tr, "")]

    preds = pd.DataFrame({"subject_id": test["subject_id"].to_numpy(),
                          "time_years": test["time"].to_numpy(dtype=float),
                          "event": test["event"].to_numpy(), "risk": risk_te})
    sd = float(np.std(risk_te)) if n_te else 0.0
    preds["risk_sd"] = (risk_te - risk_te.mean()) / sd if sd > 0 else np.nan
    preds["quartile"] = _risk_groups(risk_te) if n_te >= N_RISK_GROUPS else np.nan
    km = _km_tables(condition, preds) if n_te >= N_RISK_GROUPS else _empty(KM_COLUMNS)

    indices = None
    if e_te < min_test_events:
        note = f"only {e_te} test events (at least {min_test_events} needed)"
        rows += [_nan_row(m, n_te, e_te, note) for m in test_metrics]
    else:
        indices = bootstrap_indices(n_te, n_boot, seed)
        rows += _test_metrics(preds, indices, horizon_years, sd)
    return SurvivalResult(
        metrics=_metric_rows(meta, rows), km=km, ph_check=_ph_check(condition, cph, fit_df),
        coefficients=_coefficients(condition, cph, names), predictions=preds[
            list(PREDICTION_COLUMNS)], indices=indices, design=design)


#: Event subjects compared with everyone at once by :func:`c_index` (bounds its memory to
#: this many rows × n booleans).
C_INDEX_CHUNK = 1024


def c_index(time: np.ndarray | Sequence[float], event: np.ndarray | Sequence[float],
            risk: np.ndarray | Sequence[float]) -> float:
    """Harrell's C of a risk score (higher risk = earlier event expected), ties as in the
    module docstring; NaN without a comparable pair (e.g. no event).

    The pairs are counted with array comparisons, each event subject against all subjects:
    lifelines' ``concordance_index`` gives the same counts (a test checks it) but walks the
    subjects in Python, and the bootstrap of a Cox model calls this ~200 times per condition
    (2 ms each there, a few hundredths of that here at the teaching test size).

    Args:
        time: (n,) years to event or censoring.
        event: (n,) 1 event, 0 censored.
        risk: (n,) risk score (e.g. the Cox linear predictor).
    """
    t = np.asarray(time, dtype=float)
    died = np.asarray(event, dtype=float) == 1
    r = np.asarray(risk, dtype=float)
    concordant = tied = pairs = 0
    for first in range(0, int(died.sum()), C_INDEX_CHUNK):
        rows = np.flatnonzero(died)[first:first + C_INDEX_CHUNK, None]      # (k, 1)
        # i (an event) before j, or at j's time with j censored: j outlived i
        comparable = (t[rows] < t) | ((t[rows] == t) & ~died)              # (k, n)
        pairs += int(comparable.sum())
        concordant += int((comparable & (r[rows] > r)).sum())
        tied += int((comparable & (r[rows] == r)).sum())
    return (concordant + tied / 2) / pairs if pairs else math.nan


def _risk_groups(risk: np.ndarray) -> np.ndarray:
    """1..4 quartile of each risk (Q1 lowest), equal groups by rank (ties by position)."""
    order = np.argsort(risk, kind="stable")
    ranks = np.empty(risk.size, dtype=int)
    ranks[order] = np.arange(risk.size)
    return 1 + (N_RISK_GROUPS * ranks) // risk.size


def _test_metrics(preds: pd.DataFrame, idx: np.ndarray, horizon: float, sd: float) -> list:
    """Rows c_index, auroc_<h>y, hr_per_sd, logrank_chi2, logrank_p for the test split."""
    t = preds["time_years"].to_numpy()
    e = preds["event"].to_numpy()
    r = preds["risk"].to_numpy()
    n, n_ev = len(preds), int(e.sum())
    c_boot = np.array([c_index(t[i], e[i], r[i]) for i in idx])
    rows = [("c_index", c_index(t, e, r), *percentile_ci(c_boot), n, n_ev, "")]

    status = horizon_labels(t, e, horizon)
    known = np.isfinite(status)

    def horizon_auc(i: np.ndarray) -> float:
        keep = known[i]
        return auroc(status[i][keep], r[i][keep])

    a_boot = np.array([horizon_auc(i) for i in idx])
    n_cases = int(np.nansum(status))
    note = "" if 0 < n_cases < int(known.sum()) else "no case or no control at the horizon"
    rows.append((f"auroc_{horizon:g}y", horizon_auc(np.arange(n)), *percentile_ci(a_boot),
                 int(known.sum()), n_cases, note))

    rows.append(_hr_per_sd(preds, sd))
    if preds["quartile"].notna().all():
        lr = multivariate_logrank_test(t, preds["quartile"].to_numpy(), e)
        rows.append(("logrank_chi2", float(lr.test_statistic), math.nan, math.nan, n, n_ev,
                     f"{N_RISK_GROUPS - 1} df"))
        rows.append(("logrank_p", float(lr.p_value), math.nan, math.nan, n, n_ev, ""))
    else:
        rows += [_nan_row(m, n, n_ev, "fewer test subjects than risk groups")
                 for m in ("logrank_chi2", "logrank_p")]
    return rows


def _hr_per_sd(preds: pd.DataFrame, sd: float) -> tuple:
    """Univariable, unpenalised Cox on the standardised test risk score: HR per SD, Wald CI."""
    n, n_ev = len(preds), int(preds["event"].sum())
    if not sd > 0:
        return _nan_row("hr_per_sd", n, n_ev, "constant risk score")
    df = pd.DataFrame({"z": preds["risk_sd"], "time": preds["time_years"],
                       "event": preds["event"]})
    try:
        uni = CoxPHFitter().fit(df, "time", "event")
    except ConvergenceError:
        return _nan_row("hr_per_sd", n, n_ev, "univariable Cox did not converge")
    ci = np.exp(uni.confidence_intervals_.loc["z"].to_numpy())
    return ("hr_per_sd", float(np.exp(uni.params_["z"])), float(ci[0]), float(ci[1]), n, n_ev,
            "")


def _km_tables(condition: str, preds: pd.DataFrame) -> pd.DataFrame:
    """Kaplan–Meier table (with at-risk numbers and pointwise 95 % CIs) per risk quartile."""
    parts = []
    for q in range(1, N_RISK_GROUPS + 1):
        g = preds[preds["quartile"] == q]
        kmf = KaplanMeierFitter(alpha=1 - CI_LEVEL).fit(g["time_years"], g["event"])
        table = kmf.event_table
        ci = kmf.confidence_interval_.to_numpy()
        parts.append(pd.DataFrame({
            "condition": condition, "quartile": q,
            "time_years": kmf.survival_function_.index.to_numpy(dtype=float),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(),
            "ci_low": ci[:, 0], "ci_high": ci[:, 1],
            "at_risk": table["at_risk"].to_numpy(), "events": table["observed"].to_numpy(),
            "censored": table["censored"].to_numpy(),
        }))
    return pd.concat(parts, ignore_index=True)[list(KM_COLUMNS)]


def _ph_check(condition: str, cph: CoxPHFitter, fit_df: pd.DataFrame) -> pd.DataFrame:
    """Scaled Schoenfeld-residual test (rank of time) per input of the training fit."""
    try:
        summary = proportional_hazard_test(cph, fit_df, time_transform="rank").summary
    except (ValueError, np.linalg.LinAlgError) as err:
        return pd.DataFrame([(condition, "all", math.nan, math.nan, f"PH test failed: {err}")],
                            columns=list(PH_COLUMNS))
    return pd.DataFrame({
        "condition": condition, "covariate": [str(i) for i in summary.index],
        "test_statistic": summary["test_statistic"].to_numpy(dtype=float),
        "p": summary["p"].to_numpy(dtype=float), "note": "",
    })[list(PH_COLUMNS)]


def _coefficients(condition: str, cph: CoxPHFitter, names: list[str]) -> pd.DataFrame:
    """Log-HR per training SD of each input, with lifelines' (penalised-Hessian) Wald CI."""
    ci = cph.confidence_intervals_.loc[names].to_numpy()
    coef = cph.params_[names].to_numpy()
    return pd.DataFrame({
        "condition": condition, "covariate": names, "coef": coef,
        "se": cph.standard_errors_[names].to_numpy(), "hr": np.exp(coef),
        "hr_ci_low": np.exp(ci[:, 0]), "hr_ci_high": np.exp(ci[:, 1]),
    })[list(COEF_COLUMNS)]


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=list(columns))


def _empty_result(condition: str, metrics: pd.DataFrame,
                  design: ColumnTransformer | None = None) -> SurvivalResult:
    return SurvivalResult(metrics=metrics, km=_empty(KM_COLUMNS), ph_check=_empty(PH_COLUMNS),
                          coefficients=_empty(COEF_COLUMNS),
                          predictions=_empty(PREDICTION_COLUMNS), indices=None, design=design)


__all__ = [
    "BALANCED_COLUMNS", "KM_COLUMNS", "NATURAL_COLUMNS", "PH_COLUMNS", "SURVIVAL_COLUMNS",
    "HeadSettings", "NaturalPrevalenceResult", "SurvivalResult", "auroc", "average_precision",
    "balanced_classification", "balanced_sample", "c_index", "classification_metrics",
    "cox_survival", "horizon_labels", "natural_prevalence_metrics",
]
