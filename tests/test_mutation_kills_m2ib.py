"""Tests that kill surviving mutants of localize/saliency/m2ib.py (`make mutate MODULE=localize/saliency/m2ib.py`).

They run on a toy CLIP of BiomedCLIP's layout (timm 'test_vit' at 64 px: 4x4 patches, 6 blocks, width 64; class
token pooling, linear head) so that each takes a second or two. Expected values come from the method's definition:
Adam's first step moves every parameter by lr against its gradient's sign; with the capacity dominating (beta
large) that gradient is positive, with beta 0 two prompts of opposite embeddings get opposite gradients; the
capacity at the initial mask is a closed form of the layer's clean features.
"""

from __future__ import annotations

import math
import os
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from localize.saliency import M2IBSaliency
from localize.saliency.m2ib import M2IB_PRESETS

SIZE, PATCH, WIDTH = 64, 16, 64
GRID = SIZE // PATCH
TOKENS = 1 + GRID * GRID


def toy_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(timm_model_name="test_vit", timm_pool="", timm_proj="linear", image_size=SIZE),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=32, width=32, heads=2, layers=1),
    ).eval()


@pytest.fixture(scope="module")
def model() -> open_clip.CLIP:
    return toy_clip()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def clean_features(model, images, layer: int) -> torch.Tensor:
    captured = []
    handle = model.visual.trunk.blocks[layer].register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        model.encode_image(images)
    handle.remove()
    return captured[0].double()


def capacity_at_alpha(x: torch.Tensor, alpha: float, var: float = 1.0) -> torch.Tensor:
    """KL[N(lam x, (1 - lam)^2 var) || N(0, var)] element by element (raw features; the release's var is 1)."""
    lam = 1 / (1 + math.exp(-alpha))
    return -math.log(1 - lam) + ((1 - lam) ** 2 * var + (lam * x) ** 2) / (2 * var) - 0.5


def own_and_opposite_prompts(model, image_13hw) -> torch.Tensor:
    with torch.no_grad():
        e = F.normalize(model.encode_image(image_13hw).float(), dim=-1)
    return torch.cat([e, -e])


# ------------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    "bad",
    [
        {"layer": -1},
        {"steps": 0},
        {"noise_var": 0.0},
        {"lr": 0.0},
        {"beta": -1e-3},
        {"noise_samples": 0},
    ],
)
def test_each_bound_is_checked_on_its_own(bad):
    with pytest.raises(ValueError, match=r"m2ib needs layer >= 0, steps >= 1, noise_var > 0, lr > 0, beta >= 0"):
        M2IBSaliency(**bad)


def test_the_bounds_themselves_are_allowed():
    edge = M2IBSaliency(layer=0, steps=1, beta=0.0, noise_samples=1, noise_var=1e-3, lr=1e-3)
    assert (edge.layer, edge.steps, edge.beta, edge.noise_samples) == (0, 1, 0.0, 1)
    for stats in ("raw", "empirical"):
        assert M2IBSaliency(noise_stats=stats).noise_stats == stats
    for at in ("last_forward", "final"):
        assert M2IBSaliency(map_at=at).map_at == at


def test_choices_are_checked_with_their_own_messages():
    with pytest.raises(ValueError, match=r"^m2ib noise_stats must be one of \('raw', 'empirical'\), got 'iba'\.$"):
        M2IBSaliency(noise_stats="iba")
    with pytest.raises(ValueError, match=r"^m2ib map_at must be one of \('last_forward', 'final'\), got 'best'\.$"):
        M2IBSaliency(map_at="best")
    with pytest.raises(ValueError, match=r"^Unknown m2ib preset 'quick': use one of \['fast', 'release'\]\.$"):
        M2IBSaliency(preset="quick")
    with pytest.raises(ValueError, match=r"^Unknown m2ib preset 'quick': use one of \['fast', 'release'\]\.$"):
        M2IBSaliency.from_preset("quick")


def test_from_preset_applies_the_preset_then_the_parameters():
    assert M2IBSaliency.from_preset() == M2IBSaliency()  # default: the release
    fast = M2IBSaliency.from_preset("fast", noise_samples=4, layer=2)
    assert (fast.noise_stats, fast.map_at, fast.noise_samples, fast.layer, fast.preset) == (
        "empirical",
        "final",
        4,
        2,
        "fast",
    )
    assert M2IB_PRESETS["fast"] == {"noise_stats": "empirical", "noise_samples": 1, "map_at": "final"}


def test_provenance_lists_every_parameter_but_the_speed_option(model):
    method = M2IBSaliency(layer=2, steps=3, reuse_prefix=False)
    described = method.provenance()
    assert described == {
        "method": "m2ib",
        "gradient_free": False,
        "layer": 2,
        "beta": 0.1,
        "steps": 3,
        "lr": 1.0,
        "noise_samples": 10,
        "noise_stats": "raw",
        "map_at": "last_forward",
        "noise_var": 1.0,
        "seed": 0,
        "preset": "release",
    }
    assert method.provenance(model) == {**described, "effective_layer": 2}


def test_the_last_block_is_used_as_is_and_one_beyond_is_clamped_with_a_warning_naming_the_caller(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # block 5 of 6 exists: no warning
        assert M2IBSaliency(layer=5).provenance(model)["effective_layer"] == 5
    with pytest.warns(UserWarning) as record:
        assert M2IBSaliency(layer=6).provenance(model)["effective_layer"] == 5
    assert len(record) == 1
    assert str(record[0].message) == (
        "m2ib layer 6 does not exist in a 6-block vision tower; using the last block (5)."
    )
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampolines add frames between caller and callee
        assert record[0].filename == __file__  # stacklevel: the caller of provenance, not m2ib.py


# ------------------------------------------------------------------------------------------ the optimisation


@pytest.mark.parametrize("noise_var", [1.0, 4.0])
def test_first_loss_is_beta_times_the_mean_capacity_minus_the_similarity(model, images, noise_var):
    """Step 0 runs at alpha = 5 everywhere: its capacity is a closed form of the clean features; the fitting term
    of the prompt that is the image's own embedding is ~1 (the noise is 0.7% of the input), of its opposite ~-1."""
    beta, layer = 0.3, 2
    x = clean_features(model, images, layer)  # (2, T, C)
    text = torch.cat([own_and_opposite_prompts(model, images[b : b + 1]) for b in range(2)])[[0, 1, 3]]
    run = M2IBSaliency(layer=layer, beta=beta, steps=2, noise_samples=2, noise_var=noise_var).run(model, images, text)
    capacity_b = capacity_at_alpha(x, 5.0, noise_var).mean(dim=(1, 2))  # per image
    # items: (image 0; own, opposite, image 1's opposite), (image 1; image 0's own, its own opposite, ...)
    cos_with = F.normalize(model.encode_image(images).detach().float(), dim=-1) @ text.T  # clean similarities (2, 3)
    expected = (beta * capacity_b[:, None] - cos_with).mean()
    assert run.loss_s.shape == (2,) and run.loss_s.dtype == torch.float32
    assert run.loss_s[0].item() == pytest.approx(expected.item(), abs=2e-2)
    # the capacity term alone is far from it: the loss is a mean over the six items, with the fitting term
    assert abs(run.loss_s[0].item() - beta * capacity_b.mean().item()) > 0.1


def test_one_step_with_a_dominant_capacity_moves_every_alpha_by_minus_lr(model, images):
    """Adam's first update is lr * g / (|g| + eps) = lr * sign(g); with beta huge the capacity's gradient (> 0 at
    alpha 5 for every element) decides: lambda = sigmoid(5 - lr) everywhere, for every item."""
    text = own_and_opposite_prompts(model, images[:1])
    lr = 0.5
    run = M2IBSaliency(layer=1, beta=1e4, lr=lr, steps=1, noise_samples=1).run(model, images, text)
    assert run.lambda_ntc.shape == (4, TOKENS, WIDTH)
    torch.testing.assert_close(run.lambda_ntc, torch.full_like(run.lambda_ntc, 1 / (1 + math.exp(-(5 - lr)))))
    assert run.loss_s.shape == (1,)


def test_opposite_prompts_get_opposite_updates_item_by_item(model, images):
    """beta 0: the loss of item (b, p) is -cos(f(z_b), t_p); with t_1 = -t_0 and the noise shared by all items, the
    two items of an image have exactly opposite gradients, so after one Adam step alpha_0 + alpha_1 = 10 wherever the
    gradient is not ~0. Items are ordered b * P + p."""
    text = own_and_opposite_prompts(model, images[:1])  # image 0's own embedding and its opposite
    run = M2IBSaliency(layer=2, beta=0.0, lr=1.0, steps=1, noise_samples=2).run(model, images, text)
    alpha = torch.logit(run.lambda_ntc.double())
    moved = (alpha - 5).abs() > 0.5  # elements whose gradient was not ~0
    assert moved.float().mean() > 0.5
    for b in range(2):
        pair = alpha[2 * b] + alpha[2 * b + 1]
        both = moved[2 * b] & moved[2 * b + 1]
        torch.testing.assert_close(pair[both], torch.full_like(pair[both], 10.0), atol=1e-3, rtol=0)
    # image 0 with its own embedding: keeping the information raises the similarity, so most of its alphas go up
    assert (alpha[0][moved[0]] > 5).float().mean() > 0.5
    # the two images' items differ (another image, other gradients)
    assert not torch.allclose(alpha[0], alpha[2], atol=1e-2)


def test_batched_items_equal_each_item_alone(model, images):
    text = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    method = M2IBSaliency(layer=2, steps=3, noise_samples=2)
    both = method.run(model, images, text)
    assert both.saliency_bphw.shape == (2, 3, SIZE, SIZE) and both.lambda_ntc.shape == (6, TOKENS, WIDTH)
    for b, p in [(0, 2), (1, 0), (1, 1)]:
        alone = method.run(model, images[b : b + 1], text[p : p + 1])
        torch.testing.assert_close(both.saliency_bphw[b, p], alone.saliency_bphw[0, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both.lambda_ntc[b * 3 + p], alone.lambda_ntc[0], atol=1e-5, rtol=1e-5)
    flat = both.saliency_bphw.flatten(2)
    torch.testing.assert_close(flat.amin(-1), torch.zeros(2, 3))
    torch.testing.assert_close(flat.amax(-1), torch.ones(2, 3))


def test_reusing_the_prefix_changes_nothing_and_runs_it_once(model, images):
    text = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(4)), dim=-1)
    calls = []
    handle = model.visual.trunk.blocks[0].register_forward_hook(lambda m, i, out: calls.append(1))
    try:
        reused = M2IBSaliency(layer=3, steps=3, noise_samples=2).run(model, images, text)
        assert len(calls) == 1
        full = M2IBSaliency(layer=3, steps=3, noise_samples=2, reuse_prefix=False).run(model, images, text)
        assert len(calls) == 1 + 1 + 3
    finally:
        handle.remove()
    torch.testing.assert_close(reused.saliency_bphw, full.saliency_bphw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reused.lambda_ntc, full.lambda_ntc, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reused.loss_s, full.loss_s, atol=1e-5, rtol=1e-4)
    assert not model.visual.trunk.blocks[3]._forward_hooks  # hooks removed


def test_map_only_skips_the_last_step_and_keeps_the_map(model, images):
    text = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    for reuse in (True, False):
        method = M2IBSaliency(layer=2, steps=3, noise_samples=2, reuse_prefix=reuse)
        full, short = method.run(model, images, text), method.run(model, images, text, map_only=True)
        torch.testing.assert_close(short.saliency_bphw, full.saliency_bphw, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(short.loss_s, full.loss_s[:2])
        torch.testing.assert_close(method(model, images, text), full.saliency_bphw, atol=1e-6, rtol=1e-5)
    # calling the method skips that last pass: the clean pass, then steps - 1 passes through the last block
    calls = []
    handle = model.visual.trunk.blocks[-1].register_forward_hook(lambda m, i, out: calls.append(1))
    try:
        M2IBSaliency(layer=2, steps=3, noise_samples=2, reuse_prefix=False)(model, images, text)
    finally:
        handle.remove()
    assert len(calls) == 1 + 2
    # the map at the final mask: map_only skips nothing
    final = M2IBSaliency(layer=2, steps=3, noise_samples=2, map_at="final")
    full, short = final.run(model, images, text), final.run(model, images, text, map_only=True)
    assert short.loss_s.shape == (3,)
    torch.testing.assert_close(short.saliency_bphw, full.saliency_bphw)
    torch.testing.assert_close(short.lambda_ntc, full.lambda_ntc)


def test_one_step_map_only_has_no_losses(model, images):
    text = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(6)), dim=-1)
    run = M2IBSaliency(layer=2, steps=1, noise_samples=1).run(model, images[:1], text, map_only=True)
    assert run.loss_s.shape == (0,) and run.loss_s.dtype == torch.float32
    torch.testing.assert_close(run.lambda_ntc, torch.full((1, TOKENS, WIDTH), 1 / (1 + math.exp(-5.0))))


def test_first_forward_map_of_empirical_statistics_is_the_standardised_energy(model, images):
    """noise_stats 'empirical', one step, map of the first forward pass: lambda uniform, so the channel-summed
    capacity is const + lam^2 / 2 * sum_c ((x - m_c) / s_c)^2 with m, s each image's per-channel mean / std over its
    tokens: after min-max scaling, that standardised energy, bilinearly upsampled."""
    layer = 2
    x = clean_features(model, images, layer)
    z = (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)
    energy = z[:, 1:].square().sum(-1).reshape(2, 1, GRID, GRID).float()
    expected = F.interpolate(energy, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = expected.flatten(1).amin(1)[:, None, None], expected.flatten(1).amax(1)[:, None, None]
    expected = (expected - lo) / (hi - lo)
    text = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(8)), dim=-1)
    got = M2IBSaliency(layer=layer, steps=1, noise_samples=1, noise_stats="empirical").run(model, images, text)
    torch.testing.assert_close(got.saliency_bphw[:, 0], expected, atol=1e-4, rtol=1e-4)
    # the raw statistics give another map (the energy of the unstandardised features)
    raw = M2IBSaliency(layer=layer, steps=1, noise_samples=1)(model, images, text)
    assert (raw[:, 0] - expected).abs().max() > 1e-2


def test_the_seed_and_the_number_of_noise_samples_change_the_mask(model, images):
    text = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(9)), dim=-1)
    base = M2IBSaliency(layer=2, steps=2, noise_samples=2, beta=0.0)
    first, again = base.run(model, images[:1], text), base.run(model, images[:1], text)
    assert torch.equal(first.lambda_ntc, again.lambda_ntc)
    for change in ({"seed": 1}, {"noise_samples": 3}):
        other = M2IBSaliency(**{"layer": 2, "steps": 2, "noise_samples": 2, "beta": 0.0, **change})
        assert not torch.allclose(first.lambda_ntc, other.run(model, images[:1], text).lambda_ntc, atol=1e-4)
