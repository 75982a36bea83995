"""Small pretrained weights shipped with the package, so a class can skip the wait.

``ecgcmr/weights/<profile>/`` holds the best checkpoints of stages A (one CMR encoder per
phase), B (ECG masked autoencoder) and C (dual-phase alignment) of one run of this project's
own code on its own synthetic cohort, stored in float16 (they load into float32 models), with
``card.json`` (what each file is, its sha256, the training command and the validation metrics)
and ``MODEL_CARD.md`` (the same for people). They come from **synthetic data** and are not for
any clinical use.

Notebook 02 with ``use_pretrained=True`` takes them instead of training; a stage the weights
do not cover (e.g. stage C for ``method="ed"``) is trained as usual from the shipped stages
it builds on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ecgcmr.stages import StageConfig, check_same_stage
from ecgcmr.train import load_stage

WEIGHTS_ROOT = Path(__file__).parent / "weights"
CARD = "card.json"


def file_name(cfg: StageConfig) -> str:
    """The shipped file name of a stage configuration."""
    if cfg.stage == "cmr":
        return f"stage_a_cmr_{cfg.phase}.pt"
    if cfg.stage == "ecg":
        return "stage_b_ecg_mae.pt"
    return f"stage_c_align_{cfg.method}.pt"


def card(profile: str) -> dict[str, object]:
    """The ``card.json`` of a profile's shipped weights (FileNotFoundError if none)."""
    path = WEIGHTS_ROOT / profile / CARD
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_ROOT.iterdir() if (p / CARD).is_file()) \
            if WEIGHTS_ROOT.is_dir() else []
        raise FileNotFoundError(f"no pretrained weights are shipped for profile {profile!r} "
                                f"(shipped: {shipped or 'none'}); set use_pretrained=False")
    return json.loads(path.read_text())


def shipped_checkpoint(cfg: StageConfig, profile: str) -> Path | None:
    """The shipped checkpoint of exactly this stage configuration, or None if not shipped.

    The configuration must match the one the weights were trained with (seed, sizes, epochs,
    optimiser, method...): weights of another configuration are never passed off as this one.
    """
    entry = card(profile)["files"].get(file_name(cfg))
    if entry is None:
        return None
    path = WEIGHTS_ROOT / profile / entry["file"]
    check_same_stage(entry["config"], cfg, f"the shipped weights {path.name} of profile "
                     f"{profile!r} (use the profile's defaults, or use_pretrained=False)")
    if sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} does not match its sha256 in {CARD}: the file is damaged")
    return path


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


def export_weights(profile: str, best_checkpoints: list[str | Path], *, command: str,
                   out_root: str | Path = WEIGHTS_ROOT) -> Path:
    """Export stage ``best.pt`` files into ``<out_root>/<profile>/`` (named by
    :func:`file_name`) and write its ``card.json`` (metrics are added by the caller)."""
    folder = Path(out_root) / profile
    files = {}
    for best in best_checkpoints:
        name = file_name(load_stage(best)[0])
        files[name] = export_checkpoint(best, folder / name)
    (folder / CARD).write_text(json.dumps({"profile": profile, "command": command,
                                           "files": files}, indent=2))
    return folder
