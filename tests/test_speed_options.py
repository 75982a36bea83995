"""fit's speed options change the layout or the kernels, never the result."""

from __future__ import annotations

import torch

from ecgcmr.config import get_profile
from ecgcmr.models import CmrEncoder, build_cmr_encoder, build_ecg_encoder
from ecgcmr.models.ecg_vit import Block
from ecgcmr.train import AlignTask, compile_blocks, make_optimizer, to_device


def _align_task() -> AlignTask:
    profile = get_profile("tiny")
    cfg = profile.stage_config("align")
    torch.manual_seed(0)
    cmr = {p: build_cmr_encoder("tiny", n_slices=profile.cmr_shape[0]) for p in ("ed", "es")}
    return AlignTask(cfg, build_ecg_encoder("vit", "tiny"), cmr).eval()


def _batch() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (4, 1, *get_profile("tiny").cmr_shape)
    return [torch.randn(4, 12, 5000, generator=g), torch.rand(shape, generator=g),
            torch.rand(shape, generator=g)]


def test_channels_last_gives_the_same_embeddings():
    task, batch = _align_task(), _batch()
    with torch.no_grad():
        plain = task.embed(to_device(batch, torch.device("cpu")))
        task.to(memory_format=torch.channels_last_3d)
        moved = to_device(batch, torch.device("cpu"), channels_last=True)
        assert moved[1].is_contiguous(memory_format=torch.channels_last_3d)
        assert moved[0].shape == batch[0].shape             # the ECG (3-D) is left alone
        last = task.embed(moved)
    for key in plain:
        torch.testing.assert_close(last[key], plain[key], rtol=1e-4, atol=1e-5)


def test_compile_blocks_compiles_every_block_and_cmr_encoder_only():
    task = compile_blocks(_align_task())
    compiled = [m for m in task.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    expected = [m for m in task.modules() if isinstance(m, (Block, CmrEncoder))]
    assert expected and compiled == expected


def test_optimizer_is_fused_only_on_cuda():
    params = list(_align_task().parameters())
    from ecgcmr.stages import OptimConfig

    opt = make_optimizer(params, OptimConfig(), torch.device("cpu"))
    assert not opt.defaults["fused"]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, OptimConfig().weight_decay}
