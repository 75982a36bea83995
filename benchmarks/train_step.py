"""Training step breakdown per stage: data wait / forward / backward / optimiser, FLOPs and MFU.

    python benchmarks/train_step.py --profile tiny [--steps 10] [--cache DIR]
        [--modes eager,channels_last,compile]

For each pretraining stage (A ``cmr``, B ``ecg``, C ``align``) runs the step of
``ecgcmr.train.fit`` (bf16 autocast on CUDA, AdamW) and times its four parts separately; on
CUDA each part is bracketed by ``torch.cuda.synchronize()`` so the time is the device's, on
CPU it is wall clock. Model FLOPs per sample come from ``torch.utils.flop_counter`` (matmul,
convolution and attention only: element-wise ops are not counted, as is usual for MFU).
Achieved FLOP/s = forward+backward FLOPs of a step / median step time (data wait included);
MFU = achieved / the device's peak dense bf16 FLOP/s (table below; unknown device: none).
Modes (``fit``'s speed options): ``eager``; ``channels_last`` (3D convolutions and volumes in
``torch.channels_last_3d``); ``compile`` (``torch.compile``, first step = compilation);
``trunk_cache`` (stage C only: the frozen CMR trunks' outputs are read from
``ecgcmr.trunk_cache`` instead of computed; ``setup_s`` is the time to build that cache for the
whole cohort, once per stage-A checkpoint, and the FLOPs are those the step still does).

Data: real batches from a preprocessing cache with ``--cache`` (``PairedDataset`` through a
``DataLoader``, as training reads them), else random tensors made once on the host and copied
to the device every step (the data wait is then the host->device copy only).
Writes benchmarks/results/train_step-<profile>-<cpu|gpu>.csv.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import describe_device, device_label, save_table  # sibling script
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ecgcmr.config import Profile, get_profile
from ecgcmr.constants import ECG_N_SAMPLES, PHENOTYPES
from ecgcmr.models import build_cmr_encoder, build_ecg_encoder
from ecgcmr.stages import OptimConfig
from ecgcmr.train import (
    AlignTask,
    CmrRegressionTask,
    EcgMaeTask,
    EpochSampler,
    Task,
    autocast_for,
    compile_blocks,
    loader_options,
    make_optimizer,
    pick_device,
    to_device,
)

STAGE_NAMES = {"cmr": "A", "ecg": "B", "align": "C", "ecg_encoder": "-"}

# Peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s, from NVIDIA's datasheets:
#   H100 SXM 989.4 TFLOP/s, H100 PCIe 756 TFLOP/s — "NVIDIA H100 Tensor Core GPU" datasheet
#     (nvidia.com/en-us/data-center/h100/; the table's 1,979 / 1,513 are "with sparsity")
#   H200 (SXM) 989 TFLOP/s — "NVIDIA H200 Tensor Core GPU" datasheet (nvidia.com/en-us/
#     data-center/h200/; 1,979 with sparsity)
#   A100 312 TFLOP/s — "NVIDIA A100 Tensor Core GPU" datasheet (624 with sparsity)
# Checked in order, so "H100 PCIe" matches before the generic H100 (= SXM, e.g. "H100 80GB HBM3").
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIE"), 756.0),
    (("H200",), 989.0),
    (("H100", "HBM3"), 989.4),
    (("H100", "SXM"), 989.4),
    (("A100",), 312.0),
)


def peak_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a CUDA device by name; None when it is not in the table."""
    name = device_name.upper()
    for keys, tflops in PEAK_BF16_TFLOPS:
        if all(k in name for k in keys):
            return tflops
    return None


def sync(dev: torch.device) -> None:
    """Wait for the device, so a wall-clock interval covers the work queued in it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------- tasks and data
class EncoderOnlyTask(Task):
    """The ECG ViT alone on all 600 tokens (no masking, no heads): the encoder's own MFU.
    Its loss (mean square of the embedding) is only there to have something to backprop."""

    fields = ("ecg",)

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.encoder = build_ecg_encoder("vit", profile.model_size)

    def forward(self, batch, generator=None):  # noqa: ANN001, ANN201
        loss = self.encoder(batch[0]).float().pow(2).mean()
        return loss, {}


def build_task(stage: str, profile: Profile, target_mean: torch.Tensor | None = None,
               target_std: torch.Tensor | None = None) -> Task:
    """The stage's Task at the profile's model size, freshly initialised (as in fit)."""
    if stage == "ecg_encoder":
        return EncoderOnlyTask(profile)
    cfg = profile.stage_config(stage)
    if stage == "cmr":
        k = len(cfg.targets)
        mean = torch.zeros(k) if target_mean is None else target_mean
        std = torch.ones(k) if target_std is None else target_std
        return CmrRegressionTask(cfg, profile.cmr_shape[0], mean, std)
    if stage == "ecg":
        return EcgMaeTask(cfg)
    cmr = {p: build_cmr_encoder(profile.model_size, n_slices=profile.cmr_shape[0])
           for p in ("ed", "es")}
    return AlignTask(cfg, build_ecg_encoder(cfg.ecg_encoder, profile.model_size), cmr)


def random_batch(stage: str, profile: Profile, batch: int,
                 trunk: tuple[int, ...] | None = None) -> list[torch.Tensor]:
    """Host tensors shaped like the stage's DataLoader batches (``trunk``: the shape of a
    trunk feature, served instead of the volumes in stage C)."""
    g = torch.Generator().manual_seed(0)
    vol = (batch, 1, *profile.cmr_shape) if trunk is None else (batch, *trunk)
    if stage == "cmr":
        return [torch.rand(vol, generator=g), torch.randn(batch, len(PHENOTYPES), generator=g)]
    ecg = torch.randn(batch, 12, ECG_N_SAMPLES, generator=g)
    if stage in ("ecg", "ecg_encoder"):
        return [ecg]
    return [ecg, torch.rand(vol, generator=g), torch.rand(vol, generator=g)]


def _target_stats(ds) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Train-split standardisation of the targets, NaN-aware (as the stage A notebook does)."""
    values = ds.subjects[list(ds.targets)].to_numpy(np.float64)
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    return torch.tensor(np.nan_to_num(mean)), torch.tensor(np.where(std > 0, std, 1.0))


def cache_batches(stage: str, profile: Profile, cache: str, batch: int, workers: int,
                  dev: torch.device, cmr_trunk: dict[str, np.ndarray] | None = None,
                  ) -> tuple[Iterator[list[torch.Tensor]], tuple | None]:
    """Endless real batches of the stage's fields (epoch after epoch), plus target stats."""
    from ecgcmr.data.dataset import PairedDataset  # torch-only import kept local

    cfg = profile.stage_config("ecg" if stage == "ecg_encoder" else stage)
    fields, targets = {"cmr": ((f"cmr_{cfg.phase}",), cfg.targets), "ecg": (("ecg",), ()),
                       "ecg_encoder": (("ecg",), ()),
                       "align": (("ecg", "cmr_ed", "cmr_es"), ())}[stage]
    ds = PairedDataset(cache, "train", augment=cfg.augmentation(), targets=targets,
                       fields=fields, cmr_trunk=cmr_trunk)
    sampler = EpochSampler(len(ds), cfg.seed, batch_size=batch)
    if len(sampler) == 0:
        raise SystemExit(f"cache train split has {len(ds)} subjects: fewer than a batch of {batch}")
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True,
                        **loader_options(ds, workers, dev))            # as fit() builds it

    def endless() -> Iterator[list[torch.Tensor]]:
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            yield from loader

    return endless(), (_target_stats(ds) if targets else None)


# --------------------------------------------------------------------------- measurement
def count_flops(task: Task, batch: list[torch.Tensor], dev: torch.device) -> tuple[int, int]:
    """(forward FLOPs, forward+backward FLOPs) of one step on ``batch``."""
    gen = torch.Generator(device=dev).manual_seed(0)
    with FlopCounterMode(display=False) as fwd, autocast_for(dev):
        loss, _ = task(batch, gen)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    task.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), fwd.get_total_flops() + bwd.get_total_flops()


def timed_steps(net: Callable, task: Task, batches: Iterator[list[torch.Tensor]],
                dev: torch.device, steps: int, warmup: int,
                channels_last: bool = False) -> tuple[dict[str, float], float]:
    """Median seconds of each part over ``steps`` steps after ``warmup``; and the first step's
    total time (which holds torch.compile's compilation when ``net`` is compiled)."""
    opt = make_optimizer(task.trainable_parameters(), OptimConfig(), dev)   # as fit()
    parts: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "optim")}
    first = math.nan
    for i in range(warmup + steps):
        gen = torch.Generator(device=dev).manual_seed(i)
        sync(dev)
        t0 = time.perf_counter()
        batch = to_device(next(batches), dev, channels_last)
        sync(dev)
        t1 = time.perf_counter()
        with autocast_for(dev):
            loss, _ = net(batch, gen)
        sync(dev)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(dev)
        t3 = time.perf_counter()
        opt.step()
        sync(dev)
        t4 = time.perf_counter()
        if i == 0:
            first = t4 - t0
        if i >= warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[k].append(v)
    med = {k: float(np.median(v)) for k, v in parts.items()}
    med["step"] = float(np.median([sum(p) for p in zip(*parts.values(), strict=True)]))
    return med, first


MODES = ("eager", "channels_last", "compile", "trunk_cache")


def trunk_setup(task: AlignTask, profile: Profile, cache: str | None, dev: torch.device,
                workdir: Path) -> tuple[dict[str, np.ndarray] | None, tuple[int, ...], float]:
    """Switch ``task`` to cached trunk features: (the cache's features per field or None for
    random data, the feature shape, seconds to build them)."""
    from ecgcmr.data.cache import open_cache
    from ecgcmr.pretrain import cmr_trunk_features
    from ecgcmr.trunk_cache import trunk_shape

    shape = trunk_shape(task.cmr["ed"], profile.cmr_shape)
    task.cmr_input = "trunk"
    if cache is None:
        return None, shape, 0.0
    workdir.mkdir(parents=True, exist_ok=True)
    init = {}
    for phase, encoder in task.cmr.items():   # the cache is keyed by these (seeded) weights
        init[phase] = workdir / f"trunk_bench_{profile.name}_{phase}.pt"
        torch.save(encoder.state_dict(), init[phase])
    t0 = time.perf_counter()
    features = cmr_trunk_features(open_cache(cache), profile.stage_config("align"),
                                  dict(task.cmr.items()), init, "on", device=str(dev),
                                  progress=False)
    return features, shape, time.perf_counter() - t0


def measure(stage: str, profile: Profile, dev: torch.device, args: argparse.Namespace,
            mode: str) -> dict[str, object]:
    """One row of the table: a stage in one of ``MODES``."""
    if mode == "trunk_cache" and stage != "align":
        raise SystemExit("--modes trunk_cache applies to stage align only")
    torch.manual_seed(0)
    batch_size = args.batch or profile.batch_size
    stats = None
    task = build_task(stage, profile) if stage == "align" else None
    trunk, trunk_dims, setup = None, None, 0.0
    if mode == "trunk_cache":
        trunk, trunk_dims, setup = trunk_setup(task, profile, args.cache, dev, Path(args.out))
    if args.cache:
        batches, stats = cache_batches(stage, profile, args.cache, batch_size, args.workers, dev,
                                       trunk)
    else:
        host = random_batch(stage, profile, batch_size, trunk_dims)
        batches = itertools.repeat(host)
    task = (task or build_task(stage, profile, *(stats or (None, None)))).to(dev)
    task.set_train_mode()
    channels_last = mode == "channels_last"
    if channels_last:
        task.to(memory_format=torch.channels_last_3d)
    fwd, train = count_flops(task, to_device(next(batches), dev, channels_last), dev)
    net = compile_blocks(task) if mode == "compile" else task   # what fit(compile_model=True) does
    med, first = timed_steps(net, task, batches, dev, args.steps, args.warmup, channels_last)
    achieved = train / med["step"]                        # FLOP/s over the whole step
    peak = _peak_flops(dev, args.cpu_peak_gflops)
    return {
        "stage": f"{STAGE_NAMES[stage]} {stage}", "profile": profile.name,
        "data": "cache" if args.cache else "random", "mode": mode,
        "batch": batch_size, "steps": args.steps,
        **{f"{k}_ms": round(1000 * v, 2) for k, v in med.items()},
        "first_step_s": round(first, 2), "setup_s": round(setup, 1),
        "samples_per_s": round(batch_size / med["step"], 1),
        "fwd_gflop_per_sample": round(fwd / batch_size / 1e9, 4),
        "train_gflop_per_sample": round(train / batch_size / 1e9, 4),
        "achieved_gflops": round(achieved / 1e9, 2),
        "peak_gflops": None if peak is None else round(peak / 1e9),
        "mfu_pct": None if peak is None else round(100 * achieved / peak, 3),
    }


def _peak_flops(dev: torch.device, cpu_peak_gflops: float | None) -> float | None:
    if dev.type == "cuda":
        tflops = peak_tflops(torch.cuda.get_device_name(dev))
        return None if tflops is None else tflops * 1e12
    return None if cpu_peak_gflops is None else cpu_peak_gflops * 1e9


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="tiny | teaching | paper")
    parser.add_argument("--stages", default="cmr,ecg,align",
                        help="comma-separated; 'ecg_encoder' adds the ECG ViT alone (600 tokens)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=0, help="0: the profile's batch size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", default=None, help="preprocessing cache (else random data)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (--cache)")
    parser.add_argument("--modes", default="eager",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--compile", action="store_true", help="same as adding 'compile' to --modes")
    parser.add_argument("--cpu-peak-gflops", type=float, default=None,
                        help="the CPU's peak FLOP/s (for an MFU on CPU; otherwise unknown)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return parser.parse_args(argv)


def _print_mode_effects(table: pd.DataFrame) -> None:
    for stage, rows in table.groupby("stage", sort=False):
        by_mode = rows.set_index("mode")
        if "eager" not in by_mode.index:
            continue
        eager = by_mode.loc["eager"]
        for mode, row in by_mode.drop(index="eager").iterrows():
            print(f"{mode}, stage {stage}: {eager['samples_per_s']} -> "
                  f"{row['samples_per_s']} samples/s "
                  f"(x{row['samples_per_s'] / eager['samples_per_s']:.2f}), first step "
                  f"{row['first_step_s']} s vs {eager['first_step_s']} s eager")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    profile = get_profile(args.profile)
    dev = pick_device(args.device)
    print(describe_device(dev))
    print("data:", f"real batches from cache {args.cache} ({args.workers} workers)" if args.cache
          else "random tensors (made once on the host; data wait = host->device copy)")
    modes = args.modes.split(",") + (["compile"] if args.compile else [])
    modes = list(dict.fromkeys(modes))
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    rows = [measure(s, profile, dev, args, m) for s in args.stages.split(",") for m in modes]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if dev.type == "cpu" and args.cpu_peak_gflops is None:
        print("MFU: CPU peak FLOP/s unknown (pass --cpu-peak-gflops); achieved GFLOP/s only")
    elif dev.type == "cuda" and table["peak_gflops"].isna().all():
        print(f"MFU: {torch.cuda.get_device_name(dev)} is not in the peak table; not reported")
    _print_mode_effects(table)
    save_table(table, args.out, f"train_step-{args.profile}-{device_label(dev)}")
    return table


if __name__ == "__main__":
    main()
