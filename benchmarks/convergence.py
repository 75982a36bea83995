"""Is a method's ECG encoder trained far enough that more training would not change the answer?

    python benchmarks/convergence.py --cache data/cache/<cohort>-<hash> --profile teaching \
        --method dual --seed 0 --epochs 30 --patience 5 [--ecg-epochs 40] [--out benchmarks/results]

Trains stage C (and the stages A and B it builds on, as the profile sets them, shared through
``<out>/models/``) with early stopping (``--patience`` epochs without a better validation
loss) for at most ``--epochs`` epochs (stage B for at most ``--ecg-epochs`` with the same
patience, when given; its own encoder's probes — the ``ecg_only`` method — are a row too), then again for at most twice as many (the warm-up and
the cosine schedule stretched with them: the profile's 40 % warm-up of the cap), embeds the cache with each encoder and fits the
linear probes of the paper's phenotypes (``--doubled-patience`` sets the doubled run's patience
apart, e.g. to its cap: the whole schedule). A recipe has converged when early stopping fired in
the first run and the probes' test R² moves by less than ``--tolerance`` (0.01) between the
two. Prints and writes one row per run: epochs allowed / run, the best epoch, whether early
stopping fired, the probe R² per phenotype; and the difference row.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from common import save_table  # sibling script

from ecgcmr.config import get_profile
from ecgcmr.constants import PAPER_PHENOTYPES
from ecgcmr.data.cache import open_cache
from ecgcmr.evaluate.phenotypes import linear_probes, r2_score
from ecgcmr.methods import get_method
from ecgcmr.pretrain import embed_ecg, load_ecg_encoder, train_stage
from ecgcmr.stages import stage_dir


def probe_r2(encoder_pt: Path, cache, seed: int) -> dict[str, float]:  # noqa: ANN001
    """Test-split R² of the linear probe of each paper phenotype on the encoder's embeddings."""
    features = embed_ecg(load_ecg_encoder(encoder_pt), cache, device="cpu")
    table = cache.rows()
    preds = linear_probes(features, table, list(PAPER_PHENOTYPES), seed=seed)
    return {f"r2_{t}": float(r2_score(g["y_true"].to_numpy(), g["y_pred"].to_numpy()))
            for t, g in preds.groupby("target")}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a preprocessed cache folder")
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--method", default="dual", help="an aligned method (stage C)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True, help="stage C's epoch cap")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--ecg-epochs", type=int, default=None,
                        help="stage B's epoch cap (default: the profile's, no early stopping)")
    parser.add_argument("--doubled-patience", type=int, default=None,
                        help="patience of the doubled run (default: --patience); its epoch "
                             "cap (2 x --epochs) trains the whole schedule")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    profile, cache, out = get_profile(args.profile), open_cache(args.cache), Path(args.out)
    method = get_method(args.method)
    if not method.aligned:
        raise SystemExit(f"--method must be an aligned method (stage C), not {args.method!r}")
    models = out / "convergence-models"
    init = {}
    for phase in method.phases:                     # stage A, as the profile trains it
        cfg = profile.stage_config("cmr", seed=args.seed, phase=phase)
        init[phase] = train_stage(cache, cfg, stage_dir(models, cfg), progress=False
                                  ).out_dir / "best.pt"
    cfg_b = profile.stage_config("ecg", seed=args.seed, epochs=args.ecg_epochs)  # stage B
    if args.ecg_epochs is not None:
        cfg_b = replace(cfg_b, optim=replace(cfg_b.optim, patience=args.patience))
    t0 = time.perf_counter()
    result_b = train_stage(cache, cfg_b, stage_dir(models, cfg_b), progress=False)
    init["ecg"] = result_b.out_dir / "best.pt"
    rows = [{"method": "ecg_only", "seed": args.seed, "stage": "B",
             "epochs_allowed": cfg_b.optim.epochs, "patience": cfg_b.optim.patience,
             "epochs_run": result_b.epochs_run, "best_epoch": result_b.best_epoch + 1,
             "stopped_early": result_b.stopped_early, "best_val_loss": result_b.best_val_loss,
             "train_s": round(time.perf_counter() - t0, 1),
             **probe_r2(init["ecg"], cache, args.seed)}]
    doubled_patience = args.patience if args.doubled_patience is None else args.doubled_patience
    for cap, patience in ((args.epochs, args.patience), (2 * args.epochs, doubled_patience)):
        cfg = profile.stage_config("align", seed=args.seed, method=args.method, epochs=cap)
        cfg = replace(cfg, optim=replace(cfg.optim, patience=patience))
        t0 = time.perf_counter()
        result = train_stage(cache, cfg, stage_dir(models, cfg), init=init, progress=False)
        rows.append({"method": args.method, "seed": args.seed, "stage": "C", "epochs_allowed": cap,
                     "patience": patience, "epochs_run": result.epochs_run,
                     "best_epoch": result.best_epoch + 1,
                     "stopped_early": result.stopped_early,
                     "best_val_loss": result.best_val_loss,
                     "train_s": round(time.perf_counter() - t0, 1),
                     **probe_r2(result.out_dir / "best.pt", cache, args.seed)})
    table = pd.DataFrame(rows)
    r2 = [c for c in table.columns if c.startswith("r2_")]
    diff = {"method": args.method, "seed": args.seed, "stage": "C", "epochs_allowed": "2x - 1x",
            **{c: table[c].iloc[2] - table[c].iloc[1] for c in r2}}
    table = pd.concat([table, pd.DataFrame([diff])], ignore_index=True)
    converged = bool(table["stopped_early"].iloc[1]) and all(
        abs(diff[c]) < args.tolerance for c in r2)
    print(table.to_string(index=False))
    print(f"converged (early stopping fired and |ΔR²| < {args.tolerance} for every "
          f"phenotype): {converged}")
    save_table(table, out, f"convergence-{args.profile}-{args.method}-seed{args.seed}"
                           f"-e{args.epochs}-p{args.patience}-p2x{doubled_patience}"
                           f"-b{cfg_b.optim.epochs}")
    return table


if __name__ == "__main__":
    main()
