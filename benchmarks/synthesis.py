"""Per-subject cost of the synthetic cohort's parts and of the CMR loader.

    python benchmarks/synthesis.py [--profile teaching] [--n 40] [--out DIR]

Prints the median time per subject of each step (hidden state, outcomes, CMR rendering at
ED+ES, ECG, writing the WFDB record and the four NIfTI files, and one whole subject as
``ecgcmr synth`` makes it) and of loading one NIfTI volume onto the model grid, and writes
benchmarks/results/synthesis-<profile>.csv. One process with one BLAS thread, as each
``ecgcmr synth`` worker runs. Speed targets live here, not in the tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import save_table  # sibling script

from ecgcmr.config import get_profile
from ecgcmr.data.cmr import load_cmr
from ecgcmr.data.writers import write_nifti
from ecgcmr.parallel import one_blas_thread
from ecgcmr.synth.cmr import render_cmr
from ecgcmr.synth.cohort import _generate_one, _write_ecg, cohort_spec
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.outcomes import sample_outcomes
from ecgcmr.synth.physiology import sample_state


def _median_ms(fn, n: int) -> float:  # noqa: ANN001
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def _write_niftis(out: Path, cmr, i: int) -> None:  # noqa: ANN001
    for name, array in (("ed", cmr.image_ed), ("es", cmr.image_es), ("ed_seg", cmr.labels_ed),
                        ("es_seg", cmr.labels_es)):
        write_nifti(out, f"B{i:05d}_{name}.nii.gz", array, cmr.affine)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    spec = cohort_spec(profile, n_subjects=args.n)
    states = [sample_state(np.random.default_rng(i), f"B{i:05d}") for i in range(args.n)]
    with one_blas_thread(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cmrs = [render_cmr(s, np.random.default_rng(i), spec.sax) for i, s in enumerate(states)]
        ecgs = [simulate_ecg(s, np.random.default_rng(i)) for i, s in enumerate(states)]
        for sub in ("ecg", "cmr", "latent", ".rows"):
            (folder / sub).mkdir()
        rows = {
            "hidden state": _median_ms(lambda i: sample_state(np.random.default_rng(i), "x"),
                                       args.n),
            "outcomes": _median_ms(lambda i: sample_outcomes(states[i], np.random.default_rng(i)),
                                   args.n),
            "CMR render (ED+ES)": _median_ms(
                lambda i: render_cmr(states[i], np.random.default_rng(i), spec.sax), args.n),
            "ECG (12 x 10 s)": _median_ms(
                lambda i: simulate_ecg(states[i], np.random.default_rng(i)), args.n),
            "WFDB write": _median_ms(lambda i: _write_ecg(folder, f"B{i:05d}", ecgs[i]), args.n),
            "NIfTI write (ED, ES, 2 label maps)": _median_ms(
                lambda i: _write_niftis(folder, cmrs[i], i), args.n),
            "whole subject (as ecgcmr synth)": _median_ms(
                lambda i: _generate_one(folder, spec, i), args.n),
        }
        path = folder / "B00000_ed.nii.gz"
        grid = profile.cache_spec().grid
        rows["load_cmr onto the grid"] = _median_ms(lambda i: load_cmr(path, grid), args.n)
    table = pd.DataFrame({"step": list(rows), "median_ms_per_subject": [round(v, 2) for v in
                                                                        rows.values()]})
    table["profile"] = args.profile
    print(table.to_string(index=False))
    save_table(table, args.out, f"synthesis-{args.profile}")
    return table


if __name__ == "__main__":
    main()
