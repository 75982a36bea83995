"""Preprocessing throughput: records/s of ``preprocess_subject`` and of its ECG and CMR parts.

    python benchmarks/preprocessing.py --profile tiny [--manifest M] [--n 24] [--workers 1,2]

Times, per record and in one process (= per worker), each part of
``ecgcmr.data.cache.preprocess_subject`` — the ECG chain (WFDB read + resample/QC, then the
filter chain) and the CMR chain (ED+ES NIfTI read into the canonical layout, heart centre,
resampling both onto the profile's grid) — and the whole function. Then the whole function
over a process pool for each ``--workers`` count (as ``build_cache(workers=...)`` runs it; pool
start-up included), as records/s in total and per worker. The files are read once before
timing, so they come from the page cache: this is CPU cost, not disk.

Input: ``--manifest`` of an existing cohort, else a tiny synthetic cohort of ``--n`` subjects
generated into a temporary folder (what ``ecgcmr synth --profile tiny --n 24`` writes).
Writes benchmarks/results/preprocessing-<profile>-cpu.csv (preprocessing never uses a GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import save_table  # sibling script

from ecgcmr.config import Profile, get_profile
from ecgcmr.data import read_manifest
from ecgcmr.data.cache import (
    CacheSpec,
    _heart_center,
    preprocess_subject,
)
from ecgcmr.data.cmr import load_cmr_canonical, to_grid
from ecgcmr.data.ecg import load_ecg, preprocess_ecg
from ecgcmr.parallel import limit_blas_threads, one_blas_thread
from ecgcmr.synth.cohort import cohort_spec, generate_cohort


def default_manifest(profile: Profile, n: int, out: Path) -> Path:
    """Generate a synthetic cohort of ``n`` subjects at ``profile`` into ``out``; its manifest."""
    print(f"generating a {n}-subject {profile.name} synthetic cohort in {out} ...", flush=True)
    return generate_cohort(out, cohort_spec(profile, n_subjects=n), workers=1, progress=False)


def describe_host() -> str:
    """The environment line every benchmark prints (preprocessing is CPU-only)."""
    return f"device: cpu | torch {torch.__version__} | {torch.get_num_threads()} threads"


# --------------------------------------------------------------------------- the parts
def _ecg_load(rec: dict, spec: CacheSpec) -> np.ndarray:
    return load_ecg(rec["ecg_path"])


def _ecg_chain(rec: dict, spec: CacheSpec) -> np.ndarray:
    return preprocess_ecg(load_ecg(rec["ecg_path"]), spec.ecg)


def _cmr_load(rec: dict, spec: CacheSpec) -> tuple:
    return load_cmr_canonical(rec["cmr_ed_path"]), load_cmr_canonical(rec["cmr_es_path"])


def _cmr_chain(rec: dict, spec: CacheSpec) -> tuple:
    ed, es = _cmr_load(rec, spec)
    center = _heart_center(rec, ed, es)
    return to_grid(ed, spec.grid, center_vox=center), to_grid(es, spec.grid, center_vox=center)


def _subject(rec: dict, spec: CacheSpec) -> tuple:
    result, problems = preprocess_subject(rec, spec)
    if problems:  # a benchmark over failing records would time the error path
        raise RuntimeError(f"{rec['subject_id']} failed QC: {problems}")
    return result


#: (row name, function of (record, spec)): the chains as preprocess_subject runs them.
PARTS: tuple[tuple[str, Callable], ...] = (
    ("ECG read (WFDB, QC, resample)", _ecg_load),
    ("ECG chain (read + filters)", _ecg_chain),
    ("CMR read ED+ES (canonical)", _cmr_load),
    ("CMR chain (read + centre + 2x to_grid)", _cmr_chain),
    ("preprocess_subject (ECG + CMR)", _subject),
)


def _row(part: str, workers: int, times: list[float] | None, n: int, wall: float
         ) -> dict[str, object]:
    per = float(np.median(times)) if times else wall * workers / n
    return {"part": part, "workers": workers, "records": n,
            "median_ms_per_record": round(1000 * per, 2),
            "records_per_s": round(n / wall, 2),
            "records_per_s_per_worker": round(n / wall / workers, 2)}


def _time_calls(fn: Callable, inputs: list, repeats: int) -> list[float]:
    """Seconds per call of ``fn(*args)`` for each argument tuple in ``inputs``."""
    times = []
    for _ in range(repeats):
        for args in inputs:
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return times


def step_rows(records: list[dict], spec: CacheSpec, repeats: int) -> list[dict[str, object]]:
    """The compute steps alone, on inputs loaded beforehand (no file reads in the timing)."""
    ecgs = [(load_ecg(r["ecg_path"]), spec.ecg) for r in records]
    vols = [(r, *_cmr_load(r, spec)) for r in records]
    centred = [(ed, es, _heart_center(r, ed, es)) for r, ed, es in vols]
    steps = (
        ("ECG filters only (preprocess_ecg)", preprocess_ecg, ecgs),
        ("CMR heart centre only (label read + centroid)", _heart_center, vols),
        ("CMR 2x to_grid only (resample + normalise)",
         lambda ed, es, c: (to_grid(ed, spec.grid, center_vox=c),
                            to_grid(es, spec.grid, center_vox=c)), centred),
    )
    rows = []
    for part, fn, inputs in steps:
        times = _time_calls(fn, inputs, repeats)
        rows.append(_row(part, 1, times, len(times), sum(times)))
    return rows


def serial_rows(records: list[dict], spec: CacheSpec, repeats: int) -> list[dict[str, object]]:
    """One process (= one worker): each chain, then its compute steps alone."""
    for fn in (_ecg_load, _cmr_load):  # warm the page cache: time CPU, not first disk reads
        fn(records[0], spec)
    rows = []
    for part, fn in PARTS:
        times = _time_calls(fn, [(r, spec) for r in records], repeats)
        rows.append(_row(part, 1, times, len(times), sum(times)))
    return rows + step_rows(records, spec, repeats)


def pool_row(records: list[dict], spec: CacheSpec, workers: int) -> dict[str, object]:
    """preprocess_subject over a process pool (as build_cache runs it), start-up included."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, initializer=limit_blas_threads) as pool:
        list(pool.map(_subject, records, [spec] * len(records), chunksize=4))
    return _row("preprocess_subject, process pool", workers, None, len(records),
                time.perf_counter() - t0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="tiny | teaching | paper (the grid)")
    parser.add_argument("--manifest", default=None, help="an existing cohort's manifest")
    parser.add_argument("--n", type=int, default=24, help="subjects to generate / to time")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the records")
    parser.add_argument("--workers", default="1,2", help="process-pool sizes, comma-separated")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    profile = get_profile(args.profile)
    spec = profile.cache_spec()
    print(describe_host())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest or default_manifest(profile, args.n, Path(tmp) / "cohort")
        records = read_manifest(manifest).head(args.n).to_dict("records")
        print(f"{len(records)} records from {manifest}; grid {spec.grid.shape} "
              f"at {spec.grid.spacing_mm} mm")
        with one_blas_thread():  # as build_cache runs: one BLAS thread per process
            rows = serial_rows(records, spec, args.repeats)
        rows += [pool_row(records, spec, int(w)) for w in args.workers.split(",")]
    table = pd.DataFrame(rows)
    table.insert(0, "profile", args.profile)
    print(table.to_string(index=False))
    save_table(table, args.out, f"preprocessing-{args.profile}-cpu")
    return table


if __name__ == "__main__":
    main()
