"""Information ceilings of the synthetic world: what an ECG can tell about each phenotype.

    python benchmarks/ceilings.py [--n 2000] [--seed 0] [--profile teaching] [--out FILE.csv]

Generates ``--n`` subjects of the profile's cohort (seed ``--seed``) without rendering the CMR
(``ecgcmr.synth.ceilings.generate_without_cmr``: the same subjects as ``ecgcmr synth``
writes; the profile only picks the cohort spec, the ECG and the latent state do not depend on
it), computes ``compute_ceilings`` (module docstring: what each column means), prints the table,
the timings (generation, measurements, fits) and the largest 95 % CI half-width, with the N
that would bring it to ``--target-half-width`` (half-widths shrink as 1/sqrt(N)), and writes
the table to ``--out`` (default benchmarks/results/ceilings-<profile>-n<N>.csv).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import pandas as pd

from ecgcmr.synth.ceilings import (
    CEILINGS,
    ci_half_widths,
    compute_ceilings,
    generate_without_cmr,
)
from ecgcmr.synth.cohort import cohort_spec


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="subjects (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (also CV/bootstrap)")
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--out", default=None, help="CSV file of the table")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="processes for the generation")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of the fits")
    parser.add_argument("--target-half-width", type=float, default=0.02)
    parser.add_argument("--systolic-coupling", type=float, default=1.0,
                        help="which world (ecgcmr.constants.DEFAULT_SYSTOLIC_COUPLING)")
    args = parser.parse_args(argv)
    spec = cohort_spec(args.profile, seed=args.seed, n_subjects=args.n,
                       systolic_coupling=args.systolic_coupling)
    print(f"cpu: {os.cpu_count()} cores | n={args.n} seed={args.seed} profile={args.profile} "
          f"folds={args.folds} n_boot={args.n_boot} workers={args.workers} "
          f"threads={args.threads}")

    t0 = time.perf_counter()
    inputs = generate_without_cmr(spec, workers=args.workers)
    generation_s = time.perf_counter() - t0
    # the calibration row: how well the ECG detects reduced EF (LVEF <= 35 %) in this world,
    # to set beside published ECG-based detection (e.g. AUROC 0.93 for a CNN on 12-lead ECGs:
    # Attia ZI et al., Nat Med 2019;25:70-74)
    outcomes = inputs.outcomes.assign(
        reduced_ef_le35=(inputs.state["lvef"].to_numpy() <= 0.35).astype(int))
    table = compute_ceilings(inputs.state, inputs.ecg_features, outcomes=outcomes,
                             folds=args.folds, seed=args.seed, n_boot=args.n_boot,
                             threads=args.threads, systolic_coupling=args.systolic_coupling)
    timings = {"generation + ECG measurements": generation_s,
               **{f"compute_ceilings: {k}": v for k, v in table.attrs["timings_s"].items()}}

    _print_table(table)
    print("\ntimings (s):")
    for name, seconds in timings.items():
        print(f"  {name:<38} {seconds:8.1f}")
    _print_sample_size(table, args.n, args.target_half_width)

    out = Path(args.out) if args.out else (Path(__file__).parent / "results"
                                           / f"ceilings-{args.profile}-n{args.n}"
                                           f"-coupling{args.systolic_coupling:g}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"\nwrote {out}")
    return table


def _print_table(table: pd.DataFrame) -> None:
    """Value [CI] per ceiling and target."""
    shown = pd.DataFrame({"target": table["target"], "metric": table["metric"],
                          "n_cases": table["n_cases"]})
    for c in CEILINGS:
        if table[c].notna().any():
            shown[c] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(v) else "-"
                        for v, lo, hi in zip(table[c], table[f"{c}_ci_low"],
                                             table[f"{c}_ci_high"], strict=True)]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(shown.to_string(index=False))


def _print_sample_size(table: pd.DataFrame, n: int, target: float) -> None:
    """The largest CI half-width over the phenotypes and the N that reaches ``target``."""
    widths = ci_half_widths(table[table["metric"] == "r2"]).drop(columns="cmr_measured")
    worst = float(widths.max().max())
    where = widths.stack().idxmax()
    needed = math.ceil(n * (worst / target) ** 2)
    print(f"\nlargest 95 % CI half-width over phenotypes: {worst:.4f} ({where[1]}, {where[0]}); "
          f"<= {target} needs N ~ {needed:,} (1/sqrt(N) scaling)")
    print("half-widths per phenotype (max over ceilings): "
          + ", ".join(f"{k} {v:.3f}" for k, v in widths.max(axis=1).items()))


if __name__ == "__main__":
    main()
