"""Torch datasets over the preprocessing cache, with augmentations that are parameters.

``PairedDataset`` serves ``(ecg, cmr_ed, cmr_es)`` triples::

    ecg     (12, 5000) float32   preprocessed, leads in ecgcmr.constants.LEADS order
    cmr_ed  (1, D, H, W) float32 ED volume on the cache grid (channel axis first)
    cmr_es  (1, D, H, W) float32

and, when ``targets`` are named, a fourth item: a float32 vector of those manifest columns
(NaN where missing; losses mask NaNs). Augmentation draws come from
``default_rng([seed, epoch, index])``, so a sample's augmentation is the same on every
machine, with any number of DataLoader workers; call ``set_epoch`` once per epoch (and give
an augmented dataset workers that do not outlive an epoch: ``ecgcmr.train.loader_options``).
Validation and test sets are built with ``augment=None`` (the evaluation transform).

With ``cmr_trunk`` a CMR field is served as the frozen trunk features of its volume
(:mod:`ecgcmr.trunk_cache`) instead of the volume: ``(C, D, h, w)`` float32, the variant
(as stored, or flipped) picked by the same draw that would have flipped the volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ecgcmr.data.cache import Cache, open_cache

#: How CMR volumes are augmented in training:
#: ``random`` — intensity factor, Gaussian noise and in-plane shift (the fields of Augment);
#: ``flip``   — a left-right flip (last axis) with probability 1/2 and nothing else: the
#:              ``RandomHorizontalFlip`` of the authors' public stage-C code (``train_cl.py``),
#:              stage C's default (``StageConfig.cmr_augment``);
#: ``none``   — the volume as stored.
#: ``flip`` and ``none`` give each volume a finite set of variants (2 and 1), so a frozen
#: network's output on them can be computed once and cached (ecgcmr.trunk_cache).
CMR_AUGMENTS: tuple[str, ...] = ("random", "flip", "none")
CMR_VARIANTS: dict[str, int] = {"flip": 2, "none": 1}


@dataclass(frozen=True)
class Augment:
    """Random training-time transforms; each set to its neutral value switches it off."""

    ecg_scale: tuple[float, float] = (0.9, 1.1)   # global amplitude factor, uniform
    ecg_noise_sd: float = 0.05                      # Gaussian noise, in z-score units
    ecg_shift_max: int = 250                        # circular time shift, samples (0.5 s)
    cmr_augment: str = "random"                     # one of CMR_AUGMENTS (see there)
    cmr_intensity: tuple[float, float] = (0.9, 1.1)  # "random": global intensity factor
    cmr_noise_sd: float = 0.02                      # "random": Gaussian noise, normalised units
    cmr_shift_max: int = 4                          # "random": in-plane shift, voxels (zero fill)

    def __post_init__(self) -> None:
        if self.cmr_augment not in CMR_AUGMENTS:
            raise ValueError(f"Augment.cmr_augment must be one of {CMR_AUGMENTS}, "
                             f"got {self.cmr_augment!r}")
        for name in ("ecg_scale", "cmr_intensity"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"Augment.{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        for name in ("ecg_noise_sd", "cmr_noise_sd", "ecg_shift_max", "cmr_shift_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"Augment.{name} must be >= 0")

    def apply(self, arrays: dict[str, np.ndarray], rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
        """Augment the arrays of one item (keys from ``FIELDS``).

        Each field draws from its own child stream of ``rng``, so an ECG gets the same
        augmentation whether or not the CMR is loaded with it; ED and ES share one in-plane
        shift (or flip) so the pair stays aligned. (The public code flipped each phase on its
        own draw, so an ED could meet a mirrored ES in the ED-ES term; fixed here.)
        """
        ecg_rng, shared_rng, ed_rng, es_rng = rng.spawn(4)
        out = dict(arrays)
        if "ecg" in out:
            out["ecg"] = self.ecg(out["ecg"], ecg_rng)
        cmr_fields = {f: r for f, r in (("cmr_ed", ed_rng), ("cmr_es", es_rng)) if f in out}
        if self.cmr_augment == "random":
            m = self.cmr_shift_max
            shift = (int(shared_rng.integers(-m, m + 1)), int(shared_rng.integers(-m, m + 1)))
            for field, field_rng in cmr_fields.items():
                out[field] = self.cmr(out[field], shift, field_rng)
        elif self._draw_variant(shared_rng) == 1:
            for field in cmr_fields:
                out[field] = flip_left_right(out[field])
        return out

    @property
    def cmr_variants(self) -> int | None:
        """How many different CMR volumes this augmentation makes of one (None: unbounded)."""
        return CMR_VARIANTS.get(self.cmr_augment)

    def check_finite_variants(self) -> None:
        """Refuse an augmentation without a finite set of CMR variants: cached trunk features
        (ecgcmr.trunk_cache) exist only for ``flip`` and ``none``."""
        if self.cmr_variants is None:
            raise ValueError(f"cached CMR trunk features need a CMR augmentation with a finite "
                             f"set of variants ('flip' or 'none'), not {self.cmr_augment!r}")

    def cmr_variant(self, rng: np.random.Generator) -> int:
        """The CMR variant :meth:`apply` gives an item: 0 as stored, 1 flipped.

        ``rng`` must be seeded like the one :meth:`apply` gets (a fresh generator from the
        same seed): this is then the very draw ``apply`` makes (its second child stream, the
        one ED and ES share). Only for ``flip``/``none``.
        """
        self.check_finite_variants()
        return self._draw_variant(rng.spawn(4)[1])

    def _draw_variant(self, shared_rng: np.random.Generator) -> int:
        return int(shared_rng.integers(2)) if self.cmr_augment == "flip" else 0

    def ecg(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(12, T) -> (12, T)."""
        x = x * rng.uniform(*self.ecg_scale)
        if self.ecg_shift_max:
            x = np.roll(x, int(rng.integers(-self.ecg_shift_max, self.ecg_shift_max + 1)), axis=-1)
        if self.ecg_noise_sd:
            x = x + rng.normal(0.0, self.ecg_noise_sd, size=x.shape)
        return x

    def cmr(self, x: np.ndarray, shift: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """(D, H, W) -> (D, H, W); ``shift`` is shared by ED and ES so the pair stays aligned."""
        x = _shift_zero_fill(x * rng.uniform(*self.cmr_intensity), shift)
        if self.cmr_noise_sd:
            x = x + rng.normal(0.0, self.cmr_noise_sd, size=x.shape)
        return x


def flip_left_right(x: np.ndarray) -> np.ndarray:
    """Mirror the last axis (the image columns): ``(..., W) -> (..., W)``."""
    return x[..., ::-1]


def _shift_zero_fill(x: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Translate the last two axes by ``shift`` voxels, filling with zeros (no wrap-around)."""
    out = np.zeros_like(x)
    (dy, dx), (h, w) = shift, x.shape[-2:]
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


#: What a dataset item can hold, in this order.
FIELDS: tuple[str, ...] = ("ecg", "cmr_ed", "cmr_es")


class PairedDataset(Dataset):
    """(ECG, CMR ED, CMR ES[, targets]) for one split of a preprocessing cache.

    ``fields`` picks a subset (e.g. ``("ecg",)`` for the ECG masked autoencoder, which then
    reads no CMR from disk); the order of the returned tensors follows ``FIELDS``. Only
    subjects that have every field asked for are served: a CMR-only subject (``has_ecg``
    False) never reaches an ECG field, an ECG-only one (``has_cmr`` False) never a CMR field.
    """

    def __init__(
        self,
        cache: Cache | str | Path,
        split: str | None = "train",
        *,
        augment: Augment | None = None,
        targets: Sequence[str] = (),
        seed: int = 0,
        fields: Sequence[str] = FIELDS,
        cmr_trunk: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        unknown = set(fields) - set(FIELDS)
        if unknown or not fields:
            raise ValueError(f"fields must be a non-empty subset of {FIELDS}, got {fields}")
        self.fields = tuple(fields)
        # field -> (N rows, variants, C, D, h, w) trunk features, served instead of volumes
        self.cmr_trunk = dict(cmr_trunk or {})
        if not set(self.cmr_trunk) <= set(self.fields) & {"cmr_ed", "cmr_es"}:
            raise ValueError(f"cmr_trunk keys must be CMR fields of this dataset "
                             f"{self.fields}, got {sorted(self.cmr_trunk)}")
        if self.cmr_trunk and augment is not None:
            augment.check_finite_variants()
        self.cache = cache if isinstance(cache, Cache) else open_cache(cache)
        subjects = self.cache.rows(split)
        if "ecg" in self.fields and "has_ecg" in subjects.columns:  # CMR-only subjects
            subjects = subjects[subjects["has_ecg"]]
        if {"cmr_ed", "cmr_es"} & set(self.fields) and "has_cmr" in subjects.columns:
            subjects = subjects[subjects["has_cmr"]]        # ECG-only subjects (zero volumes)
        self.subjects = subjects.reset_index(drop=True)
        missing = [t for t in targets if t not in self.subjects.columns]
        if missing:
            raise KeyError(f"target columns not in the cache index: {missing}")
        self.targets = tuple(targets)
        self._target_values = self.subjects[list(self.targets)].to_numpy(np.float32) \
            if self.targets else None
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draws (call once per epoch, before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def subject_ids(self) -> list[str]:
        return self.subjects["subject_id"].tolist()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        row = int(self.subjects.at[i, "row"])
        arrays = {f: np.asarray(getattr(self.cache, f)[row], dtype=np.float32)
                  for f in self.fields if f not in self.cmr_trunk}  # ecg (12, T); cmr (D, H, W)
        if self.augment is not None:
            arrays = self.augment.apply(arrays, self._rng(i))
        out = []
        for f in self.fields:
            if f in self.cmr_trunk:          # (C, D, h, w): the variant apply() would have made
                variant = self.augment.cmr_variant(self._rng(i)) if self.augment else 0
                x = torch.from_numpy(np.array(self.cmr_trunk[f][row, variant], np.float32))
            else:
                x = torch.from_numpy(np.ascontiguousarray(arrays[f], dtype=np.float32))
                x = x if f == "ecg" else x[None]             # volumes get a channel axis
            out.append(x)
        out = tuple(out)
        if self._target_values is not None:
            out = (*out, torch.from_numpy(self._target_values[i]))
        return out

    def _rng(self, i: int) -> np.random.Generator:
        """Item ``i``'s augmentation generator this epoch (the same on every machine)."""
        return np.random.default_rng([self.seed, self.epoch, i])
