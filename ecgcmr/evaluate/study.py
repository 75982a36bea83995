"""The evaluation a run performs, in one call per notebook, with tidy outputs.

Every metric table is tidy: one row per (method, seed, model, target, metric) with ``value``,
``ci_low``, ``ci_high`` and ``n``, so tables from many runs concatenate and
``ecgcmr.runs.summarise_grid`` can average them over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.constants import COVARIATES, PAPER_PHENOTYPES, PHENOTYPES
from ecgcmr.data.cache import Cache
from ecgcmr.data.ecg import load_ecg
from ecgcmr.errors import DataError
from ecgcmr.evaluate.phenotypes import (
    classical_features,
    evaluate_predictions,
    finetune_head,
    linear_probes,
    mlp_head,
)
from ecgcmr.files import exclusive

if TYPE_CHECKING:
    from torch import nn


def read_embeddings(run_dir: str | Path) -> pd.DataFrame:
    """The frozen ECG embeddings notebook 02 wrote into a run folder."""
    path = Path(run_dir) / "embeddings" / "ecg.parquet"
    if not path.is_file():
        raise DataError("this run has no ECG embeddings yet; run notebook 02_pretraining "
                        "with the same run_dir first", path=path)
    return pd.read_parquet(path)


def classical_feature_table(cache: Cache, *, progress: bool = True) -> pd.DataFrame:
    """Standard ECG measurements (intervals, amplitudes, axis) of every subject that passed
    QC, measured on the raw mV signal; computed once per cache and kept beside it."""
    path = cache.root / "classical_features.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    # grid cells that start side by side wait for the one measuring instead of measuring too
    with exclusive(cache.root, name=".classical_features.lock"):
        if path.is_file():
            return pd.read_parquet(path)
        subjects = cache.rows().reset_index(drop=True)
        ecgs = [load_ecg(p, subject=s) for s, p in tqdm(
            zip(subjects["subject_id"], subjects["ecg_path"], strict=True),
            total=len(subjects), desc="ECG measurements", disable=not progress)]
        table = classical_features(ecgs, subjects[["subject_id", "split"]])
        table.to_parquet(path, index=False)
        return table


def phenotype_evaluation(
    features: pd.DataFrame,
    table: pd.DataFrame,
    *,
    method: str,
    seed: int,
    n_boot: int = 1000,
    mlp_epochs: int = 200,
    with_covariates: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Linear probes on every phenotype and the paper's MLP head on the paper's three.

    Models: ``probe`` (ridge, all phenotypes), ``mlp`` (the paper's head on LVEDV, LVESV,
    LVEF) and, with ``with_covariates``, ``mlp+covariates`` (the paper's fusion of age, sex,
    BMI, systolic BP, smoking and alcohol). Returns (tidy metrics, long test predictions),
    both with ``method``, ``seed`` and ``model`` columns.
    """
    targets = [t for t in PHENOTYPES if t in table.columns]
    paper = [t for t in PAPER_PHENOTYPES if t in table.columns]
    runs = {"probe": linear_probes(features, table, targets, seed=seed)}
    runs["mlp"] = mlp_head(features, table, paper, seed=seed, epochs=mlp_epochs).predictions
    covariates = [c for c in COVARIATES if c in table.columns]
    if with_covariates and covariates:
        runs["mlp+covariates"] = mlp_head(features, table, paper, covariates=covariates,
                                          seed=seed, epochs=mlp_epochs).predictions
    metrics, predictions = [], []
    for model, preds in runs.items():
        scored = evaluate_predictions(preds, n_boot=n_boot, seed=seed)
        metrics.append(scored.assign(model=model))
        predictions.append(preds.assign(model=model))
    return tag_run(pd.concat(metrics), method, seed), tag_run(pd.concat(predictions), method, seed)


def finetuned_evaluation(encoder: nn.Module, cache: Cache, table: pd.DataFrame, *,
                         method: str, seed: int, n_boot: int = 1000, epochs: int = 10,
                         device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's head on LVEDV, LVESV, LVEF with ``encoder`` fine-tuned (model
    ``mlp-finetuned``; a run's encoder: :func:`ecgcmr.pretrain.encoder_from_spec`, a
    checkpoint's: :func:`ecgcmr.predict.load_encoder`); same outputs as
    :func:`phenotype_evaluation`."""
    paper = [t for t in PAPER_PHENOTYPES if t in table.columns]
    preds = finetune_head(encoder, cache.ecg, cache.rows(), table, paper, epochs=epochs,
                          seed=seed, device=device).predictions
    scored = evaluate_predictions(preds, n_boot=n_boot, seed=seed).assign(model="mlp-finetuned")
    return (tag_run(scored, method, seed),
            tag_run(preds.assign(model="mlp-finetuned"), method, seed))


def tag_run(frame: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """Prefix ``method`` and ``seed`` columns (what makes tables of many runs concatenate)."""
    frame = frame.reset_index(drop=True)
    frame.insert(0, "seed", seed)
    frame.insert(0, "method", method)
    return frame


def relative_to(metrics: pd.DataFrame, reference: str = "dual", *,
                metric: str = "r2") -> pd.DataFrame:
    """The paper's "+x %": for each model × target, 100 · (reference − other) / |other| of the
    seed-averaged ``metric`` (higher is better), for every other method present."""
    mean = (metrics[metrics["metric"] == metric]
            .groupby(["model", "target", "method"])["value"].mean().unstack("method"))
    if reference not in mean.columns:
        return pd.DataFrame(columns=["model", "target", "versus", "relative_improvement_pct"])
    rows = []
    for other in (c for c in mean.columns if c != reference):
        ratio = 100 * (mean[reference] - mean[other]) / mean[other].abs()
        rows.append(ratio.rename("relative_improvement_pct").reset_index().assign(versus=other))
    out = pd.concat(rows, ignore_index=True)
    return out[["model", "target", "versus", "relative_improvement_pct"]].replace(
        [np.inf, -np.inf], np.nan)
