"""What evaluating one encoder costs: the downstream heads of notebooks 03 and 04 per
embedding set, on one thread (as the package runs them) and on the machine's default threads.

The default comparison run evaluates every method × seed, so this cost is paid ~15 times.
Features are random (96 columns, one carrying LVEDV so the heads train for a while): the
heads' cost depends on the cohort's size and the feature width, not on what the features mean.

    python benchmarks/evaluation.py --cache data/cache/<teaching cache> [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from common import save_table

from ecgcmr.config import get_profile
from ecgcmr.constants import CONDITIONS, PAPER_PHENOTYPES, PHENOTYPES
from ecgcmr.data.cache import open_cache
from ecgcmr.evaluate import evaluate_predictions, linear_probes
from ecgcmr.evaluate import outcomes as oc
from ecgcmr.evaluate.phenotypes import mlp_head


def random_features(table: pd.DataFrame, width: int = 96, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    features = table[["subject_id", "split"]].reset_index(drop=True).assign(
        **{f"e{i:03d}": rng.normal(size=len(table)) for i in range(width)})
    lvedv = table["lvedv_ml"].to_numpy()
    features["e000"] += (lvedv - np.nanmean(lvedv)) / np.nanstd(lvedv)
    return features


def components(features: pd.DataFrame, table: pd.DataFrame, profile: str, one: bool
               ) -> dict[str, float]:
    """Seconds per part of one encoder's evaluation (notebook 03 without fine-tuning, 04)."""
    def plain(fn):  # noqa: ANN001, ANN202 - the function without its one-thread wrapper
        return fn if one else fn.__wrapped__

    covariates = get_profile(profile).outcome_covariates
    targets = [t for t in PHENOTYPES if t in table.columns]
    seconds = {}
    t0 = time.perf_counter()
    preds = linear_probes(features, table, targets)
    evaluate_predictions(preds, n_boot=1000)
    seconds["03 linear probes + bootstrap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain(mlp_head)(features, table, list(PAPER_PHENOTYPES))
    plain(mlp_head)(features, table, list(PAPER_PHENOTYPES),
                    covariates=[c for c in ("age_years", "sex") if c in table.columns])
    seconds["03 MLP heads (with and without covariates)"] = time.perf_counter() - t0
    saved = oc._mlp_scores
    oc._mlp_scores = plain(saved)
    try:
        t0 = time.perf_counter()
        for condition in CONDITIONS:
            oc.balanced_classification(features, table, condition, covariates=covariates)
            oc.natural_prevalence_metrics(features, table, condition, n_boot=200,
                                          covariates=covariates)
        seconds["04 classification heads"] = time.perf_counter() - t0
    finally:
        oc._mlp_scores = saved
    t0 = time.perf_counter()
    for condition in CONDITIONS:
        for cov in ((), ("age_years", "sex")):
            plain(oc.cox_survival)(features, table, condition, covariates=cov, n_boot=200)
    seconds["04 Cox models"] = time.perf_counter() - t0
    return seconds


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a preprocessed cache folder")
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    import torch

    table = open_cache(args.cache).rows()
    features = random_features(table)
    print(f"{len(table)} subjects, {features.shape[1] - 2} features; torch default "
          f"{torch.get_num_threads()} threads")
    rows = []
    for mode, one in (("one thread", True), ("default threads", False)):
        for part, s in components(features, table, args.profile, one).items():
            rows.append({"threads": mode, "part": part, "seconds": round(s, 2)})
    table_out = pd.DataFrame(rows)
    wide = table_out.pivot(index="part", columns="threads", values="seconds")
    wide.loc["total"] = wide.sum()
    print(wide.to_string())
    save_table(table_out, args.out, f"evaluation-{args.profile}-cpu")
    return table_out


if __name__ == "__main__":
    main()
