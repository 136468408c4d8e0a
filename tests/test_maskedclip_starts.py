"""Pretrained starts (issue 25 item 7): the image tower from a timm state dict or an open_clip folder in
BiomedCLIP's layout, per-tower learning rates, open_clip's text lock, gradient checkpointing."""

from __future__ import annotations

import pytest
import timm
import torch

from pretrain.maskedclip.module import MaskedClipPretraining
from tests.maskedclip_fixtures import tiny_model_args, write_tiny_bert_folder


def test_the_image_tower_starts_from_a_timm_state_dict(tmp_path):
    torch.manual_seed(1)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    module = MaskedClipPretraining(**tiny_model_args(vit_init=str(tmp_path / "vit.pt")))
    model = module.model.eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # E then B is the whole ViT again, with the file's weights (blocks 0-3 in E, 4-5 in B)
        torch.testing.assert_close(model.encode_image(img)[0], vit.forward_features(img))
    torch.testing.assert_close(model.bridge.blocks[0].attn.qkv.weight, vit.blocks[4].attn.qkv.weight)
    torch.save({k: v for k, v in vit.state_dict().items() if "blocks.5." not in k}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="short.pt"):
        MaskedClipPretraining(**tiny_model_args(vit_init=str(tmp_path / "short.pt")))


def test_the_image_tower_starts_from_an_open_clip_folder_with_its_projection(tmp_path):
    from pretrain.maskedclip.export import TrainedMaskedClip, export_open_clip
    from pretrain.maskedclip.tokenizer import ReportTokenizer

    torch.manual_seed(2)
    source = MaskedClipPretraining(**tiny_model_args())
    trained = TrainedMaskedClip(source.model.eval(), ReportTokenizer(None, 48), dict(source.hparams), {})
    export_open_clip(trained, tmp_path / "clip")  # the BiomedCLIP layout (open_clip_model.safetensors)
    torch.manual_seed(3)
    module = MaskedClipPretraining(**tiny_model_args(vit_init=f"local-dir:{tmp_path / 'clip'}"))
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.model.encode_image(img)
        got = module.model.eval().encode_image(img)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])  # P_I too


def test_per_tower_learning_rates_and_the_text_lock(tmp_path):
    folder = write_tiny_bert_folder(tmp_path / "bert", ["left", "lung"])
    module = MaskedClipPretraining(
        **tiny_model_args(
            lr=1e-3,
            text_model=str(folder),
            text_pretrained=True,
            bert=None,
            context_length=16,
            text_lr_scale=0.1,
            image_lr_scale=0.5,
            lock_text=True,
            lock_text_unlocked_layers=1,
        )
    )
    optimizer = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}  # before warm-up

    def lrs(params):
        return {round(lr_of[id(p)], 12) for p in params}

    model = module.model
    text = model.text.tower
    # open_clip's lock: embeddings and layer 0 of 2 frozen, layer 1 and the projection trainable
    assert not any(p.requires_grad for p in text.transformer.embeddings.parameters())
    assert not any(p.requires_grad for p in text.transformer.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in text.transformer.encoder.layer[1].parameters())
    assert all(id(p) not in lr_of for p in text.transformer.encoder.layer[0].parameters())
    assert lrs(text.proj.parameters()) == {1e-4}
    assert lrs(text.transformer.encoder.layer[1].parameters()) == {1e-4}
    assert lrs(model.encoder.parameters()) == {5e-4}
    assert lrs(model.bridge.parameters()) == {5e-4}
    assert lrs(model.image_decoder.parameters()) == {1e-3}
    assert lr_of[id(model.logit_scale)] == pytest.approx(1e-3)
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert set(lr_of) == trainable  # every trainable parameter once, nothing frozen


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from tests.maskedclip_fixtures import tiny_maskedclip

    results = []
    for enable in (False, True):
        torch.manual_seed(0)
        model, tokenizer = tiny_maskedclip(
            bert={
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 128,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            }
        )
        model.set_grad_checkpointing(enable)
        img = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        active = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
        active[:, :, :2] = True
        ids = tokenizer(["a left lesion", "a right lesion", "nothing"])
        loss = model(img, active, ids, torch.tensor([True, True, True]))["loss"]
        loss.backward()
        results.append((loss.detach(), model.encoder.vit.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)
