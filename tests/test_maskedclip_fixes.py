"""Defects found in review of MaskedCLIP (issue 25), each against a hand computation or a count.

1. the learned temperature keeps its gradient above the cap; the optimizer step clamps it in place; the export
   writes the clamped value;
2. pairs with the same report (or from the same study) are not each other's negatives (closed form);
3. with `mim: false` and `lambda_mkd: 0` there is no masked-branch pass and no image decoder;
4. a pretrained text table larger than the tokenizer is accepted; average-pool ViTs feed the decoders a normed
   stream.
"""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.maskedclip.losses import MAX_LOGIT_SCALE, ClipLoss
from tests.maskedclip_fixtures import tiny_maskedclip, tiny_model_args, write_tiny_bert_folder


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def paired_batch(tokenizer, paired, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(len(paired), 3, 64, 64, generator=gen)
    active = torch.zeros(len(paired), 1, 4, 4, dtype=torch.bool)
    active[:, :, :2] = True
    ids = tokenizer([f"report number {i} upper left" for i in range(len(paired))])
    return img, active, ids, torch.tensor(paired)


# ------------------------------------------------------------------------------------------- 1. the temperature
def test_logit_scale_has_a_gradient_above_ln_100():
    # cosines 0.7106 (true pairs) and 0.7036: logits e^5 x cos differ by ~1, far from saturating the softmax
    img, txt = torch.eye(2), torch.tensor([[1.0, 0.99], [0.99, 1.0]])
    scale = torch.tensor(5.0, requires_grad=True)  # raw value above ln 100 = 4.605
    ClipLoss()(img, txt, scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 1e-3


def test_the_model_term_leaves_the_scale_trainable_above_the_cap():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(mim=False, lambda_mkd=0.0)
    with torch.no_grad():
        model.logit_scale.fill_(5.0)
    model(*paired_batch(tokenizer, [True, True, True]))["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 1e-6


def test_the_optimizer_step_clamps_the_scale_in_place_as_open_clip_does():
    from pretrain.maskedclip.module import MaskedClipPretraining

    module = MaskedClipPretraining(**tiny_model_args())
    scale = module.model.logit_scale
    with torch.no_grad():
        scale.fill_(4.5)
    optimizer = torch.optim.SGD([scale], lr=1.0)

    def closure():
        optimizer.zero_grad()
        loss = -10.0 * scale  # a step of +10: the raw value would be 14.5
        loss.backward()
        return loss

    module.optimizer_step(0, 0, optimizer, closure)
    assert scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert module.temperature().item() == pytest.approx(0.01)  # what training logs
    with torch.no_grad():
        scale.fill_(-1.0)  # open_clip's lower bound: 0 (temperature at most 1)
    optimizer.zero_grad()
    module.optimizer_step(0, 1, optimizer, lambda: None)
    assert scale.item() == 0.0


def test_the_export_writes_the_clamped_scale():
    from pretrain.maskedclip.export import open_clip_state_dict

    model, _ = tiny_maskedclip()
    with torch.no_grad():
        model.logit_scale.fill_(6.0)  # e.g. a checkpoint of the code before the fix
    assert open_clip_state_dict(model)["logit_scale"].item() == pytest.approx(MAX_LOGIT_SCALE)
    assert model.logit_scale.item() == 6.0  # the export does not touch the model


# ------------------------------------------------------------------------------------- 2. same-report negatives
def test_pairs_of_one_report_are_not_each_others_negatives():
    # img_i = e_i; txt_0 = txt_1 = e_1 (one report twice), txt_2 = e_3; scale 10.
    # cos(img_i, txt_j) = [[1, 1, 0], [0, 0, 0], [0, 0, 1]] -> logits x 10. Pairs 0 and 1 share a report, so
    # row 0 competes with column 2 only, row 1 with column 2 only, row 2 with all; the same for columns.
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    groups = torch.tensor([0, 0, 1])
    loss = ClipLoss()(img, txt, torch.tensor(math.log(10.0)), groups=groups)
    rows = [softplus(0 - 10), math.log(2.0), math.log(1 + 2 * math.exp(-10))]
    cols = [softplus(0 - 10), math.log(2.0), math.log(1 + 2 * math.exp(-10))]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # without the groups, row 0 would count its duplicate as a negative: log(2 + e^-10) instead
    plain = ClipLoss()(img, txt, torch.tensor(math.log(10.0))).item()
    assert abs(plain - expected) > 0.1


def test_two_key_columns_exclude_same_report_or_same_study():
    # report keys [0, 0, 1], study keys [5, 6, 6]: 0~1 by report, 1~2 by study, 0 and 2 unrelated.
    # row 0: columns {0, 2}: logits [10, 0]; row 1: itself alone -> 0; row 2: columns {0, 2}: [0, 10].
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    groups = torch.tensor([[0, 5], [0, 6], [1, 6]])
    loss = ClipLoss()(img, txt, torch.tensor(math.log(10.0)), groups=groups)
    rows = [softplus(-10), 0.0, softplus(-10)]
    cols = [softplus(-10), 0.0, softplus(-10)]  # column 1: image 1 alone; columns 0 and 2 as the rows
    assert loss.item() == pytest.approx(0.5 * (sum(rows) / 3 + sum(cols) / 3), rel=1e-3)  # float32 logits


def test_the_model_masks_same_report_pairs_in_its_clip_term():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(mim=False, lambda_mkd=0.0)
    model.eval()
    img, active, _, paired = paired_batch(tokenizer, [True, True, True])
    ids = tokenizer(["same words", "same words", "other words"])
    with torch.no_grad():
        grouped = model(img, active, ids, paired, groups_bk=torch.tensor([[0], [0], [1]]))["loss_clip"]
        plain = model(img, active, ids, paired)["loss_clip"]
    assert grouped.item() < plain.item() - 1e-4  # the duplicate no longer counts as a (hard) negative


# ------------------------------------------------------------------------------------------ 3. work for nothing
def test_clip_only_runs_one_encoder_pass_and_builds_no_image_decoder():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(mim=False, lambda_mkd=0.0)
    assert model.image_decoder is None and model.feature_decoder is None
    tokens_seen = []
    model.encoder.vit.blocks[0].register_forward_hook(lambda m, i, o: tokens_seen.append(tuple(o.shape[:2])))
    model(*paired_batch(tokenizer, [True, False, True, False]))
    assert tokens_seen == [(2, 1 + 16)]  # the two paired images, whole (class token + 16 patches): the CLIP pass


def test_mim_alone_builds_no_feature_decoder_and_mkd_alone_no_image_decoder():
    model, _ = tiny_maskedclip(lambda_clip=0.0, lambda_mkd=0.0)
    assert model.image_decoder is not None and model.feature_decoder is None
    model, _ = tiny_maskedclip(mim=False, lambda_clip=0.0)
    assert model.image_decoder is None and model.feature_decoder is not None


# ----------------------------------------------------------------------------------------------------- 4. others
def test_a_pretrained_table_larger_than_the_tokenizer_is_accepted(tmp_path):
    from pretrain.maskedclip.text_encoder import TextEncoder
    from pretrain.maskedclip.tokenizer import ReportTokenizer

    words = ["chest", "lung", "nodule", "left", "right", "no", "mass"]
    folder = write_tiny_bert_folder(tmp_path / "bert", words, table_size=64)  # 5 specials + 7 words < 64 rows
    tokenizer = ReportTokenizer(str(folder), 16)
    assert tokenizer.vocab_size == 12
    tower = TextEncoder(8, tokenizer.vocab_size, tokenizer.pad_token_id, 16, str(folder), pretrained=True)
    assert tower.config.vocab_size == 64
    assert tower(tokenizer(["left lung nodule"])).shape == (1, 8)
    small = write_tiny_bert_folder(tmp_path / "small", words, table_size=10)  # fewer rows than tokens: refused
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder(8, tokenizer.vocab_size, tokenizer.pad_token_id, 16, str(small), pretrained=True)


def test_average_pool_vits_feed_the_decoders_a_normed_stream():
    from pretrain.maskedclip.image_encoder import ImageEncoder

    torch.manual_seed(0)
    for name in ("test_vit2", "test_vit"):  # average pooling (timm: no final norm, fc_norm), class token
        encoder = ImageEncoder(name, 4, 64).eval()
        with torch.no_grad():
            features = encoder(torch.randn(2, 3, 64, 64) * 3).features_btc
        # a LayerNorm at its initialisation: every token has mean 0 and (biased) variance var / (var + eps), 1
        # but for the class token, whose variance is tiny at initialisation
        torch.testing.assert_close(features.mean(-1), torch.zeros(features.shape[:2]), atol=1e-5, rtol=0)
        variance = features[:, 1:].var(-1, unbiased=False)
        torch.testing.assert_close(variance, torch.ones_like(variance), atol=1e-3, rtol=0)
