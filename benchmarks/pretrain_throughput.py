"""Training throughput of each pretraining stage, model compute only (random inputs, no I/O).

    python benchmarks/pretrain_throughput.py --profile teaching [--steps 10] [--device auto]

Prints samples/s per stage (forward + backward + optimiser step, after warm-up) and writes
benchmarks/results/pretrain_throughput-<profile>-<device>.csv. The data pipeline is measured
separately (issue 6); this is the ceiling the loop can reach on the device.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from common import device_label, save_table  # sibling script

from ecgcmr.config import get_profile
from ecgcmr.constants import ECG_N_SAMPLES, PHENOTYPES
from ecgcmr.models import build_cmr_encoder, build_ecg_encoder
from ecgcmr.stages import OptimConfig
from ecgcmr.train import (
    AlignTask,
    CmrRegressionTask,
    EcgMaeTask,
    autocast_for,
    make_optimizer,
    pick_device,
)


def _batch(stage: str, b: int, shape: tuple[int, int, int], dev: torch.device) -> list:
    ecg = torch.randn(b, 12, ECG_N_SAMPLES, device=dev)
    vol = torch.rand(b, 1, *shape, device=dev)
    if stage == "cmr":
        return [vol, torch.randn(b, len(PHENOTYPES), device=dev)]
    if stage == "ecg":
        return [ecg]
    return [ecg, vol, torch.rand(b, 1, *shape, device=dev)]


def _task(stage: str, profile, dev: torch.device):  # noqa: ANN001, ANN202
    cfg = profile.stage_config(stage)
    if stage == "cmr":
        k = len(PHENOTYPES)
        return CmrRegressionTask(cfg, profile.cmr_shape[0], torch.zeros(k), torch.ones(k))
    if stage == "ecg":
        return EcgMaeTask(cfg)
    cmr = {p: build_cmr_encoder(profile.model_size, n_slices=profile.cmr_shape[0])
           for p in ("ed", "es")}
    return AlignTask(cfg, build_ecg_encoder("vit", profile.model_size), cmr)


def measure(stage: str, profile_name: str, steps: int, device: str) -> dict[str, object]:
    profile = get_profile(profile_name)
    dev = pick_device(device)
    torch.manual_seed(0)
    task = _task(stage, profile, dev).to(dev)
    task.set_train_mode()
    opt = make_optimizer(task.trainable_parameters(), OptimConfig(), dev)   # as fit()
    batch = _batch(stage, profile.batch_size, profile.cmr_shape, dev)
    autocast = autocast_for(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    times = []
    for i in range(steps + 2):                      # two warm-up steps
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss, _ = task(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"cpu x{torch.get_num_threads()} threads"
    return {"stage": stage, "profile": profile_name, "device": device_name,
            "batch": profile.batch_size, "median_step_s": round(step, 4),
            "samples_per_s": round(profile.batch_size / step, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="teaching")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stages", default="cmr,ecg,align")
    args = parser.parse_args()
    rows = [measure(s, args.profile, args.steps, args.device) for s in args.stages.split(",")]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    save_table(table, Path(__file__).parent / "results",
               f"pretrain_throughput-{args.profile}-{device_label(pick_device(args.device))}")


if __name__ == "__main__":
    main()
