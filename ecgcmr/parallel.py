"""Per-subject work over a pool of processes, each with one BLAS thread.

The synthetic cohort and the preprocessing cache both run one subject at a time per process,
one process per core. A BLAS call big enough to be threaded (the ECG simulator's lead-field
product, say) leaves its helper threads spinning after it returns, and they take the cores of
the other workers: 2 workers ran hardly faster than 1. So every process keeps BLAS to one
thread. The numbers are unchanged: a threaded product splits its output between threads, not
the sums that make each output element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from threadpoolctl import threadpool_limits

Job = TypeVar("Job")
Result = TypeVar("Result")


def limit_blas_threads() -> None:
    """Limit this process's BLAS (OpenBLAS, MKL) to one thread (a pool worker's initializer)."""
    threadpool_limits(limits=1, user_api="blas")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """:func:`limit_blas_threads` for the duration of a ``with`` block (then restored)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextmanager
def one_thread() -> Iterator[None]:
    """torch and BLAS on one thread each for the duration of a ``with`` block (then restored);
    also a decorator (``@one_thread()``).

    For small models, such as the evaluation heads (an MLP a hundred wide on batches of 64, a
    Cox model on ten components): each op is too small to be worth splitting, and on 2 cores
    synchronising two threads per op made the MLP heads 5-17x and the Cox models 3-4x slower,
    with identical results (an op's threads split its outputs, not the sums:
    benchmarks/measured/2026-12-07-evaluation-threads-cpu-2core.md).
    """
    import torch  # here: the pool helpers above need no torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def map_subjects(fn: Callable[[Job], Result], jobs: Iterable[Job], workers: int,
                 chunksize: int) -> Iterator[Result]:
    """``fn`` over ``jobs`` in order: in this process for ``workers <= 1``, else over a pool
    of ``workers`` processes (``fn`` must then be picklable: a module-level function)."""
    if workers <= 1:
        with one_blas_thread():
            yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=limit_blas_threads) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)
