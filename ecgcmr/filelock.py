"""An exclusive lock on a folder's work, so parallel runs never build the same thing twice.

Grid cells run in parallel share the cohort, the cache and the stage-A/B checkpoints; the first
cell to reach one builds it while the others wait, then find it finished and reuse it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold ``<folder>/.lock`` (a POSIX advisory lock, released if the process dies)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


