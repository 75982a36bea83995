"""Run folders, provenance and the papermill driver.

A run folder ``runs/<name>/`` holds one execution of the notebook series: the executed
notebooks, ``params.yaml``, ``provenance.json`` (git SHA, package versions, device, seeds),
``environment.txt`` (pip freeze), ``cache.json`` (the preprocessing cache its notebook 01
built, which 02-04 read), figures and tidy metric tables. Runs never overwrite each
other: a notebook that already finished in a run folder is skipped, not re-executed, and
a new run gets a new folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml

from ecgcmr.constants import DEFAULT_SYSTOLIC_COUPLING
from ecgcmr.files import project_root, resolve

if TYPE_CHECKING:
    import multiprocessing.queues

    import pandas as pd
    from jupyter_client.manager import AsyncKernelManager

    from ecgcmr.data.cache import Cache, CacheSpec

#: Set this to the project checkout when running notebooks from elsewhere.
#: Where cohorts, caches and stage checkpoints live (relative to the project root).
DATA_DIR = "data"
#: In a run folder: the preprocessing cache its notebook 01 built (what 02-04 read).
RUN_CACHE = "cache.json"
_KEY_PACKAGES = ("ecgcmr", "torch", "numpy", "scipy", "pandas", "nibabel", "wfdb",
                 "scikit-learn", "statsmodels", "papermill")


def synthetic_cohort_dir(data_dir: str | Path, profile: str, n_subjects: int, seed: int,
                         systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING) -> Path:
    """Where a synthetic cohort lives; shared by every run that uses the same cohort. A
    control world (``systolic_coupling`` other than the default 1) gets its own folder."""
    name = f"{profile}-n{n_subjects}-seed{seed}"
    if systolic_coupling != DEFAULT_SYSTOLIC_COUPLING:
        name += f"-coupling{systolic_coupling:g}"
    return resolve(data_dir) / "synthetic" / name


def run_path(name: str | None = None, root: str | Path = "runs") -> Path:
    """Where ``name`` lives: ``runs/<name>`` (a path with a ``/`` is taken as given), or a
    fresh timestamped name when empty. Nothing is created."""
    if not name:
        name = dt.datetime.now(dt.UTC).strftime("run-%Y%m%dT%H%M%SZ")
    run = Path(name) if Path(name).is_absolute() or "/" in str(name) else resolve(root) / name
    return resolve(run)


def new_run_dir(name: str | None = None, root: str | Path = "runs") -> Path:
    """``runs/<name>`` (created; reused to resume), or a fresh timestamped folder."""
    run = run_path(name, root)
    (run / "figures").mkdir(parents=True, exist_ok=True)
    (run / "tables").mkdir(exist_ok=True)
    return run


def provenance() -> dict[str, object]:
    """What produced a result: code version, packages, machine."""
    import torch  # imported here: the rest of this module needs no torch

    return {
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "packages": {p: _version(p) for p in _KEY_PACKAGES},
    }


def write_run_info(run_dir: str | Path, params: Mapping[str, object], notebook: str) -> None:
    """Write ``params.yaml`` (merged across notebooks), per-notebook provenance and, once per
    run folder, ``environment.txt`` (pip freeze)."""
    run = Path(run_dir)
    params_file = run / "params.yaml"
    merged = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    merged = {**(merged or {}), **{k: _plain(v) for k, v in params.items()}}
    params_file.write_text(yaml.safe_dump(merged, sort_keys=True))
    info_file = run / "provenance.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info[notebook] = provenance()
    info_file.write_text(json.dumps(info, indent=2))
    environment = run / "environment.txt"
    if not environment.is_file():   # one run, one environment
        environment.write_text(_pip_freeze())


@functools.cache
def _pip_freeze() -> str:
    """This interpreter's packages (pip freeze), asked once per process: pip takes ~1 s, and
    a grid worker writes them into every cell it runs."""
    return subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True,
                          text=True, check=False).stdout


def _plain(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def notebook_series(folder: str | Path = "notebooks", until: str = "99") -> list[Path]:
    """The numbered notebooks, in order (``00_*.ipynb``, ``01_*.ipynb``, ...), up to and
    including number ``until``. No notebook at all is a :class:`DataError` that says where
    it looked: the series lives in a source checkout, not in an installed package."""
    from ecgcmr.errors import DataError

    where = resolve(folder)
    found = sorted(where.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise DataError("no notebook series (00_*.ipynb, 01_*.ipynb, ...) found: `ecgcmr "
                        "reproduce` runs the notebooks of a source checkout; run it from the "
                        "checkout's folder (or set $ECGCMR_HOME to it)", path=where)
    return [p for p in found if p.name[:2] <= until]


def run_series(
    run_dir: str | Path,
    params: Mapping[str, object],
    notebooks: Sequence[Path] | None = None,
    *,
    kernel: str = "python3",
    progress: bool = True,
    km: AsyncKernelManager | None = None,
) -> dict[str, str]:
    """Execute the notebooks in order into ``run_dir`` with papermill.

    Each notebook gets the parameters it declares (papermill's ``parameters`` cell) from
    ``params`` (checked and typed by :func:`check_params`), plus ``run_dir``. A notebook that
    already finished in this folder is skipped; a failing one keeps its executed copy (with
    the error) and stops the series, since later notebooks depend on it. Returns
    ``{notebook: "done" | "skipped" | "failed"}``.

    The notebooks of one call share a kernel (:func:`_series_kernel`), its namespace
    emptied before each: what one notebook defines never reaches the next, as with a kernel
    of its own, but the libraries stay imported. ``km``, a kernel already running (a grid
    worker's, :func:`_run_cells`), is used instead, emptied before the first notebook too,
    and left running.
    """
    import papermill as pm  # heavy import; only the driver needs it
    from nbclient.exceptions import DeadKernelError

    notebooks = list(notebooks) if notebooks is not None else notebook_series()
    params = check_params(params, parameter_types(notebooks))
    run = new_run_dir(str(run_dir))
    status_file = run / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    result: dict[str, str] = {}
    todo = [nb for nb in notebooks if status.get(nb.name) != "done"]
    result.update({nb.name: "skipped" for nb in notebooks if nb not in todo})
    given = km is not None
    with contextlib.nullcontext(km) if given else _series_kernel(kernel, needed=bool(todo)) as km:
        for i, nb in enumerate(todo):
            declared = pm.inspect_notebook(str(nb))
            wanted = {k: v for k, v in {**params, "run_dir": str(run)}.items()
                      if k in declared}
            write_run_info(run, wanted, nb.name)
            if i or given:
                _empty_namespace(km)
            try:
                pm.execute_notebook(str(nb), str(run / nb.name), parameters=wanted,
                                    kernel_name=kernel, progress_bar=progress,
                                    log_output=progress, cwd=str(project_root()), km=km)
            except (pm.PapermillExecutionError, DeadKernelError):   # the notebook shows how far
                status[nb.name] = result[nb.name] = "failed"
                status_file.write_text(json.dumps(status, indent=2))
                break
            status[nb.name] = result[nb.name] = "done"
            status_file.write_text(json.dumps(status, indent=2))
    result = {nb.name: result[nb.name] for nb in notebooks if nb.name in result}
    _render_report(run)
    return result


#: glibc's allocator in the notebook kernels (other C libraries ignore these; a variable
#: already set wins): freed memory stays in the process instead of going back to the system,
#: so each ViT layer's activations (tens of MB per batch) reuse pages instead of faulting in
#: fresh ones. Notebook 02's forward pass then takes ~20 % less time with two kernels side by
#: side on 2 cores (27-29 -> 21-23 ms per ECG, page faults 1.5 M -> 7 k: benchmarks/
#: allocator.py, benchmarks/measured/2026-12-08-reproduce-comparison-3seeds-faster-cpu-2core.md);
#: the numbers are the same, only where memory comes from changes.
KERNEL_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


@contextlib.contextmanager
def _series_kernel(kernel: str, *, needed: bool = True,
                   log: TextIO | None = None) -> Iterator[AsyncKernelManager | None]:
    """A kernel started in the project root for a series of notebooks, shut down after it
    (None when no notebook is left to run). One kernel per notebook would import torch,
    pandas, scikit-learn, matplotlib and the package again each time: ~6 s of a 2-core
    machine per notebook, and a grid cell runs three (benchmarks/measured/
    2026-12-08-reproduce-comparison-3seeds-faster-cpu-2core.md). What the kernel process
    prints itself (its start-up warnings; not the notebooks' output, which papermill
    collects) goes to ``log``, else where this process prints."""
    if not needed:
        yield None
        return
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    # the asynchronous manager, as papermill makes its own: with a blocking one, a kernel
    # that dies leaves papermill waiting for its output for ever, not raising DeadKernelError
    km = AsyncKernelManager(kernel_name=kernel)
    output = {} if log is None else {"stdout": log, "stderr": log}
    run_sync(km.start_kernel)(cwd=str(project_root()), env={**KERNEL_ALLOCATOR, **os.environ},
                              **output)
    try:
        yield km
    finally:
        run_sync(km.shutdown_kernel)(now=True)


#: Run in the shared kernel before each notebook: the namespace and the figures of the last
#: notebook go, and the execution count starts again at 1 (IPython's reset of a new session).
_EMPTY_NAMESPACE = ("import matplotlib.pyplot as _plt\n_plt.close('all')\n"
                    "get_ipython().reset(new_session=True, aggressive=False)")


def _empty_namespace(km: AsyncKernelManager) -> None:
    """Empty the shared kernel's namespace (``_EMPTY_NAMESPACE``), quietly; an error there is
    raised, since the next notebook would otherwise see the last one's variables."""
    client = km.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive(_EMPTY_NAMESPACE, silent=True, store_history=False,
                                           output_hook=lambda msg: None, timeout=60)
        if reply["content"]["status"] != "ok":
            raise RuntimeError("could not empty the notebook kernel's namespace: "
                               f"{reply['content'].get('ename')}: "
                               f"{reply['content'].get('evalue')}")
    finally:
        client.stop_channels()


def parameter_types(notebooks: Sequence[Path] = ()) -> dict[str, str]:
    """``{parameter: type}`` of every parameter the notebook series (and ``notebooks``)
    declares, as its ``parameters`` cell annotates it (``name: type = value  # help``, what
    papermill reads): ``str``, ``int``, ``float``, ``bool`` or ``Optional[...]`` of one."""
    import papermill as pm

    types: dict[str, str] = {}
    for nb in sorted({*notebook_series(), *notebooks}):
        for name, info in pm.inspect_notebook(str(nb)).items():
            types.setdefault(name, info["inferred_type_name"])
    return types


_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def check_params(params: Mapping[str, object],
                 types: Mapping[str, str] | None = None) -> dict[str, object]:
    """``params`` as the notebooks declare them (``types``: :func:`parameter_types`).

    A name no notebook declares is refused (one ``--set`` serves every notebook that declares
    it). Each value becomes its parameter's type (each value of a list, a grid axis): from the
    command line ``use_pretrained=false`` arrives as the string "false", which a notebook's
    ``if use_pretrained:`` would take as true; an ``int`` is a ``float`` where one is
    declared. ``None`` is accepted by an ``Optional`` parameter (its "not set": the profile's
    value) and by no other; any other value of the wrong type is a ``ValueError`` naming the
    parameter.
    """
    types = parameter_types() if types is None else types
    unknown = set(params) - set(types)
    if unknown:
        raise ValueError(f"no notebook declares the parameter(s) {sorted(unknown)}")
    return {key: [_typed(key, v, types[key]) for v in value] if isinstance(value, list)
            else _typed(key, value, types[key]) for key, value in params.items()}


def _typed(key: str, value: object, declared: str) -> object:
    kind = declared.removeprefix("Optional[").removesuffix("]")
    if kind not in ("bool", "int", "float", "str"):   # papermill could not type it: as given
        return value
    if value is None:
        if kind == declared:
            raise ValueError(f"parameter {key} ({declared}) cannot be None")
        return None
    if kind == "bool":
        text = str(value).strip().lower()
        if text not in _TRUE | _FALSE:
            raise ValueError(f"parameter {key} is a yes/no flag (True or False), got {value!r}")
        return text in _TRUE
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)   # e.g. --set run_dir=2024 names a folder
    raise ValueError(f"parameter {key} is {declared}, got {value!r}")


def _render_report(folder: Path, grid: bool = False) -> None:
    """The HTML report of a run or grid; a rendering problem is reported, never fatal (the
    executed notebooks and tables are what matter, and they are already written)."""
    from ecgcmr.html_report import render_grid, render_run

    try:
        index = render_grid(folder) if grid else render_run(folder)
        print(f"report: {index}")
    except Exception as exc:  # noqa: BLE001 - any rendering failure must not lose the run
        print(f"warning: could not render the HTML report of {folder}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)


def locate_manifest(
    manifest: str | Path | None,
    *,
    profile: str,
    n_subjects: int | None = None,
    cohort_seed: int = 0,
    data_dir: str | Path = DATA_DIR,
    generate: bool = False,
    workers: int = 1,
    systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING,
) -> Path:
    """The manifest a notebook works on.

    ``manifest`` set: the user's own (real data). None: the synthetic cohort of this profile,
    size (None: the profile's), seed and systolic coupling (the controls' knob,
    ``ecgcmr.synth.physiology``), generated (or finished) here when ``generate`` is true, else
    it must exist already and the error says which command makes it.
    """
    from ecgcmr.errors import DataError
    from ecgcmr.synth.cohort import cohort_spec, generate_cohort

    if manifest is not None:
        return resolve(manifest)
    spec = cohort_spec(profile, seed=cohort_seed, n_subjects=n_subjects,
                       systolic_coupling=systolic_coupling)
    folder = synthetic_cohort_dir(data_dir, profile, spec.n_subjects, spec.seed,
                                  spec.systolic_coupling)
    if generate:
        return generate_cohort(folder, spec, workers=workers)
    path = folder / "manifest.csv"
    if not path.is_file():
        coupling = (f" --systolic-coupling {systolic_coupling:g}"
                    if systolic_coupling != DEFAULT_SYSTOLIC_COUPLING else "")
        raise DataError(
            "the synthetic cohort has not been generated yet; run notebook 00_cohort or "
            f"`ecgcmr synth --profile {profile} --n {spec.n_subjects} --seed {spec.seed}"
            f"{coupling} --out {folder}`", path=path)
    return path


def cache_dir_for(manifest_path: str | Path, spec_json: Mapping[str, object],
                  data_dir: str | Path = DATA_DIR) -> Path:
    """A cache folder keyed by the manifest and the preprocessing settings.

    Changing the notch frequency or the grid makes a new cache rather than mixing two.
    """
    import hashlib

    manifest_path = Path(manifest_path).resolve()
    key = json.dumps({"manifest": str(manifest_path), "spec": spec_json}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return resolve(data_dir) / "cache" / f"{manifest_path.parent.name}-{digest}"


def record_cache(run_dir: str | Path, manifest_path: str | Path, cache_dir: str | Path) -> None:
    """Note in the run folder (``cache.json``) the cache notebook 01 built for its manifest,
    so notebooks 02-04 of the run read it without repeating its settings (``notch_hz``)."""
    record = {"manifest": str(Path(manifest_path).resolve()),
              "cache": str(Path(cache_dir).resolve())}
    (Path(run_dir) / RUN_CACHE).write_text(json.dumps(record, indent=2))


def locate_cache(manifest_path: str | Path, spec: CacheSpec, data_dir: str | Path = DATA_DIR,
                 *, run_dir: str | Path | None = None) -> Cache:
    """Open the preprocessing cache of this manifest; it must match the manifest as it is now
    (:func:`ecgcmr.data.cache.check_matches`).

    With ``run_dir``: the cache notebook 01 built in that run folder (:func:`record_cache`),
    whatever its settings. ``spec`` is the cache's settings without one: the CLI's, or a run
    folder 01 did not run in (notebook 02 run on its own, a run from before the record).
    """
    from ecgcmr.data.cache import open_cache
    from ecgcmr.data.manifest import read_manifest
    from ecgcmr.errors import DataError

    folder = cache_dir_for(manifest_path, spec.to_json(), data_dir)
    record = Path(run_dir) / RUN_CACHE if run_dir is not None else None
    if record is not None and record.is_file():
        built = json.loads(record.read_text())
        if built["manifest"] == str(Path(manifest_path).resolve()):
            folder = Path(built["cache"])
    if not (folder / "index.csv").is_file():
        raise DataError("the preprocessing cache is missing; run notebook 01_preprocessing "
                        f"or `ecgcmr preprocess --manifest {manifest_path} --cache-dir {folder}`",
                        path=folder)
    manifest = read_manifest(manifest_path, check_files=False, require_ecg=False)
    return open_cache(folder, manifest)


def expand_grid(params: Mapping[str, object]) -> list[dict[str, object]]:
    """Every combination of the list-valued parameters (the others are shared by all cells)."""
    import itertools

    keys = [k for k, v in params.items() if isinstance(v, list)]
    fixed = {k: v for k, v in params.items() if k not in keys}
    combos = itertools.product(*(params[k] for k in keys))
    return [{**fixed, **dict(zip(keys, combo, strict=True))} for combo in combos]


def classical_baseline_once(cells: list[dict[str, object]],
                            varying: Sequence[str]) -> list[dict[str, object]]:
    """The grid's cells with the classical baseline (notebooks 03-04's ``classical_baseline``)
    evaluated in one cell of each group that differs only in ``method``: the first method's.
    The baseline reads the cache, not the method's encoder, so the other cells would repeat
    it with the same result (notebook 05 pairs every method with it by seed and subject, from
    whichever cell holds it). A cell that turns it off itself keeps it off."""
    if "method" not in varying:
        return cells
    first = cells[0]["method"]
    return [{**cell, "classical_baseline": bool(cell.get("classical_baseline", True))
             and cell["method"] == first} for cell in cells]


def cell_name(cell: Mapping[str, object], keys: Sequence[str]) -> str:
    """A grid cell's folder name, e.g. ``method-dual_seed-1``."""
    return "_".join(f"{k}-{cell[k]}" for k in keys) or "cell"


def run_grid(
    grid_dir: str | Path,
    params: Mapping[str, object],
    *,
    jobs: int = 1,
    until: str = "99",
    name_keys: Sequence[str] | None = None,
    command: str | None = None,
) -> dict[str, str]:
    """Run the notebook series once per grid cell, each in ``grid_dir/<cell>/``, named by
    ``name_keys`` (default: the list-valued parameters; the CLI passes every ``--set`` key,
    so ``--set seed=1`` then ``--set seed=2`` into one folder make cells of their own).
    ``command`` (the CLI's command line) is recorded in ``grid_dir/grid.json``.

    What does not differ between cells runs once: the data preparation (notebooks 00-01),
    when no grid parameter is one of theirs, in ``grid_dir/shared/data-<settings>/``
    (:func:`_prepare_shared_data`; each cell then reads the cache it recorded), and notebook
    05, over every cell, in ``grid_dir/overview/``. Otherwise the first cell runs alone so the
    cohort and cache every cell shares are built once. The cells run ``jobs`` at a time:
    ``jobs`` worker processes take them off a queue, each running its cells in one kernel
    (:func:`_run_cells`; a cell's output in ``grid_dir/<cell>.log``). A
    finished cell is skipped; a failing cell keeps its executed notebook with the error and
    does not stop the others. Ends by writing ``grid_dir/summary.csv`` (mean ± sd over seeds
    of every tidy metric table).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    grid = Path(resolve(grid_dir))
    check_params(params)   # a bad parameter is refused here, not once per cell
    varying = [k for k, v in params.items() if isinstance(v, list)]
    keys = list(name_keys) if name_keys is not None else varying
    cells = classical_baseline_once(expand_grid(params), varying)
    grid.mkdir(parents=True, exist_ok=True)
    series = notebook_series(until=until)
    overview = any(nb.name.startswith("05_") for nb in series)
    per_cell = [nb for nb in series if not (overview and nb.name.startswith("05_"))]
    shared = _shared_data_notebooks(per_cell, varying)
    if shared == per_cell:   # nothing left for the cells (e.g. --until 01): each runs them
        shared = []
    per_cell = [nb for nb in per_cell if nb not in shared]

    def finished(name: str) -> bool:
        status_file = grid / name / "status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        return all(status.get(nb.name) == "done" for nb in per_cell)

    names = [cell_name(cell, keys) for cell in cells]
    results = {name: "skipped" for name in names if finished(name)}
    todo = [(grid / name, cell, per_cell) for name, cell in zip(names, cells, strict=True)
            if name not in results]
    record = _prepare_shared_data(grid, cells[0], shared) if shared and todo else None
    if shared and todo and record is None:   # its notebook shows the error
        results.update({run.name: "failed" for run, _, _ in todo})
        todo = []
    if record is not None:   # the cache the shared notebook 01 built, for 02-04
        for run, _, _ in todo:
            new_run_dir(str(run))
            (run / RUN_CACHE).write_text(record)
    alone = todo[:1] if not shared and names[0] not in results else []
    rest = todo[len(alone):]
    workers = min(max(1, jobs), len(rest))   # 0 when the alone cell was the only one
    # spawn, not fork: each worker a fresh interpreter, as a command of its own would be
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for cell in rest:
        queue.put(cell)
    for _ in range(workers):
        queue.put(None)   # one end mark per worker
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_start_worker,
                             initargs=(max(1, jobs), queue, grid / KERNEL_LOG),
                             mp_context=context) as pool:
        for cell in alone:
            results[cell[0].name] = pool.submit(_run_cell, *cell).result()
        for worker in [pool.submit(_cell_worker) for _ in range(workers)]:
            results.update(worker.result())
    results = {name: results[name] for name in names}
    (grid / "grid.json").write_text(json.dumps({"command": command, "params": {
        k: _plain(v) if not isinstance(v, list) else [_plain(x) for x in v]
        for k, v in params.items()}, "cells": results}, indent=2))
    summarise_grid(grid)
    if overview:
        _overview(grid, params, keys)
    _render_report(grid, grid=True)
    return results


#: The notebooks that prepare the data (the cohort, the cache): those ``--until 01`` runs.
DATA_PREPARATION = "01"


def _shared_data_notebooks(series: Sequence[Path], varying: Sequence[str]) -> list[Path]:
    """The data-preparation notebooks of ``series`` when no grid parameter in ``varying``
    is one of theirs (then every cell would build and show the same cohort and cache), else
    none. They write nothing a later notebook reads but the cache record (``RUN_CACHE``)."""
    prep = [nb for nb in series if nb.name[:2] <= DATA_PREPARATION]
    return prep if not _declared(prep) & set(varying) else []


def _declared(notebooks: Sequence[Path]) -> set[str]:
    """The parameters the notebooks declare (their papermill ``parameters`` cells)."""
    import papermill as pm

    return {name for nb in notebooks for name in pm.inspect_notebook(str(nb))}


def _prepare_shared_data(grid: Path, cell: Mapping[str, object],
                         notebooks: Sequence[Path]) -> str | None:
    """Run the data preparation once for the grid, in ``grid/shared/data-<hash>`` (named by
    the settings those notebooks get, so a later call with other data settings into the same
    grid gets a run of its own); the cache record the cells read, or None if it failed."""
    import hashlib

    from ecgcmr.evaluate.report import SHARED_RUNS

    declared = _declared(notebooks)
    settings = {k: _plain(v) for k, v in sorted(cell.items()) if k in declared}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    run = grid / SHARED_RUNS / f"data-{key}"
    print(f"data preparation (shared by every cell): {run}")
    result = run_series(run, settings, notebooks)
    if "failed" in result.values() or not (run / RUN_CACHE).is_file():
        return None
    return (run / RUN_CACHE).read_text()


#: In a grid folder: what the grid workers' kernels printed themselves (start-up warnings;
#: each cell's notebook output is in ``<cell>.log``).
KERNEL_LOG = "kernels.log"
#: A grid worker's queue of cells (``_start_worker``), ended by None.
_cells: multiprocessing.queues.Queue | None = None
_kernel_log: Path | None = None


def _start_worker(jobs: int, cells: multiprocessing.queues.Queue, kernel_log: Path) -> None:
    """A grid worker's initializer: its share of the cores, its queue of cells."""
    global _cells, _kernel_log
    _share_cores(jobs)
    _cells, _kernel_log = cells, kernel_log


def _cell_worker() -> dict[str, str]:
    """A grid worker's loop: the cells off its queue, up to its end mark (:func:`_run_cells`)."""
    assert _cells is not None and _kernel_log is not None, "runs only in a grid worker"
    return _run_cells(iter(_cells.get, None), _kernel_log)


def _run_cells(cells: Iterable[tuple[Path, dict[str, object], Sequence[Path]]],
               kernel_log: Path) -> dict[str, str]:
    """Run grid cells one after another in one kernel, started for the first and shut down
    after the last; ``{cell: "done" | "failed"}``. The kernel is emptied before every
    notebook, as within a series (:func:`run_series`): a kernel per cell would start and
    import torch, pandas, scikit-learn, matplotlib and the package again each time, ~10 s of
    every cell when three share 2 cores (benchmarks/measured/
    2026-12-08-reproduce-comparison-3seeds-uv-cpu-2core.md). A kernel that died in a cell
    (its notebook shows it) is restarted for the next, which would otherwise fail too."""
    from jupyter_core.utils import run_sync

    results: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        km = None
        for run_dir, params, notebooks in cells:
            if km is None:
                log = stack.enter_context(open(kernel_log, "a"))
                km = stack.enter_context(_series_kernel("python3", log=log))
            elif not run_sync(km.is_alive)():
                run_sync(km.restart_kernel)(now=True)
            results[run_dir.name] = _run_cell(run_dir, params, notebooks, km=km)
    return results


def _share_cores(jobs: int) -> None:
    """A grid worker's share of the cores: the notebook kernels it starts get an equal share
    of the cores for torch and BLAS (unless the caller set the thread count itself), what
    docs/performance.md asked users to do by hand: kernels that each start a thread per core
    take turns on the cores and wait on each other's threads (two cells side by side on 2
    cores: 89 s with one thread each, 122 s with two, the same numbers bit for bit;
    benchmarks/measured/2026-12-07-grid-threads-cpu-2core.md)."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, threads)


def _run_cell(run_dir: Path, params: dict[str, object], notebooks: Sequence[Path],
              km: AsyncKernelManager | None = None) -> str:
    """One grid cell in this (pool) process: the series into ``run_dir`` (in ``km``, a
    running kernel, if given), everything printed on the way, the notebooks' output too, into
    ``<run_dir>.log``; "done" or "failed"."""
    import traceback

    with open(run_dir.with_name(f"{run_dir.name}.log"), "w") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            print(f"run folder: {run_dir}")
            result = run_series(run_dir, params, notebooks, km=km)
            for name, state in result.items():
                print(f"  {name}: {state}")
            return "failed" if "failed" in result.values() else "done"
        except Exception:  # noqa: BLE001 - a failing cell must not stop the others
            traceback.print_exc()
            return "failed"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _overview(grid: Path, params: Mapping[str, object], keys: Sequence[str]) -> None:
    """Notebook 05 over every cell of the grid, into ``grid/overview``: the tables × methods
    (mean ± sd over seeds) and the figures of the whole grid."""
    from ecgcmr.evaluate.report import OVERVIEW_RUN

    fixed = {k: v for k, v in params.items() if k not in keys}
    # the example pairs need one cohort: without one shared by all cells, leave them out
    cohort_varies = any(k in keys for k in ("profile", "manifest", "n_subjects", "cohort_seed"))
    figures = [nb for nb in notebook_series() if nb.name.startswith("05_")]
    overview = grid / OVERVIEW_RUN
    if (overview / "status.json").is_file():   # results change as cells finish: redo it
        (overview / "status.json").unlink()
    run_series(overview, {**fixed, "results": str(grid),
                          **({"n_examples": 0} if cohort_varies else {})}, figures,
               progress=False)


def summarise_grid(grid_dir: str | Path) -> pd.DataFrame:
    """Mean ± sd over seeds of every tidy metric table (``tables/*metrics*.csv``) of a grid.

    A tidy table has one row per (method, seed, target, metric) with a ``value`` column; rows
    are grouped by every column except ``seed``, ``value`` and confidence bounds.
    """
    import pandas as pd

    grid = Path(grid_dir)
    frames = []
    for table in sorted(grid.glob("*/tables/*metrics*.csv")):
        df = pd.read_csv(table)
        if {"metric", "value"} <= set(df.columns):
            frames.append(df.assign(table=table.stem))
    if not frames:
        summary = pd.DataFrame(columns=["table", "metric", "mean", "sd", "n_seeds"])
    else:
        from ecgcmr.evaluate.report import VALUE_COLUMNS, mean_over_resamplings, once_per_seed

        # a run's balanced resamplings are one value of that run, not seeds
        tidy = mean_over_resamplings(once_per_seed(pd.concat(frames, ignore_index=True)))
        # everything that is not a seed or a number identifies what was measured
        by = [c for c in tidy.columns if c not in ("seed", *VALUE_COLUMNS)]
        summary = (tidy.groupby(by, dropna=False)["value"]
                   .agg(mean="mean", sd="std", n_seeds="count").reset_index())
    summary.to_csv(grid / "summary.csv", index=False)
    return summary
