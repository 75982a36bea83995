"""File helpers: where the project's files are, and writing resumable work.

* :func:`project_root` / :func:`resolve`: user paths (``data/``, ``runs/``) are relative to the
  checkout (or ``$ECGCMR_HOME``), wherever a notebook or command runs from.

* :func:`exclusive`: a lock on a folder's work, so parallel runs never build the same thing
  twice. Grid cells run in parallel share the cohort, the cache and the stage-A/B checkpoints;
  the first cell to reach one builds it while the others wait, then find it finished.
* :func:`write_text_atomic`: a file is either the old or the new version, never half written,
  so an interrupted run can always resume from what is on disk.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Environment variable naming the project root (where data/ and runs/ live).
HOME_ENV = "ECGCMR_HOME"


@contextmanager
def exclusive(folder: str | Path, name: str = ".lock") -> Iterator[None]:
    """Hold ``<folder>/<name>`` (a POSIX advisory lock, released if the process dies)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)




def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def project_root() -> Path:
    """The checkout's root: ``$ECGCMR_HOME`` or the nearest parent with ``pyproject.toml``.

    Notebooks resolve ``data/`` and ``runs/`` against this, so they work whether they are run
    by papermill from the root or opened in Jupyter from ``notebooks/``.
    """
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ecgcmr").is_dir():
            return folder
    return here


def resolve(path: str | Path) -> Path:
    """A user path: absolute as given, relative ones against :func:`project_root`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path
