"""Small helpers over :mod:`torch.distributed`, so the training loop stays readable.

Everything here works unchanged in a single process (``python train.py``) and under
``torchrun --nproc-per-node N``: when no process group is initialised, ``rank() == 0``,
``world_size() == 1``, gathers return their input and reductions are the identity.
Importing this module has no side effects.

Gradient convention of :func:`gather_with_grad` (what :mod:`ecgcmr.losses` relies on):
the backward pass **sums** over ranks the gradients that every rank's loss sends to a rank's
slice of the gathered tensor. If every rank computes a loss ``L_r`` from the gathered batch,
the local embeddings of rank ``r`` receive ``sum_r' dL_r'/dz_r``; DDP then **averages** the
parameter gradients over ranks. See :func:`ecgcmr.losses.info_nce` for why that pair gives
exactly the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

# cuBLAS needs a fixed workspace for deterministic matmuls on CUDA >= 10.2
# (PyTorch "Reproducibility" notes; CUDA docs, cuBLAS "Results reproducibility").
_CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- queries
def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised (any world size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes logs, checkpoints and figures (rank 0)."""
    return rank() == 0


# --------------------------------------------------------------------------- collectives
def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Local batch sizes of all ranks, in rank order (``[n]`` when not distributed).

    Needed to gather batches of unequal size and to offset the contrastive labels.
    """
    if world_size() == 1:
        return [int(n)]
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward routes gradients back to every rank's slice.

    Forward: pad the local ``(n_r, ...)`` tensor to the largest local size, ``all_gather``,
    drop the padding, concatenate → ``(sum_r n_r, ...)``.
    Backward: ``all_reduce(SUM)`` of the gradient w.r.t. the gathered tensor, then keep this
    rank's rows. (A reduce-scatter would move less data, but needs equal sizes; the gathered
    embeddings are (B, 128) floats, so the simpler all-reduce costs nothing that matters.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        me = dist.get_rank()
        ctx.sizes = sizes
        ctx.start = sum(sizes[:me])
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        slots = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(slots, padded.contiguous())
        return torch.cat([slot[:n] for slot, n in zip(slots, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce is in place; never touch autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n_local = ctx.sizes[dist.get_rank()]
        return grad[ctx.start: ctx.start + n_local], None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (n_r, ...) from every rank along dim 0, keeping autograd.

    Returns ``(sum_r n_r, ...)`` in rank order; rank ``r``'s rows start at
    ``sum(sizes[:r])``. Ranks may hold different numbers of rows (``sizes`` from
    :func:`gather_sizes`; computed here when not given). The backward pass sums, over ranks,
    the gradients w.r.t. this rank's rows (see the module docstring). Identity when not
    distributed. Every rank must call it, in the same order (it is a collective).
    """
    if world_size() == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], device=x.device)
    if len(sizes) != world_size() or sizes[rank()] != x.shape[0]:
        raise ValueError(f"gather_with_grad: sizes {sizes} do not match world size "
                         f"{world_size()} and local rows {x.shape[0]} on rank {rank()}")
    return _GatherWithGrad.apply(x, list(sizes))


# --------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (as torchrun describes it)."""

    rank: int           # global rank, 0..world_size-1
    world_size: int     # number of processes
    local_rank: int     # rank on this node; indexes the GPU
    device: torch.device  # cuda:<local_rank> when CUDA is present, else cpu
    backend: str | None   # "nccl" / "gloo", None when not distributed


def default_backend() -> str:
    """"nccl" when CUDA is available (GPU collectives), otherwise "gloo" (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def setup_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and a
    single-process :class:`DistInfo` is returned, so the same script runs with plain
    ``python``. On CUDA the process binds to ``cuda:<LOCAL_RANK>`` before joining.
    """
    env = os.environ
    ws = int(env.get("WORLD_SIZE", "1"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if ws <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device, backend=None)
    missing = [v for v in _TORCHRUN_VARS if v not in env]
    if missing:
        raise RuntimeError(f"setup_from_env: WORLD_SIZE={ws} but {', '.join(missing)} "
                           f"missing from the environment (launch with torchrun)")
    backend = backend or default_backend()
    if cuda:
        torch.cuda.set_device(device)  # before init, so NCCL uses this process's GPU
    if not is_distributed():
        dist.init_process_group(backend=backend, init_method="env://",
                                rank=int(env["RANK"]), world_size=ws)
    return DistInfo(rank=rank(), world_size=world_size(), local_rank=local_rank,
                    device=device, backend=backend)


def cleanup() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if is_distributed():
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy's legacy global RNG and torch (CPU and all GPUs).

    Package code draws randomness from passed ``numpy.random.Generator`` objects; this seeds
    the global generators that third-party code (weight init, dropout, DataLoader shuffling)
    uses. Under DDP give each rank ``seed + rank()`` where ranks should differ (augmentation)
    and the same seed where they must agree (weight init — DDP also broadcasts rank 0's).

    ``deterministic=True`` also asks torch for deterministic kernels
    (``torch.use_deterministic_algorithms``), turns off cuDNN autotuning and sets
    ``CUBLAS_WORKSPACE_CONFIG`` if unset; slower on GPU, and an op without a deterministic
    implementation then raises.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 — legacy global RNG, used by third-party code
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_DETERMINISTIC_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
