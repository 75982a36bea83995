"""Per-subject cost of the synthetic cohort's parts and of the CMR loader.

    python benchmarks/synthesis.py [--profile teaching] [--n 40]

Prints the median time per subject of each step (hidden state, outcomes, CMR rendering at
ED+ES, ECG) and of loading one NIfTI volume onto the model grid, and writes
benchmarks/results/synthesis-<profile>.csv. Speed targets live here, not in the tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ecgcmr.config import get_profile
from ecgcmr.data.cmr import load_cmr
from ecgcmr.synth.cmr import render_cmr
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    spec = profile.cohort_spec()
    states = [sample_state(np.random.default_rng(i), f"B{i:05d}") for i in range(args.n)]
    rows = {
        "hidden state": _median_ms(lambda i: sample_state(np.random.default_rng(i), "x"), args.n),
        "outcomes": _median_ms(lambda i: sample_outcomes(states[i], np.random.default_rng(i)),
                               args.n),
        "CMR render (ED+ES)": _median_ms(
            lambda i: render_cmr(states[i], np.random.default_rng(i), spec.sax), args.n),
        "ECG (12 x 10 s)": _median_ms(
            lambda i: simulate_ecg(states[i], np.random.default_rng(i)), args.n),
    }
    cmr = render_cmr(states[0], np.random.default_rng(0), spec.sax)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ed.nii.gz"
        nib.save(nib.Nifti1Image(cmr.image_ed, cmr.affine), path)
        grid = profile.cache_spec().grid
        rows["load_cmr onto the grid"] = _median_ms(lambda i: load_cmr(path, grid), args.n)
    table = pd.DataFrame({"step": list(rows), "median_ms_per_subject": [round(v, 2) for v in
                                                                        rows.values()]})
    table["profile"] = args.profile
    print(table.to_string(index=False))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    table.to_csv(out / f"synthesis-{args.profile}.csv", index=False)


if __name__ == "__main__":
    main()
