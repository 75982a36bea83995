"""The training loop: schedule, resume determinism, DDP on gloo, checkpoints."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ecgcmr.losses import info_nce
from ecgcmr.stages import OptimConfig, StageConfig
from ecgcmr.train import EpochSampler, Task, fit, load_stage, lr_at, pick_device


class ToyAlign(Task):
    """Two linear encoders aligned contrastively: cheap, but exercises the whole loop."""

    fields = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.1), nn.Linear(16, 4))
        self.fb = nn.Linear(6, 4)

    def forward(self, batch, generator=None):  # noqa: ANN001, ANN201
        a, b = batch
        noise = torch.randn(a.shape, generator=generator, device=a.device) * 0.01
        loss = info_nce(self.fa(a + noise), self.fb(b), 0.1)
        return loss, {"nce": loss.detach()}


_MIXING = torch.randn(6, 6, generator=torch.Generator().manual_seed(99))


def _toy_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """Pairs (a, b = a·M + noise) with one fixed M, so validation data follows the same law."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 6, generator=g)
    return TensorDataset(a, a @ _MIXING + 0.1 * torch.randn(n, 6, generator=g))


def _cfg(epochs: int = 4, **optim: object) -> StageConfig:
    return StageConfig(stage="align", seed=3,
                       optim=OptimConfig(epochs=epochs, warmup_epochs=1, batch_size=16,
                                         lr=1e-2, **optim))


def _weights(task: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def test_schedule_warms_up_then_follows_a_half_cosine() -> None:
    cfg = OptimConfig(epochs=10, warmup_epochs=2, lr=1.0, min_lr=0.1)
    lrs = [lr_at(s, 100, 20, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(x >= y for x, y in zip(lrs[20:], lrs[21:], strict=False))


def test_epoch_sampler_is_seeded_per_epoch_and_whole_batches() -> None:
    s = EpochSampler(50, seed=1, batch_size=8)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert len(first) == 48 and first != list(s)
    s.set_epoch(0)
    assert list(s) == first


def test_fit_lowers_the_loss_and_writes_its_files(tmp_path: Path) -> None:
    task = ToyAlign()
    result = fit(task, _cfg(epochs=6), _toy_data(), _toy_data(32, seed=1), tmp_path,
                 progress=False)
    history = [h["val_loss"] for h in result.history]
    assert history[-1] < history[0]
    for name in ("config.json", "last.pt", "best.pt", "steps.csv", "epochs.csv"):
        assert (tmp_path / name).is_file(), name
    cfg, weights = load_stage(tmp_path / "best.pt")
    assert cfg == _cfg(epochs=6)
    assert set(weights) == set(task.state_dict())


def test_early_stopping_waits_for_the_learning_rate_to_halve(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A validation loss that never improves after the first epoch, patience 1: not stopped
    while the learning rate is above half its peak (epochs 2 and 3 of a 6-epoch cosine with
    no warm-up), stopped at the first epoch end below it (epoch 3: lr = 0.5 of the peak)."""
    monkeypatch.setattr(ToyAlign, "evaluate", lambda self, loader, dev: {"val_loss": 1.0})
    cfg = StageConfig(stage="align", seed=3, optim=OptimConfig(
        epochs=6, warmup_epochs=0, batch_size=16, lr=1e-2, patience=1))
    result = fit(ToyAlign(), cfg, _toy_data(), _toy_data(32, seed=1), tmp_path,
                 progress=False)
    assert result.stopped_early and result.best_epoch == 0
    assert result.epochs_run == 3                # 2 without the rule, 6 without stopping


def _seeded_toy() -> ToyAlign:
    torch.manual_seed(0)
    return ToyAlign()


def test_stop_after_steps_logs_the_first_steps_of_the_full_schedule(tmp_path: Path) -> None:
    full = fit(_seeded_toy(), _cfg(epochs=3), _toy_data(), _toy_data(32, seed=1),
               tmp_path / "full", progress=False)
    early = fit(_seeded_toy(), _cfg(epochs=3), _toy_data(), _toy_data(32, seed=1),
                tmp_path / "early", progress=False, stop_after_steps=3)   # 4 steps an epoch
    assert early.partial and not full.partial and not (tmp_path / "early" / "best.pt").exists()
    fit(_seeded_toy(), _cfg(epochs=3), _toy_data(), _toy_data(32, seed=1), tmp_path / "part",
        progress=False, stop_after_steps=6)
    import pandas as pd

    steps_full = pd.read_csv(tmp_path / "full" / "steps.csv").head(6)
    steps_part = pd.read_csv(tmp_path / "part" / "steps.csv")
    assert steps_part[["step", "lr", "loss"]].equals(steps_full[["step", "lr", "loss"]])


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    torch.manual_seed(0)
    reference = ToyAlign()
    fit(reference, _cfg(), _toy_data(), _toy_data(32, seed=1), tmp_path / "ref", progress=False)

    torch.manual_seed(0)
    killed = ToyAlign()
    calls = {"n": 0}
    original = ToyAlign.forward

    def dies_in_epoch_three(self, batch, generator=None):  # noqa: ANN001, ANN202
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2 * 4 + 2:       # 4 steps per epoch: killed inside epoch 3
                raise KeyboardInterrupt
        return original(self, batch, generator)

    monkeypatch.setattr(ToyAlign, "forward", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, _cfg(), _toy_data(), _toy_data(32, seed=1), tmp_path / "run", progress=False)
    monkeypatch.setattr(ToyAlign, "forward", original)
    torch.manual_seed(123)                    # a new process: other RNG state, fresh weights
    resumed = ToyAlign()
    fit(resumed, _cfg(), _toy_data(), _toy_data(32, seed=1), tmp_path / "run", resume=True,
        progress=False)
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(resumed)[key], value, rtol=0, atol=0)
    steps = (tmp_path / "run" / "steps.csv").read_text().strip().splitlines()
    assert len(steps) == 1 + 4 * 4               # no duplicated rows after the resume


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    fit(ToyAlign(), _cfg(epochs=1), _toy_data(), _toy_data(32, seed=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="trained with other settings .differs in: optim"):
        fit(ToyAlign(), _cfg(epochs=2), _toy_data(), _toy_data(32, seed=1), tmp_path, resume=True,
            progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        task = ToyAlign()
        # gloo is the CPU backend: on a 1-GPU machine "auto" would give rank 1 no device
        fit(task, _cfg(epochs=2), _toy_data(), _toy_data(32, seed=1), Path(out) / "ddp",
            progress=False, device="cpu")
        torch.save(_weights(task), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_an_empty_validation_split_is_refused_not_scored_zero(tmp_path: Path) -> None:
    empty = TensorDataset(torch.zeros(0, 6), torch.zeros(0, 6))
    with pytest.raises(ValueError, match="validation split is empty"):
        fit(ToyAlign(), _cfg(epochs=1), _toy_data(), empty, tmp_path, progress=False)


@pytest.mark.parametrize(("batch", "world"), [(3, 2), (2, 2), (10, 4)])
def test_a_global_batch_that_does_not_split_evenly_is_refused(batch: int, world: int) -> None:
    from ecgcmr.train import _per_rank_batch

    with pytest.raises(ValueError, match=f"batch_size {batch} does not split"):
        _per_rank_batch(batch, world)
    assert _per_rank_batch(8, 2) == 4 and _per_rank_batch(16, 1) == 16


def test_ddp_on_gloo_keeps_the_ranks_identical(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    start = _weights(_seeded_toy())
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0)
    assert any(not torch.equal(w0[k], start[k]) for k in w0)   # and they did train


def _seeded_toy() -> ToyAlign:
    torch.manual_seed(0)
    return ToyAlign()


def test_pick_device_refuses_a_rank_without_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert pick_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="LOCAL_RANK 1 has no GPU"):
        pick_device()
    assert pick_device("cpu") == torch.device("cpu")
