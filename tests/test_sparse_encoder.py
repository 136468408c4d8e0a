"""Sparse encoder: zeros at masked positions everywhere, no leak, dense equivalence, sparse norms."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from pretrain.masking import sample_random_mask
from pretrain.sparse_encoder import SparseEncoder, sparsify_
from pretrain.sparse_layers import MaskContext, SparseConv2d
from pretrain.sparse_norm import SparseBatchNorm2d, SparseLayerNorm

BACKBONES = ["resnet18", "resnet50", "convnext_tiny", "convnext_small"]  # the list


def upsample(active_b1hw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    sy, sx = hw[0] // active_b1hw.shape[2], hw[1] // active_b1hw.shape[3]
    return active_b1hw.repeat_interleave(sy, 2).repeat_interleave(sx, 3)


@pytest.fixture(scope="module", params=BACKBONES)
def encoder(request) -> SparseEncoder:
    torch.manual_seed(0)
    return SparseEncoder(request.param)


@pytest.fixture(scope="module")
def dense_models() -> dict[str, nn.Module]:
    return {name: timm.create_model(name, num_classes=0) for name in BACKBONES}


def some_mask(batch: int = 2, grid: tuple[int, int] = (2, 2), seed: int = 0) -> torch.Tensor:
    active = sample_random_mask(batch, grid, 0.5, generator=torch.Generator().manual_seed(seed))
    assert active.any() and not active.all()
    return active


def test_masked_positions_are_zero_after_every_layer(encoder):
    x = torch.randn(2, 3, 64, 64)
    active = some_mask()
    outputs: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: outputs.append((name, out)))
        for name, m in encoder.model.named_modules()
        if name
    ]
    encoder.train()
    try:
        feats = encoder(x, active)
    finally:
        for h in hooks:
            h.remove()
    assert [f.shape[1] for f in feats] == encoder.channels
    assert [64 // f.shape[-1] for f in feats] == [4, 8, 16, 32]
    checked = 0
    for name, out in outputs:
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            continue
        # channels-first (B,C,H,W) or channels-last (B,H,W,C) inside ConvNeXt blocks; inputs are square and
        # every map has more channels (>= 64) than pixels per side (<= 32), so the layout is unambiguous
        if out.shape[2] == out.shape[3]:
            mask = upsample(active, tuple(out.shape[-2:]))
        else:
            assert out.shape[1] == out.shape[2], name
            mask = upsample(active, tuple(out.shape[1:3])).permute(0, 2, 3, 1)
        assert (out * ~mask).abs().max() == 0, f"{name}: non-zero at masked positions"
        assert (out * mask).abs().sum() > 0, f"{name}: all zero"
        checked += 1
    assert checked > 20
    for f in feats:
        assert (f * ~upsample(active, tuple(f.shape[-2:]))).abs().max() == 0


def test_masked_pixels_do_not_reach_the_features(encoder):
    x = torch.randn(2, 3, 64, 64)
    active = some_mask(seed=1)
    changed = torch.where(upsample(active, (64, 64)), x, torch.randn_like(x) * 10)
    encoder.train()
    before, after = encoder(x, active), encoder(changed, active)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_all_visible_equals_dense_timm_model(encoder, dense_models, mode):
    dense = dense_models[encoder.backbone]
    missing, unexpected = dense.load_state_dict(encoder.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    x = torch.randn(2, 3, 64, 64)
    ones = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    encoder.train(mode == "train")
    dense.train(mode == "train")
    sparse_feats = encoder(x, ones)
    dense_feats = dense.forward_intermediates(x, indices=encoder.feature_indices, intermediates_only=True)
    for s, d in zip(sparse_feats, dense_feats, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-4, atol=1e-4)
    dense_state = dense.state_dict()
    for k, s in encoder.model.state_dict().items():
        torch.testing.assert_close(s, dense_state[k], msg=k)  # running statistics updated identically in train mode


def test_sparse_batch_norm_uses_active_positions_only():
    ctx = MaskContext()
    bn = SparseBatchNorm2d(5, momentum=1.0, ctx=ctx)  # momentum 1: running stats = this batch's stats
    nn.init.uniform_(bn.weight, 0.5, 2.0)
    nn.init.uniform_(bn.bias, -1.0, 1.0)
    active = some_mask(batch=3, grid=(2, 2), seed=3)
    mask = upsample(active, (8, 8))
    x = (torch.randn(3, 5, 8, 8) * 3 + 2) * mask  # zero at masked positions, as in the encoder
    with ctx.activate(active):
        y = bn(x)
    values = x.permute(1, 0, 2, 3)[:, mask[:, 0]]  # (C, n_active)
    mean, var = values.mean(1), values.var(1, unbiased=False)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, values.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    expected = (x - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + bn.eps).sqrt()
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y[mask.expand_as(y)], expected[mask.expand_as(y)], rtol=1e-4, atol=1e-4)
    assert y[~mask.expand_as(y)].abs().max() == 0
    # eval: running statistics, still zero at masked positions
    bn.eval()
    with ctx.activate(active):
        y_eval = bn(x)
    expected = (x - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y_eval[mask.expand_as(y)], expected[mask.expand_as(y)], rtol=1e-4, atol=1e-4)
    assert y_eval[~mask.expand_as(y)].abs().max() == 0


def test_sparse_batch_norm_backward_matches_numerical_gradient():
    ctx = MaskContext()
    bn = SparseBatchNorm2d(3, ctx=ctx).double()
    nn.init.uniform_(bn.weight, 0.5, 2.0)
    nn.init.uniform_(bn.bias, -1.0, 1.0)
    active = some_mask(batch=2, grid=(2, 2), seed=6)
    mask = upsample(active, (4, 4)).double()

    def masked_bn(x, weight, bias):
        with ctx.activate(active):  # the layer's contract: input zero at masked positions
            return torch.func.functional_call(bn, {"weight": weight, "bias": bias}, (x * mask,))

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = bn.weight.detach().clone().requires_grad_(True)
    bias = bn.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(masked_bn, (x, weight, bias))


def test_sparse_layer_norm_both_layouts():
    ctx = MaskContext()
    active = some_mask(seed=4)
    x = torch.randn(2, 6, 4, 4)
    ln = nn.LayerNorm(6)
    nn.init.uniform_(ln.bias, 1.0, 2.0)
    mask = upsample(active, (4, 4))
    with ctx.activate(active):
        first = SparseLayerNorm.from_dense(ln, ctx, channels_last=False)(x)
        last = SparseLayerNorm.from_dense(ln, ctx, channels_last=True)(x.permute(0, 2, 3, 1))
    dense = ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * mask
    torch.testing.assert_close(first, dense)
    torch.testing.assert_close(last.permute(0, 3, 1, 2), dense)


def test_state_dict_names_are_timm_names():
    enc = SparseEncoder("resnet18")
    dense_keys = set(timm.create_model("resnet18").state_dict())
    assert set(enc.model.state_dict()) == dense_keys - {"fc.weight", "fc.bias"}
    assert isinstance(enc.model.conv1, SparseConv2d)
    assert isinstance(enc.model.layer1[0].bn1, SparseBatchNorm2d)


def test_a_deep_copy_has_its_own_working_mask_context():
    enc = SparseEncoder("resnet18").eval()
    twin = copy.deepcopy(enc)  # e.g. an EMA copy of the model
    assert twin.mask_context is not enc.mask_context
    assert twin.model.conv1.ctx is twin.mask_context and twin.model.layer4[1].bn2.ctx is twin.mask_context
    x, active = torch.randn(1, 3, 64, 64), some_mask(batch=1, seed=7)
    with torch.no_grad():
        for a, b in zip(enc(x, active), twin(x, active), strict=True):
            torch.testing.assert_close(a, b)


def test_errors_are_explicit():
    ctx = MaskContext()
    with pytest.raises(ValueError, match="'1' .*GroupNorm"):
        sparsify_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), ctx)
    conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3, padding=1), ctx)
    with pytest.raises(RuntimeError, match="outside an active MaskContext"):
        conv(torch.randn(1, 3, 8, 8))
    enc = SparseEncoder("resnet18")
    with pytest.raises(ValueError, match="multiple of the downsample ratio"):
        enc(torch.randn(1, 3, 48, 64), torch.ones(1, 1, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        enc(torch.randn(1, 3, 64, 64), torch.ones(1, 1, 1, 2, dtype=torch.bool))


def test_sync_batch_norm_without_process_group_is_local():
    ctx = MaskContext()
    local, synced = SparseBatchNorm2d(4, ctx=ctx), SparseBatchNorm2d(4, ctx=ctx, sync=True)
    x, active = torch.randn(2, 4, 8, 8), some_mask(seed=5)
    with ctx.activate(active):
        torch.testing.assert_close(local(x), synced(x))
