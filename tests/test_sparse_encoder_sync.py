"""SparseBatchNorm2d(sync=True) across two gloo processes equals one process with the whole batch.

Kept apart from test_sparse_encoder.py so the spawned workers import only torch and pretrain.sparse_norm.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrain.sparse_layers import MaskContext
from pretrain.sparse_norm import SparseBatchNorm2d


def upsample(active_b1hw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    sy, sx = hw[0] // active_b1hw.shape[2], hw[1] // active_b1hw.shape[3]
    return active_b1hw.repeat_interleave(sy, 2).repeat_interleave(sx, 3)


def _hand_case(rank: int) -> dict[str, torch.Tensor]:
    """One channel, two positions per process: x = [1, 3] on rank 0 and [5, 7] on rank 1; loss = sum(y * x)."""
    bn = SparseBatchNorm2d(1, ctx=None, sync=True)
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])[rank].view(1, 1, 1, 2)
    (bn(x) * x).sum().backward()
    return {"hand_dw": bn.weight.grad.clone(), "hand_db": bn.bias.grad.clone()}


def _sync_bn_worker(rank: int, world: int, init_file: str, data: dict, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = MaskContext()
        bn = SparseBatchNorm2d(4, ctx=ctx, sync=True)
        bn.load_state_dict(data["state"])
        ddp = DistributedDataParallel(bn)  # averages the parameter gradients over the processes
        x = data["x"].chunk(world)[rank].clone().requires_grad_(True)
        with ctx.activate(data["active"].chunk(world)[rank]):
            y = ddp(x)
        (y * data["w"].chunk(world)[rank]).sum(dim=(1, 2, 3)).mean().backward()  # each process: its own mean
        out = {"y": y.detach(), "grad": x.grad, "running_var": bn.running_var, "dw": bn.weight.grad, "db": bn.bias.grad}
        torch.save({**out, **_hand_case(rank)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_batch_norm_across_two_processes_matches_one_big_batch(tmp_path):
    torch.manual_seed(0)
    ctx = MaskContext()
    bn = SparseBatchNorm2d(4, ctx=ctx)
    nn.init.uniform_(bn.weight, 0.5, 2.0)
    # process 0 gets a mostly masked batch, so per-process statistics would differ from global ones
    active = torch.zeros(4, 1, 2, 2, dtype=torch.bool)
    active[0, 0, 0, 0] = active[1, 0, 1, 1] = True
    active[2:] = torch.rand(2, 1, 2, 2) > 0.3
    active[2, 0, 0, 0] = True
    x = (torch.randn(4, 4, 8, 8) + torch.arange(4.0).view(4, 1, 1, 1)) * upsample(active, (8, 8))
    data = {
        "x": x,
        "w": torch.randn(4, 4, 8, 8),
        "active": active,
        "state": {k: v.clone() for k, v in bn.state_dict().items()},
    }
    mp.spawn(_sync_bn_worker, args=(2, str(tmp_path / "init"), data, str(tmp_path)), nprocs=2, join=True)
    x = data["x"].clone().requires_grad_(True)
    with ctx.activate(active):
        y = bn(x)
    (y * data["w"]).sum(dim=(1, 2, 3)).mean().backward()  # one process: the mean over the whole batch
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-4, atol=1e-5)
    # the input gradient of a process's local mean is half that of the global mean (its images weigh 1/2)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), x.grad * 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ranks[0]["running_var"], bn.running_var)
    # after DDP's average, weight and bias gradients are those of one process on the whole batch (not 2x)
    for r in ranks:
        torch.testing.assert_close(r["dw"], bn.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["db"], bn.bias.grad, rtol=1e-4, atol=1e-5)
    # without the all-reduce, process 0 would normalise with its own statistics: the test can tell
    local = SparseBatchNorm2d(4, ctx=ctx)
    local.load_state_dict(data["state"])
    with ctx.activate(active[:2]):
        assert not torch.allclose(local(data["x"][:2]), ranks[0]["y"], atol=1e-3)

    # By hand: global mean 4, biased variance 5, xhat = (x - 4) / sqrt(5 + eps). Each process returns its own
    # sums: d/dweight = sum x * xhat = (1*-3 + 3*-1) / s on rank 0 and (5*1 + 7*3) / s on rank 1, d/dbias = sum x.
    s = math.sqrt(5.0 + 1e-5)
    assert abs(ranks[0]["hand_dw"].item() + 6.0 / s) < 1e-5
    assert abs(ranks[1]["hand_dw"].item() - 26.0 / s) < 1e-5
    assert ranks[0]["hand_db"].item() == 4.0 and ranks[1]["hand_db"].item() == 12.0
