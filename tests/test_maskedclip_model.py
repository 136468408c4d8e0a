"""MaskedCLIP's modules: what the encoder sees, the pixel target, the decoders' scatter, the EMA teacher."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from pretrain.maskedclip.image_decoder import patch_target, patchify, unpatchify
from pretrain.maskedclip.image_encoder import ImageEncoder
from tests.maskedclip_fixtures import tiny_maskedclip


def test_patchify_orders_patches_row_major_and_unpatchify_inverts_it():
    img = torch.zeros(1, 3, 4, 4)
    img[0, :, 0:2, 2:4] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)  # top-right 2x2 block = patch 1
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 12)
    assert patches[0, 1].tolist() == [1.0] * 4 + [2.0] * 4 + [3.0] * 4  # channel-major within the patch
    assert not patches[0, [0, 2, 3]].any()
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, (8, 12)), x)


def test_pixel_target_normalises_each_patch_over_channels_and_pixels_jointly():
    # one 2x2 patch with channels constant at 0, 1, 2: 12 values, mean 1, unbiased variance 8/11.
    # (normalising each channel on its own would give all zeros)
    img = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    target = patch_target(img, 2)
    expected = (torch.tensor([0.0] * 4 + [1.0] * 4 + [2.0] * 4) - 1.0) / math.sqrt(8 / 11 + 1e-6)
    torch.testing.assert_close(target.normalised_bnd[0, 0], expected)
    assert target.mean_bn1.item() == pytest.approx(1.0)


def encoder_and_image(seed=0):
    torch.manual_seed(seed)
    encoder = ImageEncoder("test_vit", 4, 64).eval()
    return encoder, torch.randn(2, 3, 64, 64)


def test_the_encoder_never_sees_masked_patches():
    encoder, img = encoder_and_image()
    active = torch.zeros(2, 16, dtype=torch.bool)
    active[:, [0, 5, 6, 15]] = True
    changed = img.clone()
    changed[:, :, 16:32, 0:16] = 100.0  # grid cell 4 (row 1, column 0): masked
    with torch.no_grad():
        a, b = encoder(img, active), encoder(changed, active)
    assert a.ids_bl.tolist() == [[0, 5, 6, 15]] * 2 and a.valid_bl.all()
    torch.testing.assert_close(a.features_btc, b.features_btc)
    changed[:, :, 16:32, 16:32] = 100.0  # cell 5: visible
    with torch.no_grad():
        assert not torch.allclose(encoder(changed, active).features_btc, a.features_btc)


def test_padding_slots_of_images_keeping_fewer_patches_are_invisible():
    encoder, img = encoder_and_image()
    active = torch.zeros(2, 16, dtype=torch.bool)
    active[0, [1, 2, 3, 8, 9]] = True  # 5 visible
    active[1, [4, 12]] = True  # 2 visible: 3 padding slots
    with torch.no_grad():
        both = encoder(img, active)
        alone = encoder(img[1:], active[1:])
    assert both.valid_bl[1].tolist() == [True, True, False, False, False]
    assert both.ids_bl[1, :2].tolist() == [4, 12]
    # prefix token + 2 real patches: the same as encoding the image alone, padding unseen
    torch.testing.assert_close(both.features_btc[1, :3], alone.features_btc[0], rtol=1e-5, atol=1e-5)


def test_encoder_plus_bridge_is_the_whole_timm_vit():
    torch.manual_seed(0)
    model, _ = tiny_maskedclip()
    model.eval()
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    state = {k: v for k, v in model.encoder.vit.state_dict().items() if not k.startswith("norm.")}
    first = model.bridge.first_block
    assert first == 4 and len(model.encoder.vit.blocks) == 4 and len(model.bridge.blocks) == 2
    state |= {
        f"blocks.{first + int(k.split('.')[1])}.{k.split('.', 2)[2]}": v
        for k, v in model.bridge.state_dict().items()
        if k.startswith("blocks.")
    }
    state |= {k: v for k, v in model.bridge.state_dict().items() if k.startswith("norm.")}
    vit.load_state_dict(state, strict=True)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, embedding = model.encode_image(img)
        torch.testing.assert_close(tokens, vit.forward_features(img))
        torch.testing.assert_close(embedding, model.bridge.proj(vit(img)))  # class-token pooling, then P_I
        # the full-image path (no mask) is the masked path with every patch visible
        full, all_visible = model.encoder(img), model.encoder(img, torch.ones(2, 16, dtype=torch.bool))
    for name, value in full._asdict().items():
        torch.testing.assert_close(value, getattr(all_visible, name), msg=name)


def test_decoders_put_mask_tokens_at_masked_positions_and_keep_visible_tokens_in_place():
    torch.manual_seed(0)
    model, _ = tiny_maskedclip()
    decoder = model.image_decoder.decoder.eval()
    encoder = model.encoder.eval()
    img = torch.randn(1, 3, 64, 64)
    active = torch.zeros(1, 16, dtype=torch.bool)
    active[0, [2, 7]] = True
    with torch.no_grad():
        visible = encoder(img, active)
        base = decoder(visible, (4, 4))
        decoder.mask_token.add_(1.0)  # a different mask token changes nothing but what the blocks see...
        shifted = decoder(visible, (4, 4))
    assert base.shape == (1, 16, model.image_decoder.patch**2 * 3)
    assert not torch.allclose(base, shifted)
    # ...and with no block at all, visible positions only depend on their own encoder token
    decoder.blocks = torch.nn.Sequential()
    with torch.no_grad():
        plain = decoder(visible, (4, 4))
        decoder.mask_token.sub_(1.0)
        plain_again = decoder(visible, (4, 4))
    torch.testing.assert_close(plain[0, [2, 7]], plain_again[0, [2, 7]])
    masked = [i for i in range(16) if i not in (2, 7)]
    assert not torch.allclose(plain[0, masked], plain_again[0, masked])


def test_ema_teacher_moves_by_one_minus_momentum():
    torch.manual_seed(0)
    model, _ = tiny_maskedclip(teacher="ema", ema_momentum=0.9)
    teacher_w = model.teacher.bridge.proj.weight
    assert not teacher_w.requires_grad
    torch.testing.assert_close(teacher_w, model.bridge.proj.weight)  # starts as the online weights
    before = teacher_w.clone()
    with torch.no_grad():
        model.bridge.proj.weight.add_(1.0)
    model.update_teacher()
    torch.testing.assert_close(teacher_w, before + 0.1)  # 0.9 * w + 0.1 * (w + 1)


def test_input_size_must_suit_the_vit():
    with pytest.raises(ValueError, match="equal to its own size"):
        ImageEncoder("vit_tiny_patch16_224", 10, 64)  # fixed 224 position grid
    with pytest.raises(ValueError, match="multiple of the patch"):
        ImageEncoder("test_vit", 4, 72)
    with pytest.raises(ValueError, match="bridge depth must be in"):
        tiny_maskedclip(bridge_depth=6)
