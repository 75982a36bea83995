"""Distributed contrastive loss on 2 CPU processes (gloo) == single-process loss on the batch.

Each child joins the group through ``setup_from_env`` (torchrun's variables), holds its part
of one global batch, and writes what it computed to a file; the parent computes the same
quantities in one process on the whole batch and compares.

Gradient convention checked (see ``ecgcmr.losses.info_nce``): rank r's local embeddings
receive ``world · ∂L/∂z_r``, so the DDP average over ranks of the parameter gradients equals
the single-process gradient. Equivalently: local gradient / world == the single-process
gradient's rows of that rank.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ecgcmr import distributed as ddp
from ecgcmr.losses import Temperature, dual_phase_loss, info_nce
from ecgcmr.methods import METHODS

WORLD = 2
N_GLOBAL = 8            # even split: rows 0-3 on rank 0, 4-7 on rank 1
UNEVEN = (5, 3)         # uneven split of the same 8 rows
DIM, D_IN = 5, 6
TAU = 0.15
LR, STEPS = 0.5, 3


def _global_data() -> dict[str, torch.Tensor]:
    """The global batch every process builds identically (seeded)."""
    rng = np.random.default_rng(1234)
    out = {m: torch.from_numpy(rng.standard_normal((N_GLOBAL, DIM))).float()
           for m in ("ecg", "ed", "es")}
    out.update({f"x_{m}": torch.from_numpy(rng.standard_normal((N_GLOBAL, D_IN))).float()
                for m in ("ecg", "ed", "es")})
    return out


class _Tiny(nn.Module):
    """Three linear 'encoders' and the temperature buffer: everything DDP must keep in sync."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same initial weights in every process
            torch.manual_seed(0)
            self.ecg, self.ed, self.es = (nn.Linear(D_IN, DIM) for _ in range(3))
        self.temperature = Temperature(TAU)

    def forward(self, x_ecg: torch.Tensor, x_ed: torch.Tensor, x_es: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        return self.ecg(x_ecg), self.ed(x_ed), self.es(x_es), self.temperature()


def _leaves(data: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {m: data[m][rows].clone().requires_grad_(True) for m in ("ecg", "ed", "es")}


def _contrastive(data: dict[str, torch.Tensor], rows: slice, gather: bool) -> dict[str, torch.Tensor]:
    """info_nce / dual / ED-only values and gradients on ``rows`` (all rows: single process)."""
    out: dict[str, torch.Tensor] = {}
    z = _leaves(data, rows)
    tau = torch.tensor(TAU, requires_grad=True)
    loss = info_nce(z["ecg"], z["ed"], tau, gather=gather)
    loss.backward()
    out.update(nce=loss.detach(), nce_g_ecg=z["ecg"].grad, nce_g_ed=z["ed"].grad,
               nce_g_tau=tau.grad)

    z = _leaves(data, rows)
    tau = torch.tensor(TAU, requires_grad=True)
    total, terms = dual_phase_loss(z["ecg"], z["ed"], z["es"], tau, gather=gather)
    total.backward()
    out.update(dual=total.detach(), dual_g_tau=tau.grad,
               **{f"dual_{k}": v for k, v in terms.items()},
               **{f"dual_g_{m}": z[m].grad for m in z})

    z = _leaves(data, rows)
    total, _ = dual_phase_loss(z["ecg"], z["ed"], None, TAU, METHODS["ed"].loss_weights,
                               gather=gather)
    total.backward()
    out.update(ed=total.detach(), ed_g_ecg=z["ecg"].grad)
    return out


def _train(data: dict[str, torch.Tensor], rows: slice, wrap_ddp: bool) -> dict[str, torch.Tensor]:
    """STEPS of SGD on the dual-phase loss; returns the final weights."""
    model = _Tiny()
    net = nn.parallel.DistributedDataParallel(model) if wrap_ddp else model
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        z_ecg, z_ed, z_es, tau = net(data["x_ecg"][rows], data["x_ed"][rows], data["x_es"][rows])
        loss, _ = dual_phase_loss(z_ecg, z_ed, z_es, tau, gather=wrap_ddp)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rows(rank: int, sizes: tuple[int, ...]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = ddp.setup_from_env()
    try:
        res: dict[str, object] = {
            "info": (info.rank, info.world_size, info.backend, ddp.is_main(),
                     ddp.is_distributed()),
            "gathered": ddp.gather_with_grad(torch.full((rank + 1, 2), float(rank))),
        }
        data = _global_data()
        even = (N_GLOBAL // WORLD,) * WORLD
        res["even"] = _contrastive(data, _rows(rank, even), True)
        res["uneven"] = _contrastive(data, _rows(rank, UNEVEN), True)
        res["train"] = _train(data, _rows(rank, even), True)
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        ddp.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_helpers_in_the_group(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        assert res["info"] == (r, WORLD, "gloo", r == 0, True)
        # rank 0 holds 1 row of 0s, rank 1 two rows of 1s: gathered in rank order
        _close(res["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("split", ["even", "uneven"])
def test_gathered_loss_and_gradients_equal_single_process(ranks: list[dict], split: str) -> None:
    sizes = (N_GLOBAL // WORLD,) * WORLD if split == "even" else UNEVEN
    single = _contrastive(_global_data(), slice(None), gather=False)
    for r, res in enumerate(ranks):
        got = res[split]
        # (i) every rank sees the value of the loss on the global batch
        for key in ("nce", "dual", "dual_ecg_ed", "dual_ecg_es", "dual_ed_es", "ed"):
            _close(got[key], single[key])
        # (ii) local gradient / world == the single-process gradient's rows of this rank
        rows = _rows(r, sizes)
        for key in ("nce_g_ecg", "nce_g_ed", "dual_g_ecg", "dual_g_ed", "dual_g_es", "ed_g_ecg"):
            _close(got[key] / WORLD, single[key][rows])
    # a temperature tensor: every rank computes the global loss, so its gradient is the same
    # on every rank and equals the single-process one
    for key in ("nce_g_tau", "dual_g_tau"):
        per_rank = [res[split][key] for res in ranks]
        _close(per_rank[0], single[key])
        _close(per_rank[1], single[key])


def test_ddp_training_matches_single_process(ranks: list[dict]) -> None:
    single = _train(_global_data(), slice(None), wrap_ddp=False)
    start = _Tiny().state_dict()
    w0, w1 = ranks[0]["train"], ranks[1]["train"]
    for k in single:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between ranks"  # DDP: bitwise equal
        _close(w0[k], single[k])
    assert any(not torch.allclose(single[k], start[k]) for k in single)  # training moved


# --------------------------------------------------------------------------- one process
def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    info = ddp.setup_from_env()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert not ddp.is_distributed() and ddp.rank() == 0 and ddp.world_size() == 1
    assert ddp.is_main()
    x = torch.randn(3, 2)
    assert ddp.gather_with_grad(x) is x
    ddp.cleanup()  # no-op


def test_setup_from_env_names_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        ddp.setup_from_env()


def test_seed_everything_repeats_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    def draws() -> tuple:
        return (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002

    ddp.seed_everything(3)
    first = draws()
    ddp.seed_everything(3)
    assert draws() == first
    ddp.seed_everything(4)
    assert draws() != first

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic",
                        torch.backends.cudnn.deterministic)
    try:
        ddp.seed_everything(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
