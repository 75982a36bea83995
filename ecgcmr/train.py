"""One training loop for the three pretraining stages (DESIGN §5).

* stage A ``cmr``:   a CMR encoder per phase, supervised to regress the phenotypes (NaN-masked MSE
                     on train-standardised targets);
* stage B ``ecg``:   the ECG ViT as a masked autoencoder (mask ratio 0.7); loss ``mae_loss``:
                     MSE on the masked patches, or the public code's (all patches + NCC);
* stage C ``align``: the ECG encoder aligned with the frozen CMR encoders (``cmr_trainable``:
                     their last stage, slice layer and output layer train, or only the output
                     layer as in the public code; and the projection heads) by the dual-phase
                     contrastive loss — or a single-phase one (``method="ed"`` / ``"es"``).

Each stage is a :class:`Task`: an ``nn.Module`` whose ``forward(batch, generator)`` returns the
loss and its named terms, so one loop (:func:`fit`) serves all three, with or without DDP.
The loop: AdamW, linear warm-up then half-cycle cosine per step, bf16 autocast on CUDA, early
stopping on validation loss (armed once the learning rate has decayed to half its peak:
:data:`STOP_BELOW_LR_FRACTION`), an atomic checkpoint after every epoch (weights, optimiser, RNG
states, config) that ``resume=True`` continues from — on CPU a resumed run ends with exactly
the weights of an uninterrupted one — and per-step / per-epoch metrics as CSV.

Under ``torchrun`` each process takes its shard of every (seeded) epoch permutation; the
contrastive loss gathers negatives from all ranks (``ecgcmr.losses``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ecgcmr import distributed as dist
from ecgcmr.losses import (
    Temperature,
    dual_phase_loss,
    mae_loss,
    masked_mse,
    public_mae_loss,
    retrieval_accuracy,
)
from ecgcmr.methods import get_method
from ecgcmr.models import (
    CmrEncoder,
    EcgMAE,
    ProjectionHead,
    RegressionHead,
    build_cmr_encoder,
    build_ecg_encoder,
)
from ecgcmr.models.ecg_vit import Block
from ecgcmr.stages import OptimConfig, StageConfig, check_same_stage


# --------------------------------------------------------------------------- tasks
class Task(nn.Module):
    """A stage: ``forward(batch, generator) -> (loss, {term: value})`` plus what it reads."""

    fields: tuple[str, ...] = ()      # dataset fields, see ecgcmr.data.dataset.FIELDS
    targets: tuple[str, ...] = ()     # manifest columns appended to each batch

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        self.train()

    @torch.no_grad()
    def evaluate(self, loader: Iterable, device: torch.device) -> dict[str, float]:
        """Mean validation loss (batches weighted by size); tasks add their own metrics."""
        self.eval()
        total, n = 0.0, 0
        for batch in loader:
            batch = to_device(batch, device)
            loss, _ = self(batch, _eval_generator(device))
            total += float(loss) * len(batch[0])
            n += len(batch[0])
        return {"val_loss": total / max(n, 1)}


class CmrRegressionTask(Task):
    """Stage A: one phase's CMR encoder regresses the (standardised) phenotypes."""

    def __init__(self, cfg: StageConfig, n_slices: int, target_mean: torch.Tensor,
                 target_std: torch.Tensor) -> None:
        super().__init__()
        self.fields = (f"cmr_{cfg.phase}",)
        self.targets = tuple(cfg.targets)
        self.encoder = build_cmr_encoder(cfg.size, n_slices=n_slices)
        self.head = RegressionHead(self.encoder.out_dim, len(self.targets))
        # standardisation from the training split, kept in the checkpoint
        self.register_buffer("target_mean", target_mean.float())
        self.register_buffer("target_std", target_std.float())
        self.register_buffer("n_slices", torch.tensor(n_slices))  # to rebuild the encoder

    def forward(self, batch: Sequence[torch.Tensor], generator: torch.Generator | None = None):
        volume, y = batch                                     # (B, 1, D, H, W), (B, K)
        pred = self.head(self.encoder(volume))                # (B, K) standardised units
        loss = masked_mse(pred.float(), (y - self.target_mean) / self.target_std)
        return loss, {"mse": loss.detach()}


class EcgMaeTask(Task):
    """Stage B: the ECG ViT as a masked autoencoder."""

    fields = ("ecg",)

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__()
        self.mask_ratio = cfg.mask_ratio
        self.loss_kind = cfg.mae_loss
        self.mae = EcgMAE(build_ecg_encoder("vit", cfg.size).cfg)

    def forward(self, batch: Sequence[torch.Tensor], generator: torch.Generator | None = None):
        (ecg,) = batch                                        # (B, 12, T)
        pred, target, mask = self.mae(ecg, mask_ratio=self.mask_ratio, generator=generator)
        if self.loss_kind == "public":
            loss, terms = public_mae_loss(pred.float(), target.float(), self.mae.cfg.n_leads)
            return loss, {"mae": loss.detach(), **terms}
        loss = mae_loss(pred.float(), target.float(), mask)
        return loss, {"mae": loss.detach()}


# what stage C's CMR batches hold: "volume", the CMR volumes; "trunk", the frozen trunks'
# outputs read from ecgcmr.trunk_cache (the same loss, without the frozen convolutions)
CMR_INPUTS: tuple[str, ...] = ("volume", "trunk")


class AlignTask(Task):
    """Stage C: ECG encoder + projection heads aligned with frozen CMR phase encoders."""

    def __init__(self, cfg: StageConfig, ecg_encoder: nn.Module,
                 cmr_encoders: dict[str, CmrEncoder], *, cmr_input: str = "volume") -> None:
        super().__init__()
        if cmr_input not in CMR_INPUTS:
            raise ValueError(f"cmr_input must be one of {CMR_INPUTS}, got {cmr_input!r}")
        method = get_method(cfg.method)
        self.weights = method.loss_weights                    # (ecg-ed, ecg-es, ed-es)
        phases = method.phases
        self.fields = ("ecg", *(f"cmr_{p}" for p in phases))
        self.ecg = ecg_encoder
        self.cmr = nn.ModuleDict({p: cmr_encoders[p] for p in phases})
        for encoder in self.cmr.values():
            encoder.freeze_except_last_layer(cfg.cmr_trainable)
        self.proj = nn.ModuleDict({"ecg": ProjectionHead(ecg_encoder.out_dim, cfg.proj_dim)})
        for p in phases:
            self.proj[p] = ProjectionHead(self.cmr[p].out_dim, cfg.proj_dim)
        self.temperature = Temperature(cfg.temperature)
        self.cmr_input = cmr_input

    def set_train_mode(self) -> None:
        # The CMR backbones are frozen: their BatchNorm statistics stay those of stage A.
        self.train()
        self.cmr.eval()

    def embed(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Projected embeddings (B, proj_dim) by modality."""
        out = {"ecg": self.proj["ecg"](self.ecg(batch[0]))}
        for phase, x in zip(self.cmr.keys(), batch[1:], strict=True):
            encoder = self.cmr[phase]
            h = encoder.forward_from_trunk(x) if self.cmr_input == "trunk" else encoder(x)
            out[phase] = self.proj[phase](h)
        return out

    def forward(self, batch: Sequence[torch.Tensor], generator: torch.Generator | None = None):
        return self._loss(self.embed(batch))

    def _loss(self, z: dict[str, torch.Tensor]):
        # Training batches are sharded across DDP ranks: negatives come from all of them.
        # Validation runs the whole split on every rank, so it must not gather (it would count
        # each pair once per rank).
        loss, terms = dual_phase_loss(z["ecg"].float(), _float(z.get("ed")),
                                      _float(z.get("es")), self.temperature(),
                                      weights=self.weights,
                                      gather=None if self.training else False)
        return loss, {**terms, "tau": self.temperature().detach()}

    @torch.no_grad()
    def evaluate(self, loader: Iterable, device: torch.device) -> dict[str, float]:
        """Validation loss plus ECG→phase top-1/top-5 retrieval over the whole split.

        One pass: each batch's embeddings give its loss and are kept for retrieval, so the
        encoders (the expensive part) run once per validation subject, not twice.
        """
        self.eval()
        total, n = 0.0, 0
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in loader:
            z = self.embed(to_device(batch, device))
            loss, _ = self._loss(z)
            total += float(loss) * len(batch[0])
            n += len(batch[0])
            for key, value in z.items():
                parts.setdefault(key, []).append(value.float().cpu())
        metrics = {"val_loss": total / max(n, 1)}
        z = {k: torch.cat(v) for k, v in parts.items()}
        for phase in self.cmr.keys():
            for k, acc in retrieval_accuracy(z["ecg"], z[phase], k=(1, 5)).items():
                metrics[f"ecg_to_{phase}_{k}"] = float(acc)
        return metrics


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()


def _eval_generator(device: torch.device) -> torch.Generator:
    # validation masks are the same every epoch, so validation losses are comparable
    return torch.Generator(device=device).manual_seed(12345)


# --------------------------------------------------------------------------- data order
class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded across DDP ranks (equal length per rank).

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, n: int, seed: int, *, shuffle: bool = True, drop_last: bool = True,
                 batch_size: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = dist.rank(), dist.world_size()
        per_rank = n // self.world
        if drop_last:  # whole batches only: BatchNorm and contrastive losses need B > 1
            per_rank -= per_rank % batch_size
        self.per_rank = per_rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return iter(order[self.rank::self.world][: self.per_rank])

    def __len__(self) -> int:
        return self.per_rank


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Linear warm-up to ``lr``, then half-cycle cosine down to ``min_lr``."""
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1)))


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    # no decay on biases and normalisation weights (1-D tensors), as MAE/CLIP training does
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def autocast_for(dev: torch.device) -> contextlib.AbstractContextManager:
    """The precision ``fit`` trains in: bf16 autocast on CUDA, plain float32 elsewhere
    (the losses switch autocast off for themselves). Reusable across steps."""
    return (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
            else contextlib.nullcontext())


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig,
                   dev: torch.device) -> torch.optim.AdamW:
    """AdamW over ``params``; on CUDA the fused kernel (one launch for all parameters
    instead of several per tensor: the optimiser step is ~5 % of a paper-size step)."""
    return torch.optim.AdamW(_param_groups(params, cfg.weight_decay), lr=cfg.lr,
                             betas=cfg.betas, fused=dev.type == "cuda")


def compile_blocks(task: nn.Module) -> nn.Module:
    """``torch.compile`` each transformer block and each CMR encoder of ``task`` in place.

    Per block rather than the whole task: the task's forward draws masks and augmentations
    from a per-step ``torch.Generator``, which would make a whole-task graph recompile
    every step; the blocks hold nearly all the FLOPs and have fixed shapes.
    """
    for module in task.modules():
        if isinstance(module, (Block, CmrEncoder)):
            module.compile()
    return task


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            # found on a 1-GPU machine running 2 gloo ranks: cuda:1 failed deep in the step
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                "visible): start at most one process per GPU (torchrun --nproc-per-node), "
                "or pass device='cpu' (--device cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def loader_options(ds: Dataset, num_workers: int, dev: torch.device) -> dict[str, object]:
    """DataLoader settings for ``ds``: workers, pinned memory on CUDA, and workers that live
    across epochs only when ``ds`` serves the same items every epoch.

    A persistent worker keeps the copy of the dataset it started with, so ``set_epoch`` in
    the main process never reaches it: an augmented dataset would serve epoch 0's draws in
    every epoch, and results would depend on the number of workers. Such a dataset gets fresh
    workers each epoch instead.
    """
    per_epoch = hasattr(ds, "set_epoch") and getattr(ds, "augment", True) is not None
    return {"num_workers": num_workers, "pin_memory": dev.type == "cuda",
            "persistent_workers": num_workers > 0 and not per_epoch}


def to_device(batch: Sequence[torch.Tensor], dev: torch.device,
              channels_last: bool = False) -> list[torch.Tensor]:
    """A DataLoader batch on ``dev`` (asynchronously from pinned memory); with
    ``channels_last`` the 5-D CMR volumes are laid out as ``torch.channels_last_3d``."""
    moved = [b.to(dev, non_blocking=True) for b in batch]
    if channels_last:
        moved = [b.contiguous(memory_format=torch.channels_last_3d) if b.ndim == 5 else b
                 for b in moved]
    return moved


# --------------------------------------------------------------------------- the loop
#: Early stopping only ends a run once the learning rate has decayed to this fraction of its
#: peak. Near the peak the validation loss of stage C (and stage A) jumps by ±10 % from epoch
#: to epoch, so a few epochs without a new best say nothing: a teaching stage C stopped at
#: epoch 16 of 24 (best 1.947) where the full schedule reached 1.697
#: (benchmarks/measured/2026-12-07-convergence-teaching-cpu-2core.md).
STOP_BELOW_LR_FRACTION = 0.5

@dataclass
class FitResult:
    out_dir: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    partial: bool = False      # stopped by ``stop_after_steps``: no validation, no best.pt


def fit(
    task: Task,
    cfg: StageConfig,
    train_ds: Dataset,
    val_ds: Dataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    channels_last: bool = False,
    compile_model: bool = False,
    stop_after_steps: int | None = None,
) -> FitResult:
    """Train ``task`` with the loop described in the module docstring.

    ``channels_last`` stores the 3D convolutions' weights and the CMR volumes channels-last
    (``torch.channels_last_3d``: cuDNN's fast layout on GPUs); ``compile_model`` runs the
    training step through ``torch.compile``. Both are speed options with no effect on the
    method; benchmarks/train_step.py measures each. ``stop_after_steps`` ends the run after
    that many optimiser steps of the full schedule, logged; the epoch it interrupts is neither
    validated nor saved (a check that a logged run repeats: tests/test_pretrained.py).

    Writes to ``out_dir``: ``config.json``, ``last.pt`` (resume point), ``best.pt`` (weights of
    the best validation epoch + config), ``steps.csv`` and ``epochs.csv``. Returns with the best
    weights loaded into ``task``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    dist.seed_everything(cfg.seed)
    opt_cfg = cfg.optim
    task.to(dev)
    if channels_last:
        task.to(memory_format=torch.channels_last_3d)
    net = (DistributedDataParallel(task, device_ids=[dev.index] if dev.type == "cuda" else None)
           if dist.is_distributed() else task)
    if compile_model:
        compile_blocks(task)
    per_rank_batch = _per_rank_batch(opt_cfg.batch_size, dist.world_size())
    sampler = EpochSampler(len(train_ds), cfg.seed, batch_size=per_rank_batch)
    if len(sampler) == 0:
        raise ValueError(f"training split has {len(train_ds)} subjects: fewer than one batch "
                         f"of {per_rank_batch} per rank")
    if len(val_ds) == 0:   # its loss would read 0, an "improvement" every epoch
        raise ValueError("the validation split is empty: early stopping and best.pt need it")
    train_loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=sampler,
                              drop_last=True, **loader_options(train_ds, num_workers, dev))
    val_loader = DataLoader(val_ds, batch_size=per_rank_batch, shuffle=False,
                            **loader_options(val_ds, num_workers, dev))
    steps_per_epoch = len(train_loader)
    if opt_cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, opt_cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * opt_cfg.epochs
    warmup_steps = steps_per_epoch * opt_cfg.warmup_epochs
    params = task.trainable_parameters()
    optimizer = make_optimizer(params, opt_cfg, dev)
    autocast = autocast_for(dev)

    state = {"epoch": 0, "step": 0, "best_val_loss": math.inf, "best_epoch": -1,
             "bad_epochs": 0, "history": []}
    if resume and (out / "last.pt").is_file():
        state = _load_checkpoint(out / "last.pt", task, optimizer, cfg)
    elif dist.is_main():
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        for name in ("steps.csv", "epochs.csv"):
            (out / name).unlink(missing_ok=True)
    _truncate_csv(out / "steps.csv", "step", state["step"])
    _truncate_csv(out / "epochs.csv", "epoch", state["epoch"])

    stopped_early = False
    while state["epoch"] < opt_cfg.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        task.set_train_mode()
        bar = tqdm(total=steps_per_epoch, desc=f"{cfg.stage} epoch {epoch + 1}/{opt_cfg.epochs}",
                   disable=not (progress and dist.is_main()), leave=False)
        pending: list[dict[str, object]] = []   # step rows whose tensors are not read yet
        t0 = time.perf_counter()
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            step = state["step"]
            lr = lr_at(step, total_steps, warmup_steps, opt_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(batch, dev, channels_last)
            gen = torch.Generator(device=dev).manual_seed(
                (cfg.seed * 1_000_003 + step) * 64 + dist.rank())
            with autocast:
                loss, terms = net(batch, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] = step + 1
            # no host-device sync in the step: the loss stays on the device until the next
            # flush, which reads LOG_EVERY steps' values at once
            pending.append({"epoch": epoch, "step": step, "lr": lr, "loss": loss.detach(),
                            **{k: v.detach() for k, v in terms.items()},
                            "n": len(batch[0]) * dist.world_size()})
            bar.update()
            if len(pending) == LOG_EVERY:
                t0 = _flush_steps(pending, out / "steps.csv", t0, bar)
            if stop_after_steps is not None and state["step"] >= stop_after_steps:
                if pending:
                    _flush_steps(pending, out / "steps.csv", t0, bar)
                bar.close()
                return FitResult(out_dir=out, best_epoch=-1, best_val_loss=math.nan,
                                 epochs_run=epoch, stopped_early=False, history=[],
                                 partial=True)
        if pending:
            _flush_steps(pending, out / "steps.csv", t0, bar)
        bar.close()
        metrics = {"epoch": epoch, **task.evaluate(val_loader, dev)}
        state["epoch"] = epoch + 1
        state["history"].append(metrics)
        improved = metrics["val_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if dist.is_main():
            _append_csv(out / "epochs.csv", metrics)
            if improved:
                _save_atomic({"model": task.state_dict(), "config": cfg.to_json(),
                              "epoch": epoch, "val_loss": metrics["val_loss"]}, out / "best.pt")
            _save_checkpoint(out / "last.pt", task, optimizer, cfg, state)
        if (state["bad_epochs"] >= opt_cfg.patience
                and lr_at(state["step"], total_steps, warmup_steps, opt_cfg)
                <= STOP_BELOW_LR_FRACTION * opt_cfg.lr):
            stopped_early = True
            break
    if dist.is_distributed():
        torch.distributed.barrier()
    best = torch.load(out / "best.pt", map_location=dev, weights_only=True)
    task.load_state_dict(best["model"])
    return FitResult(out_dir=out, best_epoch=state["best_epoch"],
                     best_val_loss=state["best_val_loss"], epochs_run=state["epoch"],
                     stopped_early=stopped_early, history=state["history"])


def _per_rank_batch(batch_size: int, world: int) -> int:
    """The batch of one rank: the global batch split evenly, at least 2 per rank (contrastive
    negatives, BatchNorm); anything else would silently change the global batch."""
    if batch_size % world or batch_size // world < 2:
        raise ValueError(f"batch_size {batch_size} does not split into equal batches of >= 2 "
                         f"over {world} processes: choose a multiple of {world} >= {2 * world}")
    return batch_size // world


LOG_EVERY = 25   # training steps between reads of the logged losses (one sync per read)


def _flush_steps(pending: list[dict[str, object]], steps_csv: Path, t0: float,
                 bar: tqdm) -> float:
    """Append the pending step rows to ``steps.csv``, reading their losses from the device in
    one go; ``samples_per_s`` is the throughput over the flushed window. Empties ``pending``
    and returns the start time of the next window."""
    keys = [k for k, v in pending[0].items() if isinstance(v, torch.Tensor)]
    values = torch.stack([torch.stack([r[k].float().reshape(()) for k in keys])
                          for r in pending]).cpu().tolist()          # the one sync
    now = time.perf_counter()
    sps = sum(int(r["n"]) for r in pending) / max(now - t0, 1e-9)
    if dist.is_main():
        for r, vals in zip(pending, values, strict=True):
            read = dict(zip(keys, vals, strict=True))
            row = {k: read.get(k, v) for k, v in r.items() if k != "n"}
            _append_csv(steps_csv, {**row, "samples_per_s": sps})
    bar.set_postfix(loss=f"{values[-1][keys.index('loss')]:.4f}", sps=f"{sps:.0f}")
    pending.clear()
    return now


# --------------------------------------------------------------------------- checkpoints
def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)   # a crash mid-write never leaves a truncated checkpoint


def _save_checkpoint(path: Path, task: Task, optimizer: torch.optim.Optimizer,
                     cfg: StageConfig, state: dict) -> None:
    _save_atomic({
        "model": task.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_json(),
        "state": {k: v for k, v in state.items() if k != "history"},
        "history": json.dumps(state["history"]),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": json.dumps(_numpy_state()),
                "python": json.dumps(random.getstate())},
    }, path)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (saved as is)
    return [kind, keys.tolist(), pos, has_gauss, cached]


def _load_checkpoint(path: Path, task: Task, optimizer: torch.optim.Optimizer,
                     cfg: StageConfig) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    check_same_stage(ckpt["config"], cfg, str(path))
    task.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    kind, keys, pos, has_gauss, cached = json.loads(ckpt["rng"]["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    py = json.loads(ckpt["rng"]["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    state = dict(ckpt["state"])
    state["history"] = json.loads(ckpt["history"])
    return state


def load_stage(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[StageConfig, dict[str, torch.Tensor]]:
    """Config and weights of a stage's ``best.pt`` (or ``last.pt``)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    # shipped weights are stored in float16 (ecgcmr.pretrained): models compute in float32
    weights = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return StageConfig.from_json(ckpt["config"]), weights


# --------------------------------------------------------------------------- csv helpers
def _append_csv(path: Path, row: dict[str, object]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, key: str, keep_below: int) -> None:
    """Drop rows written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    kept = [r for r in rows if int(float(r[key])) < keep_below]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
