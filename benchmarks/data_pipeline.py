"""Data pipeline throughput: DataLoader over PairedDataset per stage vs the raw read ceiling.

    python benchmarks/data_pipeline.py --profile tiny [--cache DIR] [--workers 0,1,2]

Part 1, the ceiling: the raw read rate of the cache's memory-mapped float16 arrays — the
rows a stage reads (A: one CMR phase; B: ECG; C: ECG + ED + ES), copied out of the map in
sequential and in random order, as rows/s and MB/s (float16 bytes). Each order is read
twice: the *first* pass after evicting the files from the page cache
(``posix_fadvise(DONTNEED)``; done only for a cache this script built, or with ``--evict``)
and a *warm* pass. The ``resident_pct`` column is the share of the files' pages that were in
the page cache just before the pass (Linux ``mincore``), so the page-cache state is measured,
not assumed: a "first" pass with resident_pct 100 was not a disk read.

Part 2, the pipeline: samples/s delivered by ``torch.utils.data.DataLoader`` over
``PairedDataset`` with the stage's fields (A also reads its targets), the training sampler and
batch size, with and without the stage's augmentation (``StageConfig.augmentation()``: in
stage C the CMR is only flipped left-right, in stage A it gets intensity, noise and a shift; the
``cmr_augment`` column says which), for each ``num_workers`` (loader settings from
``ecgcmr.train.loader_options``, as ``fit`` uses: an augmented dataset gets fresh workers each
epoch, whose start-up counts in the rate; the first batch is timed separately and excluded).
On CUDA batches are pinned (``pin_memory=True``) and copied to the device. The rate is
compared with the warm random-order ceiling of the same fields.

Input: ``--cache`` (an existing cache, e.g. data/cache/<name>), else a tiny cache built from
``--manifest`` or from a synthetic cohort of ``--n`` subjects in a temporary folder.
Writes benchmarks/results/data_pipeline-<profile>-<cpu|gpu>.csv (pipeline) and
data_pipeline_raw-<profile>-<cpu|gpu>.csv (ceiling).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import describe_device, device_label, save_table  # sibling script
from torch.utils.data import DataLoader

from ecgcmr.config import Profile, get_profile
from ecgcmr.data import build_cache, open_cache, read_manifest
from ecgcmr.data.dataset import PairedDataset
from ecgcmr.train import EpochSampler, loader_options, pick_device

#: stage -> its name in the issue; the fields come from the stage's config (see stage_fields)
STAGES = {"cmr": "A", "ecg": "B", "align": "C"}


def stage_fields(stage: str, profile: Profile) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(dataset fields, target columns) the stage's Task reads (ecgcmr.train)."""
    cfg = profile.stage_config(stage)
    if stage == "cmr":
        return (f"cmr_{cfg.phase}",), tuple(cfg.targets)
    if stage == "ecg":
        return ("ecg",), ()
    return ("ecg", "cmr_ed", "cmr_es"), ()


# --------------------------------------------------------------------------- page cache
def resident_fraction(path: Path) -> float | None:
    """Share of ``path``'s pages in the page cache (Linux/BSD ``mincore``); None if unknown."""
    size = path.stat().st_size
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = np.frombuffer(mm, np.uint8)          # only to get the mapping's address
        rc = mincore(ctypes.c_void_p(view.ctypes.data), size, vec)
        del view                                    # release the buffer before the map closes
    if rc != 0:
        return None
    return float((np.frombuffer(vec, np.uint8) & 1).mean())


def evict(path: Path) -> None:
    """Drop ``path``'s clean pages from the page cache (this file only; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a freshly built cache) cannot be dropped until written
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- raw read ceiling
def _read_pass(root: Path, fields: tuple[str, ...], order: np.ndarray, min_rows: int,
               min_s: float) -> tuple[int, int, float]:
    """Copy rows of freshly mapped arrays: (rows, bytes, seconds); whole passes over ``order``
    until at least ``min_rows`` rows and ``min_s`` seconds (a short timing is all noise)."""
    # a new map per pass: pages mapped by an earlier pass would survive the eviction
    arrays = [getattr(open_cache(root), f) for f in fields]
    rows = nbytes = 0
    t0 = time.perf_counter()
    while rows < min_rows or time.perf_counter() - t0 < min_s:
        for r in order:
            for a in arrays:
                nbytes += np.array(a[r]).nbytes    # the copy forces the page reads
            rows += 1
    return rows, nbytes, time.perf_counter() - t0


def raw_read_rows(root: Path, stage: str, fields: tuple[str, ...], rows: np.ndarray,
                  can_evict: bool, min_rows: int) -> list[dict[str, object]]:
    """Sequential and random-order reads of the stage's rows: a first and a warm pass each."""
    files = [root / f"{f}.bin" for f in fields]
    out = []
    for order_name, order in (("sequential", np.sort(rows)),
                              ("random", np.random.default_rng(0).permutation(rows))):
        if can_evict:
            for f in files:
                evict(f)
        # the first pass reads each row once (only once can it be cold); the warm one repeats
        for pass_name, at_least, min_s in (("first", 1, 0.0), ("warm", min_rows, 0.25)):
            resident = [resident_fraction(f) for f in files]
            n, nbytes, sec = _read_pass(root, fields, order, at_least, min_s)
            out.append({"stage": f"{STAGES[stage]} {stage}", "fields": "+".join(fields),
                        "order": order_name, "pass": pass_name,
                        "evicted_before": can_evict and pass_name == "first",
                        "resident_pct": None if None in resident
                        else round(100 * float(np.mean(resident)), 1),
                        "rows": n, "MB": round(nbytes / 1e6, 2), "seconds": round(sec, 4),
                        "rows_per_s": round(n / sec, 1), "MB_per_s": round(nbytes / 1e6 / sec, 1)})
    return out


# --------------------------------------------------------------------------- the pipeline
def pipeline_row(cache, stage: str, profile: Profile, augment: bool, workers: int,  # noqa: ANN001
                 batch: int, samples: int, dev: torch.device) -> dict[str, object]:
    """Samples/s a training-style DataLoader delivers (to the device on CUDA)."""
    fields, targets = stage_fields(stage, profile)
    transform = profile.stage_config(stage).augmentation() if augment else None
    ds = PairedDataset(cache, None, augment=transform, targets=targets, fields=fields)
    sampler = EpochSampler(len(ds), 0, batch_size=batch)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True,
                        **loader_options(ds, workers, dev))            # as fit() builds it
    t0 = time.perf_counter()
    first = start = None
    n = 0
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        for b in loader:
            b = [x.to(dev, non_blocking=True) for x in b]
            if first is None:                      # worker start-up + first batch
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                first = start - t0
                continue
            n += len(b[0])
            if n >= samples:
                break
        if n >= samples:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec = time.perf_counter() - start
    del loader                                     # shuts persistent workers down
    return {"stage": f"{STAGES[stage]} {stage}", "fields": "+".join(fields),
            "targets": len(targets), "augment": augment,
            "cmr_augment": transform.cmr_augment if transform and stage != "ecg" else "-",
            "num_workers": workers,
            "pin_memory": dev.type == "cuda", "batch": batch, "samples": n,
            "first_batch_s": round(first, 3), "samples_per_s": round(n / sec, 1)}


# --------------------------------------------------------------------------- inputs
def ensure_cache(args: argparse.Namespace, profile: Profile, tmp: Path) -> tuple[Path, bool]:
    """The cache to read and whether this script built it (then it may evict its pages)."""
    if args.cache:
        return Path(args.cache), args.evict
    if args.manifest:
        manifest = args.manifest
    else:
        from preprocessing import default_manifest  # sibling script (benchmarks/ on sys.path)

        manifest = default_manifest(profile, args.n, tmp / "cohort")
    print(f"building a {profile.name} cache of {manifest} in {tmp / 'cache'} ...", flush=True)
    build_cache(read_manifest(manifest).head(args.n), tmp / "cache", profile.cache_spec(),
                progress=False)
    return tmp / "cache", True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="tiny | teaching | paper")
    parser.add_argument("--cache", default=None, help="an existing preprocessing cache")
    parser.add_argument("--manifest", default=None, help="build the cache from this cohort")
    parser.add_argument("--n", type=int, default=24, help="subjects when building a cache")
    parser.add_argument("--stages", default="cmr,ecg,align", help="comma-separated")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader num_workers values")
    parser.add_argument("--augment", default="off,on", help="off, on or off,on")
    parser.add_argument("--samples", type=int, default=256, help="timed samples per setting")
    parser.add_argument("--batch", type=int, default=0, help="0: the profile's batch size")
    parser.add_argument("--evict", action="store_true",
                        help="evict an existing --cache's files from the page cache for the "
                             "first-read pass (this file's pages only)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads of the main process (0: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def _compare(pipe: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """Adds the warm random-order ceiling of each stage and the pipeline's share of it."""
    warm = raw[(raw["order"] == "random") & (raw["pass"] == "warm")]
    ceiling = dict(zip(warm["stage"], warm["rows_per_s"], strict=True))
    pipe["ceiling_rows_per_s"] = pipe["stage"].map(ceiling)
    pipe["pct_of_ceiling"] = (100 * pipe["samples_per_s"] / pipe["ceiling_rows_per_s"]).round(1)
    return pipe


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    args = parse_args(argv)
    profile = get_profile(args.profile)
    dev = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_device(dev))
    stages = args.stages.split(",")
    batch = args.batch or profile.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root, can_evict = ensure_cache(args, profile, Path(tmp))
        cache = open_cache(root)
        rows = cache.rows()["row"].to_numpy()
        print(f"cache {root}: {len(rows)} subjects; ecg {cache.ecg.shape[1:]}, "
              f"cmr {cache.cmr_ed.shape[1:]} {cache.ecg.dtype}; page-cache eviction for the "
              f"first pass: {'yes' if can_evict else 'no (pass --evict)'}")
        raw = pd.DataFrame([r for s in stages for r in raw_read_rows(
            root, s, stage_fields(s, profile)[0], rows, can_evict, args.samples)])
        pipe = pd.DataFrame([
            pipeline_row(cache, s, profile, aug == "on", int(w), batch, args.samples, dev)
            for s in stages for aug in args.augment.split(",") for w in args.workers.split(",")])
    pipe = _compare(pipe, raw)
    for table in (raw, pipe):
        table.insert(1, "profile", args.profile)
    print("\nraw read ceiling (memory-mapped float16 rows)\n" + raw.to_string(index=False))
    print("\nDataLoader over PairedDataset (float32 tensors)\n" + pipe.to_string(index=False))
    save_table(pipe, args.out, f"data_pipeline-{args.profile}-{device_label(dev)}")
    save_table(raw, args.out, f"data_pipeline_raw-{args.profile}-{device_label(dev)}")
    return pipe, raw


if __name__ == "__main__":
    main()
