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


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # two cores: keep BLAS from oversubscribing when pytest-xdist runs two workers
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
