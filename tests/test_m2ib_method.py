"""M2IB against values reasoned independently of its code: the capacity's closed-form KL, the map of the first
forward pass, and a hand-built CLIP (real open_clip / timm classes, weights set here) whose image-text similarity
depends on one known patch only: the map must peak there, and a sign error in the objective must not.
"""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch.distributions import Normal, kl_divergence

from localize.saliency import M2IBSaliency, build_saliency
from localize.saliency.bottleneck import TokenBottleneck

# ------------------------------------------------------------------------------------------ the bottleneck


def test_capacity_is_the_closed_form_kl_to_the_noise_prior():
    x_ntc = torch.tensor([[[0.0, 1.5, -2.0], [3.0, -0.5, 0.25]]])  # 1 item, 2 tokens, 3 channels
    alpha = torch.tensor([[[5.0, 0.0, -3.0], [1.0, -8.0, 12.0]]])
    raw = TokenBottleneck(torch.zeros(1, 1, 3), torch.ones(1, 1, 3), n_tokens=2)
    with torch.no_grad():
        raw.alpha_ntc.copy_(alpha)
    lam, x64 = torch.sigmoid(alpha.double()), x_ntc.double()  # float64: 1 - lam at alpha 12 is 6e-6
    # KL[N(lam x, (1 - lam)^2) || N(0, 1)] = -log(1 - lam) + ((1 - lam)^2 + (lam x)^2) / 2 - 1/2, element by element
    by_hand = -torch.log(1 - lam) + ((1 - lam) ** 2 + (lam * x64) ** 2) / 2 - 0.5
    by_torch = kl_divergence(Normal(lam * x64, 1 - lam), Normal(torch.zeros((), dtype=torch.float64), 1.0))
    torch.testing.assert_close(raw.capacity(x_ntc).double(), by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(raw.capacity(x_ntc).double(), by_torch, rtol=1e-5, atol=1e-6)
    # one element by hand: alpha 0 -> lam 1/2, x 1.5: log 2 + (1/4 + 9/16) / 2 - 1/2
    assert raw.capacity(x_ntc)[0, 0, 1].item() == pytest.approx(math.log(2) + (0.25 + 0.5625) / 2 - 0.5, rel=1e-6)

    # IBA-style statistics and another prior variance: KL[N(lam (x - m) / s, (1 - lam)^2 v) || N(0, v)]
    mean, std, var = torch.tensor([[[0.5, -1.0, 2.0]]]), torch.tensor([[[2.0, 0.5, 1.5]]]), 2.0
    standardised = TokenBottleneck(mean, std, n_tokens=2, noise_var=var)
    with torch.no_grad():
        standardised.alpha_ntc.copy_(alpha)
    mu = lam * (x64 - mean.double()) / std.double()
    prior = Normal(torch.zeros((), dtype=torch.float64), var**0.5)
    expected = kl_divergence(Normal(mu, (1 - lam) * var**0.5), prior)
    torch.testing.assert_close(standardised.capacity(x_ntc).double(), expected, rtol=1e-5, atol=1e-6)


def test_noise_goes_onto_the_raw_features():
    x_nstc = torch.tensor([[[[2.0, -1.0]], [[2.0, -1.0]]]])  # 1 item, 2 noise samples, 1 token, 2 channels
    eps_stc = torch.tensor([[[0.5, 1.0]], [[-2.0, 0.0]]])
    bottleneck = TokenBottleneck(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), n_tokens=1)
    with torch.no_grad():
        bottleneck.alpha_ntc.fill_(0.0)  # lam = 1/2
    z = bottleneck(x_nstc, eps_stc)
    torch.testing.assert_close(z, 0.5 * x_nstc + 0.5 * eps_stc[None])  # z = lam x + (1 - lam) eps


# ------------------------------------------------------------------------------------------ a hand-built CLIP
GRID, PATCH = 10, 16  # timm's test_vit: 160 px, 16 px patches, width 64, 6 blocks
N_CONTENT, GATE, ZERO = 16, 16, 17  # feature channels: 0..15 image content, 16 a position gate, 17.. always 0
B, G = 8.0, 16.0  # GELU(8 + x) = 8 + x and GELU(-8 + x) = 0 in float32 for |x| << 1


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    """A CLIP of BiomedCLIP's layout at toy size (timm ViT tower with average pooling and a linear head, a small
    text transformer), randomly initialised by open_clip."""
    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(timm_model_name="test_vit", timm_pool="avg", timm_proj="linear", image_size=160),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=32, width=32, heads=2, layers=1),
    ).eval()


def gated_clip(p_star: int, seed: int = 0) -> open_clip.CLIP:
    """A CLIP (timm ViT vision tower, average pooling, linear head) whose features after block 0 are the content of
    patch ``p_star`` only: the position embedding marks that patch with a gate channel, block 0's MLP passes each
    content channel where the gate is on and subtracts it elsewhere (GELU as a switch; LayerNorm made linear by a
    huge eps, its output read as channel differences so the mean cancels), the gate channel itself is removed,
    attention is off and blocks 1-5 are identities. Content features are small (~0.01), so the capacity's mean
    term weighs nothing beside what the optimisation does to lambda."""
    model = tiny_clip(seed)
    trunk = model.visual.trunk
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trunk.parameters():
            p.zero_()
        content_w = torch.randn(N_CONTENT, 3, PATCH, PATCH, generator=gen) * 0.01 / (3 * PATCH * PATCH) ** 0.5
        trunk.patch_embed.proj.weight[:N_CONTENT] = content_w
        trunk.pos_embed[0, 1 + p_star, GATE] = G
        for block in trunk.blocks:
            block.norm1.weight.fill_(1.0)
            block.norm2.weight.fill_(1.0)
        gate = trunk.blocks[0]
        gate.norm2.weight.fill_(1e4)
        gate.norm2.eps = 1e8  # LayerNorm(x) = (x - mean) * 1e4 / sqrt(var + 1e8) = x - mean to 1e-6
        w1, b1, w2, b2 = gate.mlp.fc1.weight, gate.mlp.fc1.bias, gate.mlp.fc2.weight, gate.mlp.fc2.bias
        for k in range(N_CONTENT):
            w1[k, [k, GATE, ZERO]] = torch.tensor([1.0, 1.0, -2.0])  # u1 = x_k + gate + B - G
            b1[k] = B - G
            w1[N_CONTENT + k, [k, ZERO]] = torch.tensor([1.0, -1.0])  # u2 = x_k + B
            b1[N_CONTENT + k] = B
            w2[k, [k, N_CONTENT + k, 32]] = torch.tensor([1.0, -1.0, -1.0])  # x_k += GELU(u1) - GELU(u2) - GELU(u3) + B
            b2[k] = B
        w1[32, [GATE, ZERO]] = torch.tensor([1.0, -1.0])  # u3 = gate + B - G
        b1[32] = B - G
        w1[33, [GATE, ZERO]] = torch.tensor([1.0, -1.0])  # u4 = gate + B
        b1[33] = B
        w2[GATE, 33], b2[GATE] = -1.0, B  # gate += -GELU(u4) + B = -gate
        trunk.norm.weight.fill_(1.0)
        model.visual.head.proj.weight.copy_(torch.randn(16, 64, generator=gen))
    return model


def patch_of(p: int) -> tuple[slice, slice]:
    row, col = divmod(p, GRID)
    return slice(row * PATCH, (row + 1) * PATCH), slice(col * PATCH, (col + 1) * PATCH)


@pytest.mark.parametrize("p_star", [37, 62])
def test_m2ib_map_peaks_at_the_only_patch_the_similarity_depends_on(p_star):
    model = gated_clip(p_star)
    image = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedding = model.encode_image(image)
        elsewhere = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
        rows, cols = patch_of(p_star)
        elsewhere[..., rows, cols] = image[..., rows, cols]  # same patch p_star, everything else different
        moved = model.encode_image(elsewhere)
    # The construction: the embedding is the content of p_star (the gate's float rounding leaks < 1%).
    assert (moved - embedding).abs().max() < 1e-2 * embedding.abs().max()
    text = F.normalize(embedding, dim=-1)  # the prompt whose embedding this image matches

    saliency = M2IBSaliency(layer=3)(model, image, text)[0, 0]  # the release's M2IB
    centres = saliency[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].flatten()  # ~ one value per patch token
    others = torch.cat([centres[:p_star], centres[p_star + 1 :]])
    assert int(centres.argmax()) == p_star and centres[p_star] > 0.95
    assert others.max() < centres[p_star] - 0.5  # a clear peak, not a tie
    # Minimising the capacity alone (beta large) would flatten everything: the peak comes from the fitting term.
    y, x = divmod(int(saliency.argmax()), 160)
    assert (y // PATCH) * GRID + x // PATCH == p_star


def test_fast_preset_finds_the_patch_too():
    model = gated_clip(37)
    image = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = F.normalize(model.encode_image(image), dim=-1)
    fast = build_saliency({"method": "m2ib", "preset": "fast", "layer": 3})
    centres = fast(model, image, text)[0, 0, PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].flatten()
    assert int(centres.argmax()) == 37


def test_first_forward_map_is_the_capacity_of_the_clean_features():
    """With one step the release reads the map before any update: lambda = sigmoid(5) everywhere, so the capacity
    summed over channels is C * const + lambda^2 / 2 * sum_c x^2: after min-max scaling, the map is the min-max
    scaled sum of squares of the layer's clean features (bilinearly upsampled)."""
    model = tiny_clip(seed=5)
    image = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    captured = []
    handle = model.visual.trunk.blocks[2].register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        model.encode_image(image)
    handle.remove()
    energy = captured[0][:, 1:].square().sum(-1).reshape(2, 1, GRID, GRID)
    expected = F.interpolate(energy, size=(160, 160), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = expected.flatten(1).amin(1)[:, None, None], expected.flatten(1).amax(1)[:, None, None]
    expected = (expected - lo) / (hi - lo)
    text = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(4)), dim=-1)
    got = M2IBSaliency(layer=2, steps=1)(model, image, text)[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    final = M2IBSaliency(layer=2, steps=1, map_at="final")(model, image, text)[:, 0]
    assert (final - expected).abs().max() > 1e-2  # the map after the update is another one
