"""Pretrained weights shipped with the package, so a class can skip the wait and the default
run can compare every method without training one.

``ecgcmr/weights/<profile>/seed<k>/`` holds one *set*: everything one training seed gives —
the stage-A CMR encoders (one per phase), the stage-B ECG masked autoencoder and stage C of
each aligned method — trained by :func:`train_weight_set` (``ecgcmr weights``) from one commit
of this project's own code on its own synthetic cohort. Files are stored in float16 (they load
into float32 models); stage C is trained from the *shipped* (float16) stage A and B files, so
the shipped chain repeats exactly from what is shipped. Beside them: ``card.json`` (each file's
sha256 and stage configuration, the command, the commit, the training record of each stage:
epochs, best epoch, whether early stopping fired, the first logged steps; the held-out metrics)
with ``curves/`` (each stage's per-epoch validation record) and ``MODEL_CARD.md``, rendered from
``card.json`` by :func:`render_model_card`. They come from **synthetic data** and are not for
any clinical use.

Notebook 02 with ``use_pretrained=True`` takes a shipped file instead of training a stage when
its configuration is exactly the one asked for (:func:`shipped_checkpoint`); anything else is
trained as usual.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from ecgcmr.config import get_profile
from ecgcmr.constants import PAPER_PHENOTYPES
from ecgcmr.data.cache import Cache
from ecgcmr.methods import get_method
from ecgcmr.stages import StageConfig, check_same_stage, stage_dir
from ecgcmr.train import load_stage

WEIGHTS_ROOT = Path(__file__).parent / "weights"
CARD = "card.json"
MODEL_CARD = "MODEL_CARD.md"
FIRST_STEPS = 5          # logged training steps kept in the card (what a retrain must repeat)
NOT_CLINICAL = "trained on synthetic data; not for clinical use"


def file_name(cfg: StageConfig) -> str:
    """The shipped file name of a stage configuration."""
    if cfg.stage == "cmr":
        return f"stage_a_cmr_{cfg.phase}.pt"
    if cfg.stage == "ecg":
        return "stage_b_ecg_mae.pt"
    return f"stage_c_align_{cfg.method}.pt"


def set_dir(profile: str, seed: int, root: str | Path = WEIGHTS_ROOT) -> Path:
    """The folder of the set of training seed ``seed`` of ``profile``."""
    return Path(root) / profile / f"seed{seed}"


def shipped_sets(root: str | Path = WEIGHTS_ROOT) -> list[tuple[str, int]]:
    """(profile, seed) of every shipped set."""
    return sorted((p.parent.parent.name, int(p.parent.name.removeprefix("seed")))
                  for p in Path(root).glob(f"*/seed*/{CARD}"))


def comparison_grid(profile: str, root: str | Path = WEIGHTS_ROOT
                    ) -> tuple[list[str], list[int]]:
    """The methods and training seeds of the default comparison (``ecgcmr reproduce
    --compare``): every method shipped in *every* set of ``profile`` (so each method has the
    same seeds, and no cell trains), plus ``random`` (nothing to ship), on every shipped seed.
    ValueError, naming what is shipped, when ``profile`` has no set."""
    from ecgcmr.methods import METHODS

    seeds = [s for p, s in shipped_sets(root) if p == profile]
    if not seeds:
        raise ValueError(f"no pretrained weights are shipped for profile {profile!r} (shipped: "
                         f"{sorted(set(p for p, _ in shipped_sets(root))) or 'none'}); "
                         "train them with `ecgcmr weights` or run a grid with --set method=...")
    everywhere = set.intersection(*(set(card(profile, s, root)["methods"]) for s in seeds))
    return [m for m in METHODS if m in everywhere or m == "random"], seeds


def card(profile: str, seed: int = 0, root: str | Path = WEIGHTS_ROOT) -> dict[str, object]:
    """The ``card.json`` of a shipped set (FileNotFoundError, naming what is shipped, if none)."""
    path = set_dir(profile, seed, root) / CARD
    if not path.is_file():
        shipped = [f"{p} seed {s}" for p, s in shipped_sets(root)]
        raise FileNotFoundError(f"no pretrained weights are shipped for profile {profile!r} "
                                f"seed {seed} (shipped: {', '.join(shipped) or 'none'}); "
                                f"set use_pretrained=False")
    return json.loads(path.read_text())


def shipped_checkpoint(cfg: StageConfig, profile: str, root: str | Path = WEIGHTS_ROOT, *,
                       cache: Cache | None = None) -> Path | None:
    """The shipped checkpoint of exactly this stage configuration, or None if not shipped.

    The set of the configuration's seed must hold the stage, trained with the same
    configuration (sizes, epochs, optimiser, method...): weights of another configuration are
    never passed off as this one, and a differing one is an error that names the difference.
    With ``cache``, also None (saying so) unless the set was trained on exactly that cohort
    (:meth:`ecgcmr.data.cache.Cache.content_key`): weights of the default synthetic world are
    no result for another world (a control's) or another cohort.
    """
    try:
        info = card(profile, cfg.seed, root)
    except FileNotFoundError:
        return None
    entry = info["files"].get(file_name(cfg))
    if entry is None:
        return None
    path = set_dir(profile, cfg.seed, root) / entry["file"]
    check_same_stage(entry["config"], cfg, f"the shipped weights {path.name} of profile "
                     f"{profile!r} (use the profile's defaults, or use_pretrained=False)")
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} does not match its sha256 in {CARD}: the file is damaged")
    if cache is not None and cache.content_key() != info["cohort"]["content_key"]:
        print(f"{cfg.stage}: the shipped {profile} weights of seed {cfg.seed} were trained on "
              "another cohort, so they are not used here")
        return None
    return path


def shipped_validation(path: str | Path) -> dict[str, float]:
    """The validation metrics of a shipped file as its set's card records them: what
    :func:`ecgcmr.pretrain.evaluate_stage` measured from that file on the cohort the set was
    trained on, the only cohort :func:`shipped_checkpoint` hands it out for (so measuring
    again would give the same numbers; ``tests/test_pretrained.py`` checks that it does)."""
    path = Path(path)
    return json.loads((path.parent / CARD).read_text())["metrics"]["validation"][path.name]


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_checkpoint(best_pt: str | Path, out_path: str | Path) -> dict[str, object]:
    """Write a stage's ``best.pt`` as a shipped file: weights in float16, the stage config
    kept. Returns its card entry (file, sha256, config, parameter count)."""
    cfg, weights = load_stage(best_pt)
    small = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_json(), "model": small}, out_path)
    return {"file": out_path.name, "sha256": sha256(out_path), "config": cfg.to_json(),
            "n_values": int(sum(v.numel() for v in weights.values()))}


def set_configs(profile: str, seed: int, methods: Sequence[str]) -> list[StageConfig]:
    """The stage configurations a set for ``methods`` holds, in training order: stage A of
    every phase an aligned method reads, stage B when a method uses the MAE, stage C of each
    aligned method (the profile's recipe throughout)."""
    prof = get_profile(profile)
    chosen = [get_method(m) for m in methods]
    phases = sorted({p for m in chosen if m.aligned for p in m.phases})
    configs = [prof.stage_config("cmr", seed=seed, phase=p) for p in phases]
    if any(m.uses_mae for m in chosen):
        configs.append(prof.stage_config("ecg", seed=seed))
    configs += [prof.stage_config("align", seed=seed, method=m.name) for m in chosen
                if m.aligned]
    return configs


def train_weight_set(cache: Cache, profile: str, seed: int, methods: Sequence[str], *,
                     work_dir: str | Path, command: str, provenance: Mapping[str, object],
                     root: str | Path = WEIGHTS_ROOT, progress: bool = True,
                     **fit_kw: object) -> Path:
    """Train, export and describe the set of ``seed`` for ``methods`` into
    ``<root>/<profile>/seed<seed>/``; returns that folder.

    Each stage is trained in ``work_dir`` (resumable: a finished stage is reused), exported
    in float16, and stage C starts from the exported stage A and B files. Then every file's
    validation metrics are measured from the exported file, and each method's linear probes
    of the paper's phenotypes on the test split; ``card.json`` and ``MODEL_CARD.md`` record
    it all. ``command`` and ``provenance`` (commit, machine) say what made it.
    """
    from ecgcmr.pretrain import train_stage

    folder = set_dir(profile, seed, root)
    folder.mkdir(parents=True, exist_ok=True)
    files, training = {}, {}
    starts = {}     # the exported stage A (per phase) and B ("ecg") files stage C starts from
    for cfg in set_configs(profile, seed, methods):
        init = {}
        if cfg.stage == "align":
            init = {k: starts[k] for k in (*get_method(cfg.method).phases, "ecg")}
        result = train_stage(cache, cfg, stage_dir(Path(work_dir), cfg), init=init,
                             progress=progress, **fit_kw)
        name = file_name(cfg)
        files[name] = export_checkpoint(result.out_dir / "best.pt", folder / name)
        if cfg.stage != "align":
            starts[cfg.phase if cfg.stage == "cmr" else "ecg"] = folder / name
        (folder / "curves").mkdir(exist_ok=True)
        shutil.copy2(result.out_dir / "epochs.csv", folder / "curves" / f"{Path(name).stem}.csv")
        steps = pd.read_csv(result.out_dir / "steps.csv")
        training[name] = {"epochs_allowed": cfg.optim.epochs, "patience": cfg.optim.patience,
                          "epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1,
                          "stopped_early": result.stopped_early,
                          "best_val_loss": result.best_val_loss,
                          # the optimiser steps' time (from their logged rates; validation
                          # excluded), also for a stage reused from an earlier session
                          "train_s": round(float((cfg.optim.batch_size
                                                  / steps["samples_per_s"]).sum()), 1),
                          "first_steps": steps[["step", "loss"]].head(FIRST_STEPS)
                          .to_dict("records")}
    info = {"profile": profile, "seed": seed, "methods": list(methods), "command": command,
            "provenance": dict(provenance), "use": NOT_CLINICAL,
            "cohort": {"cache": cache.root.name, "content_key": cache.content_key(),
                       "n": {s: len(cache.rows(s)) for s in ("train", "val", "test")}},
            "files": files, "training": training,
            "metrics": measure_weight_set(cache, folder, files, methods, seed)}
    (folder / CARD).write_text(json.dumps(info, indent=2) + "\n")
    (folder / MODEL_CARD).write_text(render_model_card(info))
    return folder


def measure_weight_set(cache: Cache, folder: str | Path, files: Mapping[str, Mapping],
                       methods: Sequence[str], seed: int) -> dict[str, object]:
    """Held-out metrics of a set, measured from its shipped files: each file's validation
    metrics (:func:`ecgcmr.pretrain.evaluate_stage`) and, per method, the test-split R² of
    the linear probes of the paper's phenotypes on the frozen ECG embeddings."""
    from ecgcmr.evaluate.phenotypes import linear_probes, r2_score
    from ecgcmr.pretrain import embed_ecg, evaluate_stage, load_ecg_encoder

    folder = Path(folder)
    validation = {name: evaluate_stage(cache, folder / name) for name in files}
    probes = {}
    for method in methods:
        m = get_method(method)
        if not (m.aligned or m.uses_mae):       # random: nothing trained, nothing shipped
            continue
        source = file_name(StageConfig(stage="align", method=method) if m.aligned
                           else StageConfig(stage="ecg"))
        features = embed_ecg(load_ecg_encoder(folder / source), cache, device="cpu")
        preds = linear_probes(features, cache.rows(), list(PAPER_PHENOTYPES), seed=seed)
        probes[method] = {t: float(r2_score(g["y_true"].to_numpy(), g["y_pred"].to_numpy()))
                          for t, g in preds.groupby("target")}
    return {"validation": validation, "probe_test_r2": probes}


def render_model_card(info: Mapping[str, object]) -> str:
    """``MODEL_CARD.md`` of a set, written from its ``card.json`` only (never by hand)."""
    n = info["cohort"]["n"]
    lines = [
        f"# Model card: ecgcmr {info['profile']} weights, training seed {info['seed']}", "",
        f"**{NOT_CLINICAL[0].upper() + NOT_CLINICAL[1:]}.** These weights were trained by this "
        "project's own code on the cohort its generator makes; they have never seen a real ECG "
        "or a real CMR, and nothing they output says anything about a real person.", "",
        f"- Command: `{info['command']}`",
        f"- Commit: `{info['provenance'].get('git_sha', '?')}`"
        + (" (with uncommitted changes)" if info["provenance"].get("git_dirty") else ""),
        f"- Machine: {info['provenance'].get('platform', '?')}, "
        f"{info['provenance'].get('cpu_count', '?')} CPUs, {info['provenance'].get('device')}",
        f"- Cohort: cache `{info['cohort']['cache']}`: {n['train']} training, {n['val']} "
        f"validation, {n['test']} test subjects",
        f"- Methods: {', '.join(info['methods'])}", "",
        "## Files and training", "",
        "| file | stage | values | epochs run / allowed | best epoch | early stop | "
        "best validation loss | training steps (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in info["files"].items():
        t = info["training"][name]
        lines.append(f"| `{name}` | {entry['config']['stage']} | {entry['n_values']:,} | "
                     f"{t['epochs_run']} / {t['epochs_allowed']} | {t['best_epoch']} | "
                     f"{'yes' if t['stopped_early'] else 'no'} | {t['best_val_loss']:.4f} | "
                     f"{t['train_s']:.0f} |")
    lines += ["", "Weights are stored in float16 and load into float32 models; stage C was "
              "trained from the float16 stage A and B files above. Per-epoch validation "
              "curves: `curves/`. Each file's configuration and sha256: `card.json`.", "",
              "## Held-out metrics (measured from the shipped files)", "",
              "| file | validation metric | value |", "|---|---|---|"]
    for name, metrics in info["metrics"]["validation"].items():
        for key, value in metrics.items():
            lines.append(f"| `{name}` | {key} | {value:.4f} |")
    probes = info["metrics"]["probe_test_r2"]
    if probes:
        targets = sorted({t for r in probes.values() for t in r})
        lines += ["", "Linear probe on the frozen ECG embeddings, R² on the test split:", "",
                  "| method | " + " | ".join(targets) + " |",
                  "|---|" + "---|" * len(targets)]
        lines += [f"| {m} | " + " | ".join(f"{r[t]:.3f}" for t in targets) + " |"
                  for m, r in probes.items()]
    lines += ["", "## Intended use", "",
              "Teaching, demonstrations and the default comparison of the notebook series "
              "(`use_pretrained=True`), on the synthetic cohort they were trained on. Out of "
              "scope: anything involving real people.", ""]
    return "\n".join(lines)
