"""Shared fixtures: a small synthetic cohort on disk, generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # tests never open windows

from ecgcmr.config import get_profile  # noqa: E402
from ecgcmr.synth.cohort import generate_cohort  # noqa: E402

TINY_N = 16


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of a 16-subject tiny-profile cohort (read-only: copy before breaking)."""
    out = tmp_path_factory.mktemp("cohort")
    spec = get_profile("tiny").cohort_spec(seed=7, n_subjects=TINY_N)
    return generate_cohort(out, spec, workers=1, progress=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    # pytest-xdist runs one worker per core: torch's own thread pool on top of that
    # oversubscribes the cores and made the training tests several times slower
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
