"""Pretraining recipes: the stages of DESIGN §5 wired to the cache, for the methods of
:mod:`ecgcmr.methods`.

Stage A (one CMR encoder per phase) and stage B (ECG MAE) do not depend on the method, so
their checkpoints live in ``data/models/<cache>/<stage>-<identity>/``
(:func:`ecgcmr.stages.stage_dir`) and are reused by every method and run with the same
settings; stage C is written to the run folder. Each phase loads its *own* stage-A checkpoint
(a quirk of the public code, which loaded one, is fixed here).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ecgcmr import distributed as dist
from ecgcmr.data.cache import Cache
from ecgcmr.data.dataset import PairedDataset
from ecgcmr.files import exclusive
from ecgcmr.methods import get_method
from ecgcmr.models import CmrEncoder, build_ecg_encoder
from ecgcmr.stages import StageConfig, check_same_stage
from ecgcmr.train import (
    AlignTask,
    CmrRegressionTask,
    EcgMaeTask,
    FitResult,
    Task,
    fit,
    load_stage,
    pick_device,
)
from ecgcmr.trunk_cache import trunk_features, worth_caching

TRUNK_CACHE_CHOICES: tuple[str, ...] = ("auto", "on", "off")


def datasets(cache: Cache, task: Task, cfg: StageConfig,
             cmr_trunk: dict[str, np.ndarray] | None = None,
             ) -> tuple[PairedDataset, PairedDataset]:
    """Train (augmented if asked) and validation (never augmented) datasets for a task.

    ``cmr_trunk`` (stage C): field -> cached trunk features, served instead of the volumes.
    """
    common = {"fields": task.fields, "targets": task.targets, "seed": cfg.seed,
              "cmr_trunk": cmr_trunk}
    train = PairedDataset(cache, "train", augment=cfg.augmentation(), **common)
    val = PairedDataset(cache, "val", augment=None, **common)
    return train, val


def _n_slices(cache: Cache) -> int:
    return int(cache.cmr_ed.shape[1])


def _target_stats(cache: Cache, targets: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    y = cache.rows("train")[list(targets)].to_numpy(np.float64)
    mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    return torch.tensor(mean), torch.tensor(np.where(std > 0, std, 1.0))


def train_stage(cache: Cache, cfg: StageConfig, out_dir: str | Path, *,
                init: dict[str, str | Path] | None = None, resume: bool = True,
                trunk_cache: str = "auto", **fit_kw: object) -> FitResult:
    """Build the task of ``cfg.stage`` and fit it; finished stages are not retrained.

    ``init`` (stage C): paths of the stage-A ``best.pt`` per phase (``"ed"``, ``"es"``) and of
    the stage-B ``best.pt`` (``"ecg"``, optional: without it the ECG encoder starts random).
    ``trunk_cache`` (stage C): read the frozen CMR trunks' outputs from
    :mod:`ecgcmr.trunk_cache` instead of running them — ``"auto"`` where that reads no more
    than the volumes would (:func:`ecgcmr.trunk_cache.worth_caching`), ``"on"``, ``"off"``.
    A speed option: the loss is the same either way (tested).
    """
    done = Path(out_dir) / "done.json"
    init = init or {}
    # parallel runs sharing a stage wait for the first to finish it (not under DDP, where all
    # ranks of one run work on it together)
    lock = contextlib.nullcontext() if dist.is_distributed() else exclusive(out_dir)
    with lock:
        saved = Path(out_dir) / "config.json"
        if saved.is_file():   # e.g. notebook 02 rerun in the same run folder with another method
            check_same_stage(json.loads(saved.read_text()), cfg, str(out_dir))
        if done.is_file():
            dist.seed_everything(cfg.seed)
            task = build_task(cache, cfg, init)
            _, weights = load_stage(Path(out_dir) / "best.pt")
            task.load_state_dict(weights)
            return FitResult(**{**json.loads(done.read_text()), "out_dir": Path(out_dir)})
        cmr_trunk = None
        if cfg.stage == "align":
            encoders = {p: load_cmr_encoder(init[p]) for p in get_method(cfg.method).phases}
            cmr_trunk = cmr_trunk_features(cache, cfg, encoders, init, trunk_cache,
                                           device=str(fit_kw.get("device", "auto")),
                                           progress=bool(fit_kw.get("progress", True)))
        dist.seed_everything(cfg.seed)   # the new layers' initial weights depend on the seed only
        task = build_task(cache, cfg, init, cmr_input="trunk" if cmr_trunk else "volume")
        train, val = datasets(cache, task, cfg, cmr_trunk)
        result = fit(task, cfg, train, val, out_dir, resume=resume, **fit_kw)
        if dist.is_main() and not result.partial:
            summary = {k: v for k, v in result.__dict__.items() if k != "out_dir"}
            done.write_text(json.dumps(summary, indent=2))
    return result


def cmr_trunk_features(cache: Cache, cfg: StageConfig, encoders: dict[str, CmrEncoder],
                       checkpoints: dict[str, str | Path], choice: str = "auto", *,
                       device: str = "auto", progress: bool = True,
                       ) -> dict[str, np.ndarray] | None:
    """Cached trunk features per CMR field (``cmr_ed``, ``cmr_es``) for a stage-C ``cfg``, or
    None where stage C should read volumes: ``choice`` is ``train_stage``'s ``trunk_cache``.
    ``encoders``: the stage-A encoder of each phase; ``checkpoints``: the file each one's
    weights come from (the features are keyed by it). A task then reads them when built with
    ``cmr_input="trunk"``."""
    if choice not in TRUNK_CACHE_CHOICES:
        raise ValueError(f"trunk_cache must be one of {TRUNK_CACHE_CHOICES}, got {choice!r}")
    if choice == "off" or not encoders:
        return None
    augment = cfg.augmentation()
    variants = 1 if augment is None else augment.cmr_variants
    if variants is None:
        if choice == "on":
            augment.check_finite_variants()      # raises, naming the augmentation
        return None
    volume_shape = tuple(cache.cmr_ed.shape[1:])
    if choice == "auto" and not all(worth_caching(e, volume_shape, variants)
                                    for e in encoders.values()):
        return None
    dev = pick_device(device)
    return {f"cmr_{phase}": trunk_features(cache, phase, encoder, checkpoints[phase], variants,
                                           device=dev, progress=progress)
            for phase, encoder in encoders.items()}


def obtain_stage(cache: Cache, cfg: StageConfig, out_dir: str | Path, *,
                 pretrained_profile: str | None = None,
                 init: dict[str, str | Path] | None = None,
                 **fit_kw: object) -> tuple[Path, FitResult | None]:
    """The best checkpoint of a stage, and its training result (None when not trained here).

    With ``pretrained_profile`` the weights shipped for that profile are used when they were
    trained with exactly this configuration on exactly this cohort (:mod:`ecgcmr.pretrained`);
    otherwise, or for a stage they do not cover, the stage is trained (or a finished one
    reused) in ``out_dir``.
    """
    if pretrained_profile:
        from ecgcmr.pretrained import shipped_checkpoint

        shipped = shipped_checkpoint(cfg, pretrained_profile, cache=cache)
        if shipped is not None:
            return shipped, None
    result = train_stage(cache, cfg, out_dir, init=init, **fit_kw)
    return result.out_dir / "best.pt", result


def _load_align_task(cache: Cache, best_pt: str | Path) -> tuple[StageConfig, AlignTask]:
    """A stage-C checkpoint's configuration and its task with the trained weights."""
    cfg, weights = load_stage(best_pt)
    return cfg, _align_task(cache, cfg, weights)


def _align_task(cache: Cache, cfg: StageConfig, weights: dict[str, torch.Tensor]) -> AlignTask:
    """The stage-C task of ``cfg`` holding ``weights`` (both CMR towers built for the cache)."""
    from ecgcmr.models import build_cmr_encoder

    cmr = {p: build_cmr_encoder(cfg.size, n_slices=_n_slices(cache)) for p in ("ed", "es")}
    task = AlignTask(cfg, build_ecg_encoder(cfg.ecg_encoder, cfg.size), cmr)
    task.load_state_dict(weights)
    return task


@torch.no_grad()
def evaluate_stage(cache: Cache, best_pt: str | Path, *, device: str = "cpu",
                   batch_size: int | None = None) -> dict[str, float]:
    """A checkpoint's validation metrics on the cache's validation split, as its stage
    reports them at each epoch: the loss of any stage, and for stage C the ECG→phase
    top-1/top-5 retrieval. Needs no training split (stage A's target scaling is read from
    the checkpoint)."""
    cfg, weights = load_stage(best_pt)
    if cfg.stage == "align":
        task = _align_task(cache, cfg, weights)
    else:
        task = (EcgMaeTask(cfg) if cfg.stage == "ecg" else
                CmrRegressionTask(cfg, int(weights["n_slices"]), weights["target_mean"],
                                  weights["target_std"]))
        task.load_state_dict(weights)
    dev = pick_device(device)
    _, val = datasets(cache, task, cfg)
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size or cfg.optim.batch_size,
                                         shuffle=False)
    return task.to(dev).evaluate(loader, dev)


@torch.no_grad()
def phase_retrieval(cache: Cache, best_pt: str | Path, *, device: str = "cpu",
                    batch_size: int = 32,
                    ecg_embedding: pd.DataFrame | None = None) -> pd.DataFrame:
    """ECG→ED and ECG→ES top-1/top-5 retrieval of any stage-C checkpoint on the validation
    split, one row per phase (``phase, tower, top1, top5, n``).

    A phase the method aligned with is embedded by its own tower (its CMR encoder and
    projection head). A phase it did not align with (ES for ``method="ed"``) is embedded by the
    tower it did align with: the retrieval then measures what single-phase alignment carries
    over to the other phase, without a second stage-A encoder that the method never trained.

    ``ecg_embedding``: :func:`embed_ecg`'s frame of this checkpoint's ECG encoder over the
    cache, when the caller has it (notebook 02 does): its validation rows are projected
    instead of running the ECG encoder over them a second time.
    """
    from ecgcmr.losses import retrieval_accuracy

    _, task = _load_align_task(cache, best_pt)
    dev = pick_device(device)
    task = task.to(dev).eval()
    # "ecg" stays a field with a given embedding too: it keeps the subjects those with an ECG
    val = PairedDataset(cache, "val", fields=("ecg", "cmr_ed", "cmr_es"))
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False)
    towers = {p: p if p in task.cmr else next(iter(task.cmr)) for p in ("ed", "es")}
    z: dict[str, list[torch.Tensor]] = {"ecg": [], "ed": [], "es": []}
    for ecg, ed, es in loader:
        if ecg_embedding is None:
            z["ecg"].append(task.proj["ecg"](task.ecg(ecg.to(dev))).float().cpu())
        for phase, x in (("ed", ed), ("es", es)):
            tower = towers[phase]
            z[phase].append(task.proj[tower](task.cmr[tower](x.to(dev))).float().cpu())
    if ecg_embedding is not None:
        z["ecg"] = [task.proj["ecg"](_rows_of(ecg_embedding, val.subjects["subject_id"])
                                     .to(dev)).float().cpu()]
    ecg_z = torch.cat(z["ecg"])
    rows = []
    for phase in ("ed", "es"):
        acc = retrieval_accuracy(ecg_z, torch.cat(z[phase]), k=(1, 5))
        rows.append({"phase": phase, "tower": towers[phase], "n": len(ecg_z),
                     **{k: float(v) for k, v in acc.items()}})
    return pd.DataFrame(rows)


def _rows_of(embedding: pd.DataFrame, subject_ids: pd.Series) -> torch.Tensor:
    """The embedding's feature columns (``e000 ...``) of ``subject_ids``, in that order; a
    subject the frame lacks is an error (the frame is of another cache)."""
    frame = embedding.set_index("subject_id")
    missing = subject_ids[~subject_ids.isin(frame.index)]
    if len(missing):
        raise ValueError(f"the ECG embedding has no row for {len(missing)} validation "
                         f"subject(s) of this cache (e.g. {missing.iloc[0]!r}): it was made "
                         "from another cache")
    values = frame.loc[subject_ids.to_numpy()].filter(regex=r"^e\d+$").to_numpy()
    return torch.from_numpy(values.astype("float32"))


def build_task(cache: Cache, cfg: StageConfig, init: dict[str, str | Path], *,
               cmr_input: str = "volume") -> Task:
    """The task of ``cfg.stage``; stage C's from the checkpoints of ``init`` (see
    :func:`train_stage`) and reading CMR as ``cmr_input`` (:class:`ecgcmr.train.AlignTask`)."""
    if cfg.stage == "cmr":
        return CmrRegressionTask(cfg, _n_slices(cache), *_target_stats(cache, cfg.targets))
    if cfg.stage == "ecg":
        return EcgMaeTask(cfg)
    cmr = {phase: load_cmr_encoder(path) for phase, path in init.items() if phase in ("ed", "es")}
    ecg = load_ecg_encoder(init["ecg"]) if init.get("ecg") else \
        build_ecg_encoder(cfg.ecg_encoder, cfg.size)
    return AlignTask(cfg, ecg, cmr, cmr_input=cmr_input)


def load_cmr_encoder(best_pt: str | Path) -> CmrEncoder:
    """The CMR encoder of a stage-A checkpoint."""
    cfg, weights = load_stage(best_pt)
    task = CmrRegressionTask(cfg, int(weights["n_slices"]), weights["target_mean"],
                             weights["target_std"])
    task.load_state_dict(weights)
    return task.encoder


def load_ecg_encoder(best_pt: str | Path) -> nn.Module:
    """The ECG encoder of a stage-B (MAE) or stage-C (alignment) checkpoint."""
    cfg, weights = load_stage(best_pt)
    encoder = build_ecg_encoder(cfg.ecg_encoder if cfg.stage == "align" else "vit", cfg.size)
    prefix = "mae.encoder." if cfg.stage == "ecg" else "ecg."
    encoder.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items()
                             if k.startswith(prefix)})
    return encoder


def ecg_encoder_for(method: str, *, seed: int, size: str, ecg_kind: str = "vit",
                    stage_b: str | Path | None = None,
                    stage_c: str | Path | None = None) -> nn.Module:
    """The ECG encoder a method yields (what the downstream notebooks evaluate): stage C's
    for an aligned method, stage B's masked autoencoder for one that uses it, else a seeded
    random initialisation."""
    m = get_method(method)
    if m.aligned:
        return load_ecg_encoder(stage_c)
    if m.uses_mae:
        if stage_b is None:
            raise ValueError(f"method {method!r} is the masked-autoencoder ViT of stage B; "
                             f"ecg_encoder={ecg_kind!r} has no stage B (use 'vit')")
        return load_ecg_encoder(stage_b)
    dist.seed_everything(seed)
    return build_ecg_encoder(ecg_kind, size)


ENCODER_SPEC = "encoder.json"   # in a run's embeddings/: how to rebuild the encoder it embedded with


def write_encoder_spec(folder: str | Path, method: str, *, seed: int, size: str,
                       ecg_kind: str = "vit", stage_b: str | Path | None = None,
                       stage_c: str | Path | None = None) -> Path:
    """Record which encoder a run evaluates (the arguments of :func:`ecg_encoder_for`), so
    later notebooks can rebuild it (e.g. to fine-tune it) without repeating notebook 02."""
    spec = {"method": method, "seed": seed, "size": size, "ecg_kind": ecg_kind,
            "stage_b": None if stage_b is None else str(stage_b),
            "stage_c": None if stage_c is None else str(stage_c)}
    path = Path(folder) / ENCODER_SPEC
    path.write_text(json.dumps(spec, indent=2))
    return path


def encoder_from_spec(folder: str | Path) -> nn.Module:
    """The ECG encoder recorded by :func:`write_encoder_spec` in ``folder``."""
    path = Path(folder) / ENCODER_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 02 of this run first")
    spec = json.loads(path.read_text())
    return ecg_encoder_for(spec.pop("method"), **spec)


@torch.no_grad()
def embed_ecg(encoder: nn.Module, cache: Cache, *, device: str = "auto",
              batch_size: int = 64) -> pd.DataFrame:
    """Frozen ECG embeddings of every subject that passed QC: one row per subject.

    Columns: ``subject_id``, ``split``, ``e000 ...`` (the encoder's pooled output, the
    representation the paper's downstream heads read).
    """
    dev = pick_device(device)
    encoder = encoder.to(dev).eval()
    ds = PairedDataset(cache, split=None, fields=("ecg",))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    parts = [encoder(ecg.to(dev)).float().cpu() for (ecg,) in loader]
    z = torch.cat(parts).numpy()
    frame = pd.DataFrame(z, columns=[f"e{i:03d}" for i in range(z.shape[1])])
    frame.insert(0, "split", ds.subjects["split"].to_numpy())
    frame.insert(0, "subject_id", ds.subjects["subject_id"].to_numpy())
    return frame


def with_epochs(cfg: StageConfig, epochs: int, warmup: int | None = None) -> StageConfig:
    """A copy with another number of epochs (warm-up scaled to stay the same fraction)."""
    warm = warmup if warmup is not None else round(cfg.optim.warmup_epochs * epochs
                                                   / cfg.optim.epochs)
    return replace(cfg, optim=replace(cfg.optim, epochs=epochs, warmup_epochs=warm))
