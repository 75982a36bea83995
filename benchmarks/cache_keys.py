"""What proving a cache matches costs: hashing every input file against preprocessing it.

The cache keys each subject by the sha256 of its input files' content (ecgcmr.data.cache), so
every ``build_cache`` reads every input once to hash it, even when all rows are reused. This
prints, per subject: the input size, the hashing time, a first build's time and a rerun's
(everything reused), on a generated cohort of ``--profile`` size.

    python benchmarks/cache_keys.py --profile teaching --n 200 --out benchmarks/measured
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd
from common import save_table

from ecgcmr.config import get_profile
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.data.cache import INPUT_COLUMNS, fingerprint, input_files
from ecgcmr.synth.cohort import cohort_spec, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="for the builds")
    parser.add_argument("--out", default=None, help="folder for the CSV (default: print only)")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    spec = profile.cache_spec()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_cohort(Path(tmp) / "cohort", cohort_spec(profile,
                                                                     seed=0, n_subjects=args.n), workers=args.workers, progress=False)
        df = read_manifest(manifest)
        records = df.to_dict("records")
        size = sum(f.stat().st_size for r in records for c in INPUT_COLUMNS
                   if isinstance(r.get(c), str) and r[c] for f in input_files(r, c))
        t0 = time.perf_counter()
        for record in records:
            fingerprint(record, spec)
        hashing = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_cache(df, Path(tmp) / "cache", spec, workers=args.workers, progress=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_cache(df, Path(tmp) / "cache", spec, workers=args.workers, progress=False)
        rerun = time.perf_counter() - t0
    n = len(records)
    table = pd.DataFrame([{
        "profile": args.profile, "subjects": n, "workers": args.workers,
        "input_mb_per_subject": round(size / n / 1e6, 3),
        "hash_ms_per_subject": round(1000 * hashing / n, 2),
        "first_build_ms_per_subject": round(1000 * first / n, 1),
        "rerun_ms_per_subject": round(1000 * rerun / n, 2),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": date.today().isoformat(),
    }])
    print(table.to_string(index=False))
    if args.out:
        print(save_table(table, args.out, f"cache-keys-{args.profile}-cpu-{date.today()}"))


if __name__ == "__main__":
    main()
