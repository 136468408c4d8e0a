"""The three loss terms of MaskedCLIP: L_MIM and L_MKD (masked regression), L_CLIP (symmetric InfoNCE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the learned inverse temperature (open_clip clamps to it too)


def masked_mse(pred_bnd: torch.Tensor, target_bnd: torch.Tensor, masked_bn: torch.Tensor) -> torch.Tensor:
    """Mean squared error per position (averaged over the last axis), averaged over the masked positions of
    the whole batch (MAE's reduction). Visible positions take no part; 0 when nothing is masked."""
    err_bn = (pred_bnd.float() - target_bnd.float()).square().mean(dim=-1)
    err_bn = torch.where(masked_bn, err_bn, 0.0)  # where, not a product: a visible position cannot even add NaN
    return err_bn.sum() / masked_bn.sum().clamp_min(1)


def info_nce(img_bd: torch.Tensor, txt_bd: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over B matched pairs (row i of each is pair i).

    logits[i, j] = exp(logit_scale) * cos(img_i, txt_j); loss = (CE over each image's row + CE over each text's
    column) / 2, the true pair being the target. `logit_scale` (the log inverse temperature) is learned and
    capped at ln(100).
    """
    img = F.normalize(img_bd.float(), dim=-1)
    txt = F.normalize(txt_bd.float(), dim=-1)
    logits_bb = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp() * img @ txt.T
    labels_b = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits_bb, labels_b) + F.cross_entropy(logits_bb.T, labels_b))


def distillation_target(tokens_bnc: torch.Tensor, normalise: bool) -> torch.Tensor:
    """The feature-distillation target: the teacher's tokens, each layer-normalised without affine parameters
    when `normalise` (as MaskFeat / data2vec do with feature targets), so the target's scale cannot drift."""
    tokens_bnc = tokens_bnc.float()
    return F.layer_norm(tokens_bnc, tokens_bnc.shape[-1:]) if normalise else tokens_bnc


def info_nce_over_processes(
    img_pd: torch.Tensor,
    txt_pd: torch.Tensor,
    logit_scale: torch.Tensor,
    all_img_nd: torch.Tensor,
    all_txt_nd: torch.Tensor,
    offset: int,
    world: int,
) -> torch.Tensor:
    """`info_nce` over the pairs of every DDP process, computed alike on each (CLIP's negatives from all devices).

    `all_img_nd` / `all_txt_nd` are every process's pairs (no gradient), this process's P pairs at rows
    offset..offset+P (`img_pd` / `txt_pd`, with gradient, take their place). Each process thus computes the same
    global loss, but its gradient reaches only its own features; DDP then averages the processes' gradients, so
    the features' gradient is scaled by `world` here (not the value): after the average it is the gradient of the
    one global loss. The temperature is used alike on every process and needs no such factor.
    """
    rows = slice(offset, offset + img_pd.shape[0])
    scaled_img = img_pd.detach() + world * (img_pd - img_pd.detach())  # value img_pd, gradient x world
    scaled_txt = txt_pd.detach() + world * (txt_pd - txt_pd.detach())
    img_nd = torch.cat(
        [all_img_nd[: rows.start].to(img_pd.dtype), scaled_img, all_img_nd[rows.stop :].to(img_pd.dtype)]
    )
    txt_nd = torch.cat(
        [all_txt_nd[: rows.start].to(txt_pd.dtype), scaled_txt, all_txt_nd[rows.stop :].to(txt_pd.dtype)]
    )
    return info_nce(img_nd, txt_nd, logit_scale)
