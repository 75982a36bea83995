"""Peak memory: a training step of each stage, and building / iterating the cache at N subjects.

    python benchmarks/memory.py --profile tiny [--n 24,96] [--step-profiles tiny,teaching]

Every measurement runs in a fresh process (forked from a clean fork server that has only
imported torch and ecgcmr, or spawned where there is none), so each peak is that job's alone:

* a training step (forward, backward, AdamW) of each stage at a profile's batch size, random
  inputs: peak host RSS (``VmHWM`` on Linux, else ``resource.getrusage``) and, on CUDA,
  ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the steps;
* building the preprocessing cache of the first N subjects of a cohort (one process, as
  ``build_cache(workers=1)``), and iterating ``PairedDataset`` over N subjects through a
  ``DataLoader`` (all fields, augmentation on, ``num_workers=0`` so every byte is counted here).

The cache is memory-mapped, so touching N subjects' rows maps N rows of file pages: the RSS
then grows with N by the *file-backed* part (clean page-cache pages, shared and reclaimable),
while the process's own *anonymous* memory should not. On Linux the script therefore samples
``RssAnon`` and ``RssFile`` from /proc/self/status (every 5 ms in a thread) besides the total
peak; elsewhere only the total peak is reported (psutil, if installed, gives the baseline).
``--stand-in`` scales the cache rows to cohort sizes that real preprocessing would take hours
to reach on a laptop (``--n 1000,4000,16000``): the manifest repeats a small cohort's subjects
under new ids and ``preprocess_subject`` is replaced by a stand-in that returns arrays of the
grid's shape, so those rows measure the cache builder's own memory (manifest, status,
memory-mapped writes, checkpoints, index) and the dataset's, not preprocessing's (which the
real rows measure per subject). The rows say ``stand-in``.
Writes benchmarks/results/memory-<profile>-<cpu|gpu>.csv.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from common import describe_device, device_label, save_table  # sibling script

STATUS = Path("/proc/self/status")
STAGES = {"cmr": "A", "ecg": "B", "align": "C"}


# --------------------------------------------------------------------------- memory probes
def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, MB.

    Linux: ``VmHWM`` of /proc/self/status — the high-water mark of this process's own address
    space. ``getrusage``'s ``ru_maxrss`` is the fallback elsewhere; on Linux it is avoided
    because it carries over an exec'ed parent's peak (it would count the launcher's memory).
    """
    if STATUS.is_file():
        return rss_now_mb().get("VmHWM")
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB


def rss_now_mb() -> dict[str, float]:
    """Current RSS, MB, split into anonymous / file-backed where the OS tells (Linux)."""
    if STATUS.is_file():
        fields = dict(line.split(":", 1) for line in STATUS.read_text().splitlines())
        return {k: int(fields[k].split()[0]) / 2**10
                for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile") if k in fields}
    if importlib.util.find_spec("psutil"):  # optional: not a dependency of the project
        import psutil

        return {"VmRSS": psutil.Process().memory_info().rss / 2**20}
    return {}


class PeakSampler:
    """Polls :func:`rss_now_mb` in a thread and keeps each value's maximum."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s, self.peak = every_s, rss_now_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        for k, v in rss_now_mb().items():
            self.peak[k] = max(self.peak.get(k, 0.0), v)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _result(what: str, baseline: dict[str, float], sampler: PeakSampler, **extra: object
            ) -> dict[str, object]:
    """One table row from a child's measurements (MB, rounded)."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return {"measurement": what, **extra, "baseline_rss_mb": r(baseline.get("VmRSS")),
            "peak_rss_mb": r(peak_rss_mb()), "peak_anon_mb": r(sampler.peak.get("RssAnon")),
            "peak_file_mb": r(sampler.peak.get("RssFile"))}


# --------------------------------------------------------------------------- child jobs
def child_train_step(stage: str, profile_name: str, device: str, steps: int) -> dict:
    """Peak memory of ``steps`` training steps of ``stage`` at the profile's batch size."""
    import torch
    from train_step import build_task, random_batch  # sibling script (benchmarks/ on sys.path)

    from ecgcmr.config import get_profile
    from ecgcmr.stages import OptimConfig
    from ecgcmr.train import autocast_for, make_optimizer, pick_device, to_device

    profile, dev = get_profile(profile_name), pick_device(device)
    torch.manual_seed(0)
    task = build_task(stage, profile).to(dev)
    task.set_train_mode()
    opt = make_optimizer(task.trainable_parameters(), OptimConfig(), dev)   # as fit()
    host = random_batch(stage, profile, profile.batch_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    baseline = rss_now_mb()
    autocast = autocast_for(dev)
    with PeakSampler() as sampler:
        for i in range(steps):
            batch = to_device(host, dev)
            with autocast:
                loss, _ = task(batch, torch.Generator(device=dev).manual_seed(i))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    cuda = {} if dev.type != "cuda" else {
        "cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1),
        "cuda_max_reserved_mb": round(torch.cuda.max_memory_reserved(dev) / 2**20, 1)}
    return _result(f"train step {STAGES[stage]} {stage}", baseline, sampler,
                   profile=profile_name, batch=profile.batch_size, **cuda)


def child_build(manifest: str, n: int, cache_dir: str, profile_name: str,
                stand_in: bool = False) -> dict:
    """Peak memory of building the cache of the manifest's first ``n`` subjects (with
    ``stand_in``, of the builder alone: see the module docstring)."""
    from ecgcmr.config import get_profile
    from ecgcmr.data import build_cache, cache, read_manifest

    spec = get_profile(profile_name).cache_spec()
    if stand_in:
        cache.preprocess_subject = _stand_in_preprocess   # this child process only
    # the stand-in reads no file, and the replicated rows share files on purpose
    records = read_manifest(manifest, check_files=not stand_in).head(n)
    baseline = rss_now_mb()
    with PeakSampler() as sampler:
        build_cache(records, cache_dir, spec, workers=1, progress=False)
    return _result("build cache" + (" (stand-in)" if stand_in else ""), baseline, sampler,
                   profile=profile_name, n_subjects=n,
                   mapped_mb=round(_mapped_mb(cache_dir), 1))


def _stand_in_preprocess(record: dict, spec) -> tuple:  # noqa: ANN001
    """What ``preprocess_subject`` returns, without reading or computing anything: an ECG
    and two volumes of the grid's shape, different per subject (seeded by its id)."""
    import zlib

    import numpy as np

    from ecgcmr.constants import ECG_N_SAMPLES

    rng = np.random.default_rng(zlib.crc32(str(record["subject_id"]).encode()))
    ecg = rng.standard_normal((12, ECG_N_SAMPLES), dtype=np.float32)
    ed, es = rng.random((2, *spec.grid.shape), dtype=np.float32)
    return (ecg, ed, es), []


def replicated_manifest(manifest: str, n: int, out: Path) -> Path:
    """A manifest of ``n`` rows that repeats ``manifest``'s subjects under new ids."""
    small = pd.read_csv(manifest)
    reps = -(-n // len(small))
    big = pd.concat([small] * reps, ignore_index=True).head(n)
    big["subject_id"] = [f"{sid}-r{i}" for i, sid in enumerate(big["subject_id"])]
    big = big.drop(columns=[c for c in big.columns if c.endswith("_sha256")])
    # the repeated rows point at the small cohort's files: keep the paths valid from here
    root = Path(manifest).resolve().parent
    for col in [c for c in big.columns if c.endswith("_path")]:
        big[col] = [str(root / p) if isinstance(p, str) and p else p for p in big[col]]
    path = out / "manifest.csv"
    out.mkdir(parents=True, exist_ok=True)
    big.to_csv(path, index=False)
    return path


def child_iterate(cache_dir: str, n: int, batch: int, label: str = "iterate dataset") -> dict:
    """Peak memory of one pass of a DataLoader over ``n`` subjects of the cache."""
    from torch.utils.data import DataLoader, Subset

    from ecgcmr.data.dataset import Augment, PairedDataset

    ds = PairedDataset(cache_dir, None, augment=Augment())
    subset = Subset(ds, range(min(n, len(ds))))
    baseline = rss_now_mb()
    seen = 0
    with PeakSampler() as sampler:
        for b in DataLoader(subset, batch_size=batch, num_workers=0):
            seen += len(b[0])
    return _result(label, baseline, sampler, n_subjects=seen, batch=batch,
                   mapped_mb=round(_mapped_mb(cache_dir), 1))


def _mapped_mb(cache_dir: str) -> float:
    return sum((Path(cache_dir) / f"{f}.bin").stat().st_size
               for f in ("ecg", "cmr_ed", "cmr_es")) / 2**20


#: imported once by the fork server, so each measurement's process starts without paying for
#: them (torch alone takes seconds to import on a busy CPU) and without the parent's heap
PRELOAD = ["torch", "pandas", "ecgcmr.train", "ecgcmr.data.dataset", "ecgcmr.config"]


def _context() -> multiprocessing.context.BaseContext:
    """Fork server where there is one (Linux, macOS), else spawn; never a fork of this
    process, which would inherit its heap (and its peak) and its threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def in_fresh_process(fn, *args: object) -> dict:  # noqa: ANN001
    """Run ``fn(*args)`` in a new process (forked from a clean fork server, or spawned): its
    peak RSS is the job's own, not that of earlier measurements."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        return pool.submit(fn, *args).result()


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="grid of the cache; default steps")
    parser.add_argument("--step-profiles", default=None,
                        help="profiles whose batch size / models the step rows use "
                             "(comma-separated; default: --profile)")
    parser.add_argument("--stages", default="cmr,ecg,align", help="comma-separated")
    parser.add_argument("--steps", type=int, default=2, help="training steps per stage")
    parser.add_argument("--n", default="24,96", help="subject counts for the cache rows")
    parser.add_argument("--manifest", default=None,
                        help="cohort to cache (else a synthetic one of max(--n) subjects)")
    parser.add_argument("--cache", default=None,
                        help="iterate this existing cache instead of building ones")
    parser.add_argument("--stand-in", action="store_true",
                        help="cache rows at large N with a stand-in for preprocessing "
                             "(see the module docstring)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def cache_rows(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Build (unless --cache) and iterate the cache at each N, each in a fresh process."""
    from ecgcmr.config import get_profile

    profile = get_profile(args.profile)
    ns = [int(n) for n in args.n.split(",")]
    if args.cache:
        return [in_fresh_process(child_iterate, args.cache, n, profile.batch_size) for n in ns]
    if args.manifest:
        manifest = args.manifest
    else:
        from preprocessing import default_manifest  # sibling script

        n_real = 8 if args.stand_in else max(ns)
        manifest = str(default_manifest(profile, n_real, tmp / "cohort"))
    if args.stand_in:
        manifest = str(replicated_manifest(manifest, max(ns), tmp / "replicated"))
    label = " (stand-in)" if args.stand_in else ""
    rows = []
    for n in ns:
        cache_dir = str(tmp / f"cache-{n}")
        rows.append(in_fresh_process(child_build, manifest, n, cache_dir, args.profile,
                                     args.stand_in))
        rows.append(in_fresh_process(child_iterate, cache_dir, n, profile.batch_size,
                                     "iterate dataset" + label))
        shutil.rmtree(cache_dir, ignore_errors=True)   # 16,000 subjects' cache is GBs
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)

    from ecgcmr.train import pick_device

    dev = pick_device(args.device)
    print(f"{describe_device(dev)} | RSS split from "
          f"{'/proc/self/status' if STATUS.is_file() else 'getrusage only'}")
    rows = [in_fresh_process(child_train_step, s, p, args.device, args.steps)
            for p in (args.step_profiles or args.profile).split(",")
            for s in args.stages.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows += cache_rows(args, Path(tmp))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    save_table(table, args.out, f"memory-{args.profile}-{device_label(dev)}")
    return table


if __name__ == "__main__":
    main()
