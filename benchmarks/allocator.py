"""Notebook 02's forward pass with and without the notebook kernels' allocator settings
(``ecgcmr.runs.KERNEL_ALLOCATOR``), in processes side by side as the cells of a grid run.

Each process runs the profile's ViT (random weights: the cost is the same whatever the
weights) over batches of random ECGs at one thread, and reports its time per ECG and the
minor page faults it took (the allocator settings are about those). The processes of one
round start together; rounds alternate between the two settings, so a slow spell of a shared
machine hits both.

    python benchmarks/allocator.py [--processes 2] [--rounds 3] [--batches 10]
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import pandas as pd

BATCH = 64   # notebook 02's batch (ecgcmr.pretrain.embed_ecg)


def _forward(profile: str, batches: int) -> None:
    """The child: time ``batches`` forward passes, print ``ms_per_ecg page_faults``."""
    import torch

    from ecgcmr.config import get_profile
    from ecgcmr.pretrain import ecg_encoder_for

    torch.set_num_threads(1)
    encoder = ecg_encoder_for("random", seed=0, size=get_profile(profile).model_size).eval()
    x = torch.randn(BATCH, 12, 5000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoder(x)   # warm-up
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(batches):
            encoder(x)
        seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(f"{1000 * seconds / (batches * BATCH):.3f} {faults}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from common import save_table

    from ecgcmr.runs import KERNEL_ALLOCATOR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--processes", type=int, default=2, help="side by side, as grid cells")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting")
    parser.add_argument("--batches", type=int, default=10, help="timed batches of 64 ECGs")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _forward(args.profile, args.batches)
        return pd.DataFrame()
    base = {k: v for k, v in os.environ.items() if k not in KERNEL_ALLOCATOR}
    settings = {"default": base, "kernel allocator": {**base, **KERNEL_ALLOCATOR}}
    command = [sys.executable, __file__, "--child", "--profile", args.profile,
               "--batches", str(args.batches)]
    rows = []
    for round_ in range(args.rounds):
        for name, env in settings.items():
            children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
                        for _ in range(args.processes)]
            for i, child in enumerate(children):
                out, _ = child.communicate()
                ms, faults = out.split()
                rows.append({"setting": name, "round": round_, "process": i,
                             "ms_per_ecg": float(ms), "page_faults": int(faults)})
    table = pd.DataFrame(rows).assign(processes=args.processes, profile=args.profile)
    print(f"{args.processes} processes side by side, one thread each, batch {BATCH}, "
          f"{args.profile} ViT")
    print(table.groupby("setting")[["ms_per_ecg", "page_faults"]].agg(["mean", "min", "max"])
          .round(2).to_string())
    save_table(table, args.out, f"allocator-{args.profile}-p{args.processes}-cpu")
    return table


if __name__ == "__main__":
    main()
