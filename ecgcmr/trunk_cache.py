"""Frozen CMR trunk features for stage C, computed once per stage-A checkpoint.

In stage C each CMR encoder is frozen up to its last stage (DESIGN §5: only the last layer and
the projection heads train), and its BatchNorm statistics stay those of stage A. The frozen
part — the *trunk*, :meth:`ecgcmr.models.CmrEncoder.forward_trunk` — is then a fixed function
of the volume. When the CMR augmentation has a finite set of variants (``"flip"``: as stored
and mirrored; ``"none"``: as stored), every variant's trunk output can be computed once and
read back in every epoch: stage C then runs only the ECG encoder, the CMR encoders' last
stages and the heads, and reads ``C × D × h × w`` floats per phase instead of a volume.

File: ``<cache>/trunk_features/<phase>-<checkpoint sha[:16]>-v<variants>-r<rows sha[:12]>.npy``,
``(N rows, variants, C, D, h, w)`` float32, computed for the cache rows of the subjects that
passed QC (the others stay zero; the datasets never serve them). Keyed by the checkpoint's
bytes, so another stage-A run never reuses it, and by the rows it covers: cache rows never
change once written (:mod:`ecgcmr.data.cache`), but a cache built again for an extended
manifest has more of them. Written under a lock and renamed into place, so parallel runs build
it once and an interrupted build leaves nothing half written.

Whether it pays depends on sizes (:func:`worth_caching`): at the ``teaching`` size one
variant's trunk output is a quarter of the volume's values (12,288 of 49,152), at the paper's
it is 4 volumes (1024 × 14 × 6 × 6), where reading it would cost more than the convolutions
it saves. Features are float32 (volumes are float16): that keeps the cached path's loss equal
to the live one's (tested), which float16 would not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ecgcmr.data.cache import Cache
from ecgcmr.data.dataset import flip_left_right
from ecgcmr.files import exclusive
from ecgcmr.models import CmrEncoder
from ecgcmr.train import autocast_for

FOLDER = "trunk_features"


def trunk_shape(encoder: CmrEncoder, volume_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """``(C, D, h, w)`` of the trunk's output for one ``(D, H, W)`` volume."""
    with torch.no_grad():
        was_training = encoder.training
        encoder.eval()
        out = encoder.forward_trunk(torch.zeros(1, 1, *volume_shape))
        encoder.train(was_training)
    return tuple(out.shape[1:])


def worth_caching(encoder: CmrEncoder, volume_shape: tuple[int, int, int],
                  variants: int) -> bool:
    """True when all variants' trunk features take no more values than the volume itself, so
    reading them costs no more than reading the volume, and the trunk's convolutions are
    saved."""
    return variants * int(np.prod(trunk_shape(encoder, volume_shape))) <= int(
        np.prod(volume_shape))


def trunk_features(cache: Cache, phase: str, encoder: CmrEncoder, checkpoint: str | Path,
                   variants: int, *, device: torch.device | str = "cpu",
                   batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """The trunk features of every cached ``phase`` volume (memory-mapped, read-only).

    ``encoder`` must hold the weights of ``checkpoint`` (the stage-A file of this phase).
    Variant 0 is the volume as stored, variant 1 (``variants=2``) its left-right mirror —
    the same :func:`ecgcmr.data.dataset.flip_left_right` the ``flip`` augmentation applies.
    """
    if phase not in ("ed", "es") or variants not in (1, 2):
        raise ValueError(f"phase must be 'ed' or 'es' and variants 1 or 2, got {phase!r}, "
                         f"{variants}")
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    rows = np.sort(cache.rows()["row"].to_numpy()).astype(np.int64)
    covered = hashlib.sha256(rows.tobytes() + str(len(getattr(cache, f"cmr_{phase}"))).encode()
                             ).hexdigest()[:12]
    path = cache.root / FOLDER / f"{phase}-{digest}-v{variants}-r{covered}.npy"
    with exclusive(path.parent):
        if not path.is_file():
            _compute(cache, phase, encoder, variants, rows, path, torch.device(device),
                     batch_size, progress)
    return np.load(path, mmap_mode="r")


@torch.no_grad()
def _compute(cache: Cache, phase: str, encoder: CmrEncoder, variants: int, rows: np.ndarray,
             path: Path, device: torch.device, batch_size: int, progress: bool) -> None:
    volumes = getattr(cache, f"cmr_{phase}")                    # (N, D, H, W) memory map
    encoder = encoder.to(device).eval()
    shape = (volumes.shape[0], variants, *trunk_shape(encoder, volumes.shape[1:]))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    bar = tqdm(total=len(rows), desc=f"CMR trunk features ({phase.upper()}, {variants} "
               f"variant{'s' * (variants > 1)})", disable=not progress, leave=False)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        x = np.asarray(volumes[chunk], dtype=np.float32)        # (b, D, H, W)
        for v in range(variants):
            batch = torch.from_numpy(np.ascontiguousarray(flip_left_right(x) if v else x))
            with autocast_for(device):   # the training loop's precision: both paths match
                h = encoder.forward_trunk(batch[:, None].to(device))
            out[chunk, v] = h.float().cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    out.flush()
    del out
    os.replace(tmp, path)


__all__ = ["FOLDER", "trunk_features", "trunk_shape", "worth_caching"]
