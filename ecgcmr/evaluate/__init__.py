"""Downstream evaluation of frozen ECG embeddings: phenotype regression, metrics, CIs."""

from ecgcmr.evaluate.phenotypes import (
    DEFAULT_ALPHAS,
    DEFAULT_FRACTIONS,
    LABEL_EFFICIENCY_COLUMNS,
    METRIC_COLUMNS,
    METRIC_FUNCTIONS,
    METRICS,
    MIN_TRAIN_LABELS,
    PREDICTION_COLUMNS,
    MlpResult,
    ProbeResult,
    bootstrap_ci,
    bootstrap_indices,
    classical_features,
    evaluate_predictions,
    feature_columns,
    finetune_head,
    label_efficiency,
    linear_probe,
    linear_probes,
    mean_absolute_error,
    mlp_head,
    nested_subsets,
    pearson_r,
    r2_score,
    regression_metrics,
    relative_improvement,
)

__all__ = [
    "DEFAULT_ALPHAS", "DEFAULT_FRACTIONS", "LABEL_EFFICIENCY_COLUMNS", "METRICS",
    "METRIC_COLUMNS", "METRIC_FUNCTIONS", "MIN_TRAIN_LABELS", "PREDICTION_COLUMNS",
    "MlpResult", "ProbeResult", "bootstrap_ci", "bootstrap_indices", "classical_features",
    "evaluate_predictions", "feature_columns", "finetune_head", "label_efficiency", "linear_probe",
    "linear_probes", "mean_absolute_error", "mlp_head", "nested_subsets", "pearson_r",
    "r2_score", "regression_metrics", "relative_improvement",
]
