"""One DDP training step of SparkMIM on two gloo processes equals one step of one process on the whole batch.

Each process sees its half of the batch; synchronised BatchNorm (encoder, densify and decoder) makes the
statistics those of the whole batch, and DDP averages the gradients. Every image keeps the same number of
visible cells, so a process's loss (the mean over its masked patches) averages to the whole batch's loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pretrain.masking import sample_random_mask
from pretrain.spark import SparkMIM

ARGS = {"backbone": "resnet18", "input_size": 64, "decoder_width": 32, "drop_path_rate": 0.0}
LR = 0.5


def one_step(model: torch.nn.Module, img: torch.Tensor, active: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, backward, plain SGD step: returns the gradients and the state after the step."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    model(img, active)["loss"].backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    with torch.no_grad():
        for p in module.parameters():
            p.sub_(LR * p.grad)
    return {"grads": grads, "state": {k: v.clone() for k, v in module.state_dict().items()}}


def _worker(rank: int, world: int, init_file: str, data: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = SparkMIM(**ARGS, sync_bn=True)
        model.load_state_dict(data["state"])
        ddp = DistributedDataParallel(model)
        half = slice(rank * 2, rank * 2 + 2)
        torch.save(one_step(ddp, data["img"][half], data["active"][half]), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_ddp_step_on_two_halves_equals_one_step_on_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    model = SparkMIM(**ARGS)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    img = torch.stack([torch.sin(5 * xx * (k + 1) + yy * k) for k in range(4)])[:, None].repeat(1, 3, 1, 1)
    img = img + 0.1 * torch.randn_like(img)
    active = sample_random_mask(4, (2, 2), 0.5, generator=torch.Generator().manual_seed(0))  # 2 of 4 per image
    data = {"img": img, "active": active, "state": {k: v.clone() for k, v in model.state_dict().items()}}
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), data, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = one_step(model, img, active)

    # both processes end the step with the same weights and BatchNorm statistics ...
    for key, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][key]), key
    # ... equal to those of one process on the concatenated batch, gradients first
    bn_weights = [n for n in single["grads"] if n.endswith(".weight") and single["grads"][n].dim() == 1]
    assert len(bn_weights) > 20  # encoder, densify and decoder norms
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-3, atol=1e-6, msg=name)
    for key, tensor in single["state"].items():
        torch.testing.assert_close(ranks[0]["state"][key], tensor, rtol=1e-3, atol=1e-5, msg=key)
