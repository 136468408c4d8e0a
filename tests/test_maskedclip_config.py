"""Issue 25 item 9 and 7: MaskedCLIP's grouped settings (vision, text, decoders, losses), its forward as its formula,
layer-wise lr decay per tower, and the flat keys of the code before the grouping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pretrain.maskedclip.config import FLAT_KEYS, GROUPS, LossCfg, VisionCfg, as_cfg, nest_flat_args
from pretrain.maskedclip.image_decoder import patch_target
from pretrain.maskedclip.losses import info_nce, masked_mse
from pretrain.maskedclip.module import MaskedClipPretraining
from pretrain.maskedclip.teacher import distillation_target
from tests.maskedclip_fixtures import TINY_BERT, tiny_maskedclip, tiny_model_args

NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def test_the_total_is_l_mim_plus_weighted_l_clip_and_l_mkd_each_from_its_formula():
    """Every term on, weights 0.3 and 2.5: each term recomputed on its own (E on the visible patches, E and B on each
    whole image apart, T on the reports), then L = L_MIM + 0.3 L_CLIP + 2.5 L_MKD."""
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(lambda_clip=0.3, lambda_mkd=2.5, bert=NO_DROPOUT)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(4, 3, 64, 64, generator=gen)
    visible = torch.rand(4, 1, 4, 4, generator=gen) < 0.5  # True = visible
    ids = tokenizer(["upper left mass", "lower right cyst", "no finding", "left lesion"])
    paired = torch.tensor([True, False, True, True])
    with torch.no_grad():
        out = model(img, visible, ids, paired)
        visible_bn = visible.flatten(1)
        hidden = model.encoder(img, visible_bn)
        target = patch_target(img, 16)
        mim = masked_mse(model.image_decoder(hidden, (4, 4)), target.normalised_bnd, visible_bn)
        whole = [model.bridge(model.encoder(img[i : i + 1]).stream_btc) for i in range(4)]
        img_pd = torch.cat([whole[i][1] for i in range(4) if paired[i]])
        clip = info_nce(img_pd, model.text(ids[paired]), model.logit_scale)
        tokens = torch.cat([w[0] for w in whole])[:, 1:]  # test_vit: one class token
        mkd = masked_mse(model.feature_decoder(hidden, (4, 4)), distillation_target(tokens, True), visible_bn)
    assert out["loss_mim"].item() == pytest.approx(mim.item(), rel=1e-5)
    assert out["loss_clip"].item() == pytest.approx(clip.item(), rel=1e-5)
    assert out["loss_mkd"].item() == pytest.approx(mkd.item(), rel=1e-5)
    expected = mim + 0.3 * clip + 2.5 * mkd
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the reconstruction keeps the visible patches' pixels (one polarity: True = visible)
    recon = out["recon_b3HW"]
    rows, cols = torch.nonzero(visible[0, 0], as_tuple=True)
    r, c = 16 * int(rows[0]), 16 * int(cols[0])
    torch.testing.assert_close(recon[0, :, r : r + 16, c : c + 16], img[0, :, r : r + 16, c : c + 16])


def test_layer_decay_gives_each_layer_of_each_tower_its_lr():
    # test_vit: 6 blocks (E: 0-3, B: 4-5), so L = 7: stem 0, block i -> i + 1, norms and P_I 7.
    # vision: decay 0.5, x1 -> stem 0.5^7, block 0 0.5^6, block 3 0.5^3, B's blocks 0.5^2 and 0.5, norm/P_I 1.
    # text (2 BERT layers, L = 3): decay 0.1, x2 -> embeddings 2e-3, layer 0 2e-2, layer 1 0.2, P_T 2.
    module = MaskedClipPretraining(
        **tiny_model_args(lr=1.0, bert=NO_DROPOUT, text_lr_scale=2.0, image_lr_scale=1.0)
        | {"vision": {**tiny_model_args()["vision"], "layer_decay": 0.5}}
        | {"text": {**tiny_model_args(bert=NO_DROPOUT, text_lr_scale=2.0)["text"], "layer_decay": 0.1}}
    )
    optimizer = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    model = module.model
    vit, bert = model.encoder.vit, model.text.tower.transformer

    def lr(param):
        return pytest.approx(lr_of[id(param)], rel=1e-9)

    assert lr(vit.pos_embed) == 0.5**7 and lr(vit.cls_token) == 0.5**7
    assert lr(vit.patch_embed.proj.weight) == 0.5**7
    assert lr(vit.blocks[0].attn.qkv.weight) == 0.5**6
    assert lr(vit.blocks[3].mlp.fc2.bias) == 0.5**3
    assert lr(model.bridge.blocks[0].attn.qkv.weight) == 0.5**2
    assert lr(model.bridge.blocks[1].norm1.weight) == 0.5
    assert lr(model.bridge.proj.weight) == 1.0 and lr(model.bridge.norm.weight) == 1.0
    assert lr(bert.embeddings.word_embeddings.weight) == 2e-3
    assert lr(bert.encoder.layer[0].attention.self.query.weight) == 2e-2
    assert lr(bert.encoder.layer[1].output.dense.weight) == 0.2
    assert lr(model.text.tower.proj[0].weight) == 2.0
    assert lr(model.image_decoder.decoder.head.weight) == 1.0 and lr(model.logit_scale) == 1.0
    # MAE's weight-decay rule is unchanged by the split
    assert wd_of[id(vit.pos_embed)] == 0.0 and wd_of[id(vit.blocks[0].attn.qkv.bias)] == 0.0
    assert wd_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert set(lr_of) == trainable and sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_without_layer_decay_each_tower_is_one_pair_of_groups():
    module = MaskedClipPretraining(**tiny_model_args(lr=1.0, text_lr_scale=0.1))
    groups = module.configure_optimizers()["optimizer"].param_groups
    # text, image, the rest: no-decay then decay each (the grouping before layer decay existed)
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.1, 0.1, 1.0, 1.0, 1.0, 1.0])
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05] * 3


def test_groups_accept_dicts_and_refuse_unknown_keys():
    assert as_cfg(VisionCfg, {"vit": "test_vit", "bridge_depth": 3}) == VisionCfg(vit="test_vit", bridge_depth=3)
    assert as_cfg(LossCfg, None) == LossCfg()
    with pytest.raises(ValueError, match=r"VisionCfg: unknown key\(s\) \['lambda_clip'\]"):
        as_cfg(VisionCfg, {"lambda_clip": 1.0})


def test_flat_keys_map_to_their_groups():
    nested = nest_flat_args({"vit": "x", "vit_init": "w.pt", "lock_text": True, "decoder_width": 8, "teacher": "ema"})
    assert nested["vision"] == {"vit": "x", "init": "w.pt"}
    assert nested["text"] == {"lock": True} and nested["decoders"] == {"width": 8}
    assert nested["losses"] == {"teacher": "ema"}
    # every flat key of the code before lands on a field that exists
    for key, (group, field) in FLAT_KEYS.items():
        assert field in {f.name for f in dataclasses.fields(GROUPS[group])}, key


def test_the_cli_refuses_flat_keys_naming_their_new_place(tmp_path, capsys):
    from pretrain.maskedclip.cli import main

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  vit: test_vit2\n  lambda_mkd: 0.5\n")
    assert main(["fit", "--config", str(old), "--model.input_size=64"]) == 2
    err = capsys.readouterr().err
    assert f"{old}: model.vit is now model.vision.vit" in err
    assert "model.lambda_mkd is now model.losses.lambda_mkd" in err
    assert "command line: model.input_size is now model.vision.input_size" in err


def test_a_checkpoint_with_flat_hyper_parameters_still_exports(tmp_path):
    """Checkpoints of the code before the grouping hold flat hyper-parameters (vit, context_length, ...)."""
    from pretrain.maskedclip.export import load_trained_model

    torch.manual_seed(0)
    module = MaskedClipPretraining(**tiny_model_args(vit="test_vit2"))
    flat = {"embed_dim": 32, "warmup_epochs": 0.5, "vit": "test_vit2", "bridge_depth": 2, "input_size": 64}
    flat |= {"bert": TINY_BERT, "context_length": 48, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2}
    flat |= {"feature_decoder_depth": 1, "vit_init": "gone.pt", "text_model": None}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": flat}, tmp_path / "old.ckpt")
    trained = load_trained_model(tmp_path / "old.ckpt")
    assert trained.hparams["vision"]["vit"] == "test_vit2" and trained.hparams["text"]["context_length"] == 48
    torch.testing.assert_close(trained.model.bridge.proj.weight, module.model.bridge.proj.weight)


def test_pairs_per_study_holds_without_masking_related_pairs():
    """`pairs_per_study` needs the study keys, `mask_related_pairs: false` only drops them from the negatives (the
    code before the grouping dropped the keys altogether, and with them the cap)."""
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(mim=False, lambda_mkd=0.0, pairs_per_study=1, mask_related_pairs=False)
    model.eval()
    img = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    visible = torch.ones(3, 1, 4, 4, dtype=torch.bool)
    ids = tokenizer(["same words", "same words", "other words"])
    keys = torch.tensor([[0, 5], [0, 5], [1, 6]])  # rows 0 and 1: one report, one study; row 2 another
    with torch.no_grad():
        got = model(img, visible, ids, torch.ones(3, dtype=torch.bool), keys)["loss_clip"]
        rows = torch.tensor([True, False, True])  # the first row of each study
        expected = info_nce(model.encode_image(img[rows])[1], model.text(ids[rows]), model.logit_scale)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
