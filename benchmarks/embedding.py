"""What notebook 02 spends embedding a cohort's ECGs: ``embed_ecg`` over every subject of a
cache, and its two parts on their own (reading the cache, the encoder's forward pass).

Every cell of the comparison grid embeds the whole cohort with its own encoder, so this cost is
paid once per cell. The encoder is the profile's ViT with random weights (``method="random"``):
the forward pass costs the same whatever the weights are.

    python benchmarks/embedding.py --cache data/cache/<teaching cache> [--threads 1]
        [--batch-sizes 64,256] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from common import describe_device, save_table

from ecgcmr.config import get_profile
from ecgcmr.data.cache import open_cache
from ecgcmr.data.dataset import PairedDataset
from ecgcmr.pretrain import ecg_encoder_for, embed_ecg


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a preprocessed cache folder")
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a grid cell on 2 cores with 2 jobs gets 1)")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe_device(torch.device("cpu")))

    cache = open_cache(args.cache)
    encoder = ecg_encoder_for("random", seed=0, size=get_profile(args.profile).model_size,
                              ecg_kind="vit").eval()
    n_values = sum(p.numel() for p in encoder.parameters())
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        embedded = embed_ecg(encoder, cache, device="cpu", batch_size=batch_size)
        rows.append({"part": "embed_ecg", "batch_size": batch_size,
                     "seconds": time.perf_counter() - t0})
        loader = torch.utils.data.DataLoader(PairedDataset(cache, split=None, fields=("ecg",)),
                                             batch_size=batch_size, shuffle=False)
        t0 = time.perf_counter()
        batches = [ecg for (ecg,) in loader]
        rows.append({"part": "read the cache", "batch_size": batch_size,
                     "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        with torch.no_grad():
            for ecg in batches:
                encoder(ecg)
        rows.append({"part": "forward pass", "batch_size": batch_size,
                     "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows).assign(subjects=len(embedded), threads=args.threads,
                                      encoder_values=n_values)
    table["ms_per_ecg"] = 1000 * table["seconds"] / table["subjects"]
    print(f"{len(embedded)} ECGs, ViT of {n_values:,} values, {args.threads} thread(s)")
    print(table.round(2).to_string(index=False))
    save_table(table, args.out, f"embedding-{args.profile}-t{args.threads}-cpu")
    return table


if __name__ == "__main__":
    main()
