"""MaskedCLIP's loss terms against hand computations, and where each term may and may not look."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.maskedclip.losses import MAX_LOGIT_SCALE, info_nce, info_nce_over_processes, masked_mse
from pretrain.maskedclip.teacher import distillation_target
from tests.maskedclip_fixtures import TINY_BERT, tiny_maskedclip


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_info_nce_on_two_pairs_equals_the_closed_form():
    # cos(img_i, txt_j) = [[1, 0.6], [0, 0.8]] (asymmetric on purpose), scale e^{ln 10} = 10:
    # logits [[10, 6], [0, 8]]; each cross-entropy over 2 candidates is softplus(other - true)
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms differ: the loss must normalise
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = info_nce(img, txt, torch.tensor(math.log(10.0)))
    image_to_text = [softplus(6 - 10), softplus(0 - 8)]  # rows
    text_to_image = [softplus(0 - 10), softplus(6 - 8)]  # columns
    expected = 0.5 * (sum(image_to_text) / 2 + sum(text_to_image) / 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the image->text half alone (an unsymmetric loss) would be far from it
    assert abs(sum(image_to_text) / 2 - expected) > 0.02


def test_info_nce_temperature_is_learned_and_used_as_given():
    img, txt = torch.eye(2), torch.tensor([[1.0, 0.99], [0.99, 1.0]])  # cosines 0.7106 / 0.7036: no saturation
    scale = torch.tensor(1.0, requires_grad=True)
    info_nce(img, txt, scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    # the cap at ln(100) is the optimizer step's clamp (test_maskedclip_fixes), not the loss's
    assert info_nce(img, txt, torch.tensor(7.0)).item() != pytest.approx(
        info_nce(img, txt, torch.tensor(MAX_LOGIT_SCALE)).item()
    )


def test_masked_mse_averages_over_masked_positions_of_the_batch():
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [9.0, 9.0]], [[0.0, 2.0], [5.0, 5.0], [5.0, 5.0]]])
    masked = torch.tensor([[True, True, False], [True, False, False]])
    visible = ~masked  # the argument's polarity: True = visible
    # per-position means over the last axis: 5, 4, (81 visible), 2 -> (5 + 4 + 2) / 3 masked positions
    assert masked_mse(pred, target, visible).item() == pytest.approx(11 / 3)
    target[visible] = float("nan")  # visible positions cannot reach the loss, not even as NaN
    assert masked_mse(pred, target, visible).item() == pytest.approx(11 / 3)
    assert masked_mse(pred, target, torch.ones_like(visible)).item() == 0.0


def test_distillation_target_is_layer_normalised_per_token_when_asked():
    tokens = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])  # mean 3, biased var 3.5
    expected = (tokens - 3.0) / math.sqrt(3.5 + 1e-5)
    torch.testing.assert_close(distillation_target(tokens, True), expected)
    torch.testing.assert_close(distillation_target(tokens, False), tokens)


# ----------------------------------------------------------------------------------- the terms inside the model
def batch(tokenizer, paired, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(len(paired), 3, 64, 64, generator=gen)
    active = torch.zeros(len(paired), 1, 4, 4, dtype=torch.bool)
    active[:, :, :2] = True  # top half visible, bottom half masked
    ids = tokenizer([f"report number {i} upper left" for i in range(len(paired))])
    return img, active, ids, torch.tensor(paired)


def test_distillation_reads_masked_positions_only():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(lambda_clip=0.0)
    model.eval()
    img, active, ids, paired = batch(tokenizer, [True, False, True])
    bump = {}

    def bump_prediction(module, inputs, output):
        if not bump:
            return output
        output = output.clone()
        output[bump["item"], bump["position"]] += 5.0
        return output

    model.feature_decoder.register_forward_hook(bump_prediction)
    with torch.no_grad():
        base = model(img, active, ids, paired)["loss_mkd"]
        bump.update(item=1, position=3)  # grid cell (0, 3): visible
        visible = model(img, active, ids, paired)["loss_mkd"]
        bump.update(item=1, position=13)  # grid cell (3, 1): masked
        masked = model(img, active, ids, paired)["loss_mkd"]
    assert visible.item() == base.item()
    assert masked.item() > base.item() + 1e-3


def test_the_distillation_target_carries_no_gradient():
    torch.manual_seed(0)
    for teacher in ("stop_gradient", "ema"):
        model, tokenizer = tiny_maskedclip(lambda_clip=0.0, mim=False, teacher=teacher)
        model(*batch(tokenizer, [True, True, False]))["loss"].backward()
        # L_MKD alone: the bridge only makes the target, so it gets nothing; the encoder learns
        assert all(p.grad is None or not p.grad.any() for p in model.bridge.parameters()), teacher
        assert any(p.grad is not None and p.grad.any() for p in model.encoder.parameters()), teacher


def test_no_text_loss_from_unpaired_items():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip()
    model.eval()  # BERT's dropout would make two forward passes differ
    img, active, ids, paired = batch(tokenizer, [True, False, True, False])
    with torch.no_grad():
        base = model(img, active, ids, paired)
        other_ids = ids.clone()
        other_ids[~paired] = tokenizer(["entirely different words"] * 2)  # unpaired rows: must not matter
        unpaired_changed = model(img, active, other_ids, paired)
        other_ids[0] = tokenizer(["entirely different words"])[0]  # a paired row: must matter
        paired_changed = model(img, active, other_ids, paired)
    assert unpaired_changed["loss_clip"].item() == base["loss_clip"].item()
    assert unpaired_changed["loss"].item() == base["loss"].item()
    assert abs(paired_changed["loss_clip"].item() - base["loss_clip"].item()) > 1e-6


def test_without_paired_items_the_text_tower_gets_no_gradient_and_the_rest_trains():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip()
    out = model(*batch(tokenizer, [False, False, False]))
    assert "loss_clip" not in out and {"loss_mim", "loss_mkd"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.text.parameters())
    assert model.logit_scale.grad is None or model.logit_scale.grad == 0
    assert any(p.grad is not None and p.grad.any() for p in model.encoder.parameters())
    # and with two paired items, the text tower does learn
    model.zero_grad()
    model(*batch(tokenizer, [True, False, True]))["loss"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.text.parameters())


def test_each_term_is_switchable_and_the_total_is_their_weighted_sum():
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(lambda_clip=0.5, lambda_mkd=2.0)
    model.eval()
    with torch.no_grad():
        out = model(*batch(tokenizer, [True, True, False]))
    expected = out["loss_mim"] + 0.5 * out["loss_clip"] + 2.0 * out["loss_mkd"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    model, tokenizer = tiny_maskedclip(mim=False, lambda_mkd=0.0)
    assert model.feature_decoder is None
    with torch.no_grad():
        out = model(*batch(tokenizer, [True, True, False]))
    assert set(out) == {"loss", "loss_clip"} and out["loss"].item() == pytest.approx(out["loss_clip"].item())
    with pytest.raises(ValueError, match="every loss term is switched off"):
        tiny_maskedclip(mim=False, lambda_clip=0.0, lambda_mkd=0.0)


def test_the_contrastive_term_learns_to_match_images_and_reports():
    """CLIP alone on 8 distinct images and 8 distinct reports: from chance (ln 8) to near-perfect matching."""
    torch.manual_seed(0)
    bert = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model, tokenizer = tiny_maskedclip(vit="test_vit2", mim=False, lambda_mkd=0.0, context_length=32, bert=bert)
    img = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # not the init's RNG stream
    ids = tokenizer([f"{v} {h} {k}" for v in ("upper", "lower") for h in ("left", "right") for k in ("mass", "cyst")])
    active, paired = torch.ones(8, 1, 4, 4, dtype=torch.bool), torch.ones(8, dtype=torch.bool)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, betas=(0.9, 0.95))
    for _ in range(50):
        loss = model(img, active, ids, paired)["loss_clip"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * math.log(8)
    with torch.no_grad():
        similarity = model.encode_image(img)[1] @ model.text(ids).T
    assert similarity.argmax(1).tolist() == list(range(8))  # every image picks its own report


def test_clip_and_distillation_terms_are_the_formulas_on_a_mixed_batch():
    """The forward shares one embedding between its passes and takes the paired images' distillation target
    from the CLIP pass: its terms must still be the formulas, each image encoded on its own through E and B."""
    torch.manual_seed(0)
    model, tokenizer = tiny_maskedclip(mim=False)
    model.eval()
    img, active, ids, paired = batch(tokenizer, [False, True, True, False, True])
    visible_bn = active.flatten(1)
    with torch.no_grad():
        out = model(img, active, ids, paired)
        tokens, embeddings = zip(
            *(model.bridge(model.encoder(img[i : i + 1]).stream_btc) for i in range(5)), strict=True
        )
        img_pd = torch.cat(embeddings)[paired]
        expected_clip = info_nce(img_pd, model.text(ids[paired]), model.logit_scale)
        target_bnc = distillation_target(torch.cat(tokens)[:, model.encoder.num_prefix_tokens :], True)
        pred_bnc = model.feature_decoder(model.encoder(img, active.flatten(1)), (4, 4))
        expected_mkd = masked_mse(pred_bnc, target_bnc, visible_bn)
    assert out["loss_clip"].item() == pytest.approx(expected_clip.item(), rel=1e-5)
    assert out["loss_mkd"].item() == pytest.approx(expected_mkd.item(), rel=1e-5)


def test_gathered_info_nce_gives_each_process_the_union_loss_and_ddp_the_union_gradient():
    """Two simulated DDP processes with 2 and 3 pairs: each computes the loss of all 5 pairs, and the average of
    their gradients (what DDP applies) is the gradient of that single-device loss on all 5 pairs."""
    torch.manual_seed(0)
    x_img, x_txt = torch.randn(5, 6), torch.randn(5, 4)
    w_img, w_txt = torch.randn(6, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    params = (w_img, w_txt, scale)
    union = info_nce(x_img @ w_img, x_txt @ w_txt, scale)
    expect = torch.autograd.grad(union, params)
    with torch.no_grad():
        all_img, all_txt = x_img @ w_img, x_txt @ w_txt
    grads, losses = [], []
    for rows in (slice(0, 2), slice(2, 5)):
        loss = info_nce_over_processes(
            x_img[rows] @ w_img, x_txt[rows] @ w_txt, scale, all_img, all_txt, offset=rows.start, world=2
        )
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss, params))
    assert losses == pytest.approx([union.item()] * 2, rel=1e-6)
    for name, want, got_0, got_1 in zip(("w_img", "w_txt", "scale"), expect, *grads, strict=True):
        torch.testing.assert_close((got_0 + got_1) / 2, want, msg=name)


def test_every_parameters_gradient_is_that_of_the_formulas_each_image_on_its_own():
    """The step's shared embedding, the CLIP pass's tokens reused as the paired images' teacher targets and the
    full-image passes without E's final norm must give every parameter the gradient of L written term by term:
    each whole image through E and B on its own, the teacher's target detached."""
    torch.manual_seed(0)
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model, tokenizer = tiny_maskedclip(lambda_clip=0.7, lambda_mkd=1.5, bert=no_dropout)
    model.train()
    img, active, ids, paired = batch(tokenizer, [True, False, True, False, True], seed=3)
    groups = torch.stack([torch.arange(5), torch.tensor([0, 1, 0, 2, 3])], dim=1)  # images 0 and 2: one study
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(model(img, active, ids, paired, groups)["loss"], params, allow_unused=True)

    visible_bn = active.flatten(1)
    hidden = model.encoder(img, visible_bn)
    target = patch_target_of(img)
    mim = masked_mse(model.image_decoder(hidden, (4, 4)), target, visible_bn)
    whole = [model.bridge(model.encoder(img[i : i + 1]).stream_btc) for i in range(5)]
    img_pd = torch.cat([whole[i][1] for i in range(5) if paired[i]])
    clip = info_nce(img_pd, model.text(ids[paired]), model.logit_scale, groups[paired])
    tokens = torch.cat([w[0] for w in whole]).detach()[:, model.encoder.num_prefix_tokens :]
    mkd = masked_mse(model.feature_decoder(hidden, (4, 4)), distillation_target(tokens, True), visible_bn)
    expected = torch.autograd.grad(mim + 0.7 * clip + 1.5 * mkd, params, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(g is not None for g in got) > 0.9 * len(params)
    for name, g, e in zip(names, got, expected, strict=True):
        assert (g is None) == (e is None), name
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=name)


def patch_target_of(img: torch.Tensor) -> torch.Tensor:
    from pretrain.maskedclip.image_decoder import patch_target

    return patch_target(img, 16).normalised_bnd
