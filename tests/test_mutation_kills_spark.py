"""Sharper tests of pretrain/spark.py, written for the mutants `make mutate MODULE=pretrain/spark.py` left alive.

Expected values come from SparK's release (drop-path table) or from hand-made cases (a constant patch, predictions
off by a known amount per masked patch), not from the code's own output.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

import pretrain.spark as spark
from pretrain.decoder import SparkDecoder
from pretrain.masking import sample_random_mask
from pretrain.spark import FastPath, SparkMIM, masked_patch_loss, patch_target, spark_drop_path
from pretrain.sparse_norm import SparseBatchNorm2d

P = 32


def tiny(**kwargs) -> SparkMIM:
    return SparkMIM("resnet18", input_size=64, decoder_width=32, **kwargs)


@pytest.mark.parametrize(
    ("backbone", "rate"),
    [
        # SparK's pretrain/models/__init__.py: the drop-path rate of each listed backbone
        ("resnet50", 0.05),
        ("resnet101", 0.08),
        ("resnet152", 0.10),
        ("resnet200", 0.15),
        ("convnext_small", 0.2),
        ("convnext_base", 0.3),
        ("convnext_large", 0.4),
        # a timm tag after the dot does not change the architecture
        ("resnet50.a1_in1k", 0.05),
        ("convnext_base.fb_in22k_ft_in1k", 0.3),
        # unlisted backbones: none
        ("resnet18", 0.0),
        ("resnet18.tv_in1k", 0.0),
        ("convnext_tiny", 0.0),
    ],
)
def test_drop_path_rates_are_sparks(backbone, rate):
    assert spark_drop_path(backbone) == rate


def test_an_explicit_drop_path_rate_wins_over_sparks():
    assert tiny(drop_path_rate=0.1).encoder.model.layer4[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert tiny().encoder.model.layer4[-1].drop_path is None  # resnet18: SparK lists no rate, so none


def test_fast_path_describes_each_setting_under_its_own_name():
    assert FastPath(channels_last=True, bf16=False, compile=True).describe() == {
        "channels_last": True,
        "bf16": False,
        "compile": True,
    }
    assert FastPath(bf16=True).describe() == {"channels_last": False, "bf16": True, "compile": False}


def test_native_bf16_is_onednns_check():
    native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert spark.cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [False, True])
def test_autocast_only_where_bf16_is_asked_for_and_native(monkeypatch, native):
    monkeypatch.setattr(spark, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    for fast, enabled in [(FastPath(bf16=True), native), (FastPath(), False), (FastPath(channels_last=True), False)]:
        ctx = SparkMIM._autocast(SimpleNamespace(fast=fast), cpu)
        assert ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
        assert ctx._enabled is enabled, (fast, native)


@pytest.mark.parametrize("hw", [(64, 80), (80, 64), (48, 64)])
def test_patch_target_refuses_a_side_that_is_not_a_multiple_of_the_patch(hw):
    with pytest.raises(ValueError, match="not a multiple of the patch size 32"):
        patch_target(torch.zeros(1, 3, *hw), P)


def test_constant_patch_has_std_sqrt_eps_and_a_zero_target():
    img = torch.full((1, 3, P, 2 * P), 5.0)
    img[0, :, :, P:] = torch.arange(3.0).view(3, 1, 1)  # second patch: channels 0, 1, 2 (mean 1)
    target = patch_target(img, P)
    # patch 0 is constant: variance 0, std = sqrt(0 + 1e-6) = 1e-3, target exactly 0 (not NaN)
    assert target.std_bch1w1[0, 0, 0, 0, 0, 0].item() == pytest.approx(1e-3, rel=1e-6)
    assert target.mean_bch1w1[0, 0, 0, 0, 0, 0].item() == 5.0
    assert torch.equal(target.normalised_bchpwp[..., 0, :], torch.zeros(1, 3, 1, P, P))
    assert target.mean_bch1w1[0, 0, 0, 0, 1, 0].item() == pytest.approx(1.0)
    # per channel: each channel of patch 1 is constant too
    per_channel = patch_target(img, P, per_channel=True)
    assert per_channel.mean_bch1w1.shape == (1, 3, 1, 1, 2, 1) and target.mean_bch1w1.shape == (1, 1, 1, 1, 2, 1)
    assert per_channel.mean_bch1w1[0, :, 0, 0, 1, 0].tolist() == [0.0, 1.0, 2.0]
    assert per_channel.std_bch1w1.flatten().tolist() == pytest.approx([1e-3] * 6, rel=1e-6)
    assert torch.isfinite(per_channel.normalised_bchpwp).all() and per_channel.normalised_bchpwp.abs().max() == 0


def test_patch_target_is_float32_for_half_input():
    img = torch.rand(2, 3, P, P, generator=torch.Generator().manual_seed(0)).half()
    target = patch_target(img, P)
    assert target.normalised_bchpwp.dtype == torch.float32 and target.std_bch1w1.dtype == torch.float32


def shifted_prediction(target, shift_bhw: torch.Tensor) -> torch.Tensor:
    """The target plus `shift` at every pixel of each patch: that patch's squared error is shift**2."""
    b, c, h, p, w, _ = target.normalised_bchpwp.shape
    pred = target.normalised_bchpwp + shift_bhw[:, None, :, None, :, None]
    return pred.reshape(b, c, h * p, w * p)


def test_masked_patch_loss_by_hand_with_one_two_and_no_masked_patches():
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(3, 3, 2 * P, 3 * P, generator=gen)
    target = patch_target(img, P)
    shift = torch.tensor(
        [[[1.0, 9.0, 9.0], [9.0, 2.0, 9.0]], [[9.0, 9.0, 9.0], [9.0, 9.0, 3.0]], [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]]
    )
    active = shift[:, None] == 9.0  # masked: image 0 cells (0,0), (1,1); image 1 cell (1,2); image 2 none
    loss, per_image = masked_patch_loss(shifted_prediction(target, shift), target, active)
    assert loss.item() == pytest.approx((1 + 4 + 9) / 3, rel=1e-5)  # over the batch's 3 masked patches
    assert per_image.tolist() == pytest.approx([2.5, 9.0, 0.0], rel=1e-5)
    # a single masked patch in the whole batch: its own error, for the batch and for its image
    one = torch.ones_like(active)
    one[1, 0, 1, 2] = False
    loss1, per_image1 = masked_patch_loss(shifted_prediction(target, shift), target, one)
    assert loss1.item() == pytest.approx(9.0, rel=1e-5) and per_image1.tolist() == pytest.approx([0, 9, 0])
    # nothing masked: zero loss, not NaN
    loss0, per_image0 = masked_patch_loss(shifted_prediction(target, shift), target, torch.ones_like(active))
    assert loss0.item() == 0.0 and per_image0.tolist() == [0.0, 0.0, 0.0]


def test_forward_uses_the_per_channel_target_when_asked():
    torch.manual_seed(0)
    model = tiny(per_channel_target=True)
    gen = torch.Generator().manual_seed(0)
    # channels of very different scales: the joint and per-channel targets differ
    img = torch.rand(2, 3, 64, 96, generator=gen) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)
    active = sample_random_mask(2, (2, 3), 0.5, generator=gen)
    preds = []
    handle = model.decoder.register_forward_hook(lambda module, inputs, out: preds.append(out.detach()))
    out = model(img, active)
    handle.remove()
    per_channel = patch_target(img, P, per_channel=True)
    loss, per_image = masked_patch_loss(preds[0], per_channel, active)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(out["loss_per_image_b"], per_image)
    joint = masked_patch_loss(preds[0], patch_target(img, P), active)[0].item()
    assert not math.isclose(joint, loss.item(), rel_tol=1e-3)
    torch.testing.assert_close(out["recon_b3HW"], model.reconstruction(preds[0], img, per_channel, active))
    # only the loss carries gradients: the per-image losses and the reconstruction are for logging
    assert out["loss"].requires_grad
    assert not out["loss_per_image_b"].requires_grad and not out["recon_b3HW"].requires_grad


def test_pixel_shuffle_decoder_widths_floor_at_8_and_sync_bn():
    model = tiny(decoder="pixel_shuffle", sync_bn=True)
    assert [p.out_channels for p in model.densify.projs] == [32, 16, 8, 8]  # 32 halved, never below 8
    bns = [m for m in model.modules() if isinstance(m, SparseBatchNorm2d)]
    assert [m for m in model.decoder.modules() if isinstance(m, SparseBatchNorm2d)]
    assert bns and all(m.sync for m in bns)


def test_fast_path_settings_reach_the_model():
    plain = tiny()
    assert plain.backbone == "resnet18" and plain.input_size == 64 and plain.fast == FastPath()
    assert not plain.encoder.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.decoder._compiled_call_impl is None
    fast = tiny(fast=FastPath(channels_last=True, compile=True))
    assert fast.fast == FastPath(channels_last=True, compile=True)
    for name in ("encoder.model.conv1.weight", "decoder.blocks.0.1.weight"):
        assert fast.get_parameter(name).is_contiguous(memory_format=torch.channels_last), name
    assert fast.decoder._compiled_call_impl is not None  # compiled lazily, at the first call


def test_the_encoder_gets_an_nhwc_input_only_on_the_channels_last_path():
    img = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    active = torch.tensor([[[[True, False, True], [False, True, False]]]])
    for fast, nhwc in [(FastPath(), False), (FastPath(channels_last=True), True)]:
        model = tiny(fast=fast)
        seen = []
        model.encoder.register_forward_pre_hook(lambda module, inputs, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            model(img, active)
        assert seen[0].is_contiguous(memory_format=torch.channels_last) is nhwc
        assert torch.equal(seen[0], img) and (seen[0] is img) is not nhwc  # the plain path passes it as given


@pytest.mark.parametrize("bf16", [False, True])
def test_autocast_on_a_gpu_is_bf16_whatever_the_cpu(monkeypatch, bf16):
    """On CUDA, bf16 (not CUDA's default float16) whenever asked for, even where the CPU has no native bf16."""
    monkeypatch.setattr(spark, "cpu_has_native_bf16", lambda: False)
    owner = SimpleNamespace(fast=FastPath(bf16=bf16))
    if torch.cuda.is_available():
        ctx = SparkMIM._autocast(owner, torch.device("cuda"))
        assert ctx._enabled is bf16
    elif bf16:  # without CUDA, torch turns an enabled CUDA autocast off with a warning: so it was enabled
        with pytest.warns(UserWarning, match="CUDA is not available"):
            ctx = SparkMIM._autocast(owner, torch.device("cuda"))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ctx = SparkMIM._autocast(owner, torch.device("cuda"))
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_reconstruction_has_the_images_dtype(dtype):
    img = torch.rand(1, 3, P, 2 * P, generator=torch.Generator().manual_seed(2)).to(dtype)
    target = patch_target(img, P)
    active = torch.tensor([[[[True, False]]]])
    recon = SparkMIM.reconstruction(None, torch.zeros(1, 3, P, 2 * P), img, target, active)
    assert recon.dtype == dtype
    assert torch.equal(recon[..., :P], img[..., :P])  # the visible patch: the input itself
    mean = target.mean_bch1w1[0, 0, 0, 0, 1, 0].expand(1, 3, P, P)  # a zero prediction: the patch's mean
    torch.testing.assert_close(recon[..., P:].float(), mean, rtol=1e-3, atol=1e-3)


def test_defaults_are_sparks():
    """SparK's release: ResNet-50 at 224, its UNet decoder of width 768, the C x p x p joint patch target, SparK's
    drop-path rate, plain BatchNorm, no fast path. Built, not read from the signature: a default is what a call
    without the argument gets."""
    model = SparkMIM()
    assert model.backbone == "resnet50" and model.input_size == 224 and model.grid_hw((224, 224)) == (7, 7)
    assert isinstance(model.decoder, SparkDecoder) and model.decoder.widths[0] == 768
    assert not model.per_channel_target and model.fast == FastPath()
    assert model.encoder.model.layer4[-1].drop_path.drop_prob == pytest.approx(0.05)
    assert not any(m.sync for m in model.modules() if isinstance(m, SparseBatchNorm2d))
    assert all(isinstance(n, SparseBatchNorm2d) for n in model.densify.norms)  # a ResNet: BatchNorm in densify
