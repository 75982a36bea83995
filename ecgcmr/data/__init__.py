"""The data layer: manifest, loaders with QC, preprocessing cache, torch datasets.

Public API (used by the notebooks and by users with their own data)::

    read_manifest(path)   -> DataFrame, validated (every problem reported at once)
    load_ecg(path)        -> float32 (12, 5000) mV, leads in ecgcmr.constants.LEADS order
    load_cmr(path)        -> float32 (D, H, W) on the fixed grid
    build_cache / open_cache, PairedDataset, Augment
    DataError             every bad-input error (a ValueError)

Also here, for the converters and the synthetic cohort: ``phenotypes.measure_phenotypes`` (from
ED/ES label maps), ``cmr.spacing_from_affine``, ``writers.write_wfdb`` / ``writers.write_nifti``.
"""

from __future__ import annotations

from typing import Any

from ecgcmr.data.cache import Cache, CacheSpec, build_cache, open_cache
from ecgcmr.data.cmr import CmrGrid, load_cmr, load_labels
from ecgcmr.data.ecg import EcgPreprocessing, load_ecg, preprocess_ecg
from ecgcmr.data.manifest import ManifestError, assign_splits, read_manifest
from ecgcmr.errors import DataError

__all__ = [
    "Augment", "Cache", "CacheSpec", "CmrGrid", "DataError", "EcgPreprocessing",
    "ManifestError", "PairedDataset", "assign_splits", "build_cache", "load_cmr", "load_ecg",
    "load_labels", "open_cache", "preprocess_ecg", "read_manifest",
]


def __getattr__(name: str) -> Any:
    # The torch datasets are imported on first use: the CLI and the loaders need no torch.
    if name in ("PairedDataset", "Augment"):
        from ecgcmr.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'ecgcmr.data' has no attribute {name!r}")
