"""MaskedCLIP's loss functions: masked regression (L_MIM, L_MKD) and the contrastive loss L_CLIP (symmetric InfoNCE),
across DDP processes in `ClipLoss` (open_clip's signature). The distillation target is the teacher's (teacher.py)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.maskedclip.gather import gather_rows, pair_counts, process_count

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the learned inverse temperature (open_clip clamps to it too)


def masked_mse(pred_bnd: torch.Tensor, target_bnd: torch.Tensor, visible_bn: torch.Tensor) -> torch.Tensor:
    """Mean squared error per position (averaged over the last axis), averaged over the masked positions (those
    not `visible_bn`, True = visible as everywhere in MaskedCLIP) of the whole batch (MAE's reduction). Visible
    positions take no part; 0 when nothing is masked."""
    masked_bn = ~visible_bn
    err_bn = (pred_bnd.float() - target_bnd.float()).square().mean(dim=-1)
    err_bn = torch.where(masked_bn, err_bn, 0.0)  # where, not a product: a visible position cannot even add NaN
    return err_bn.sum() / masked_bn.sum().clamp_min(1)


def info_nce(
    img_bd: torch.Tensor, txt_bd: torch.Tensor, logit_scale: torch.Tensor, groups_bk: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over B matched pairs (row i of each is pair i).

    logits[i, j] = exp(logit_scale) * cos(img_i, txt_j); loss = (CE over each image's row + CE over each text's
    column) / 2, the true pair being the target. `logit_scale` (the log inverse temperature) is used as given:
    open_clip caps the parameter in place after each optimizer step (`MaskedCLIP.clamp_logit_scale`), so its
    gradient never vanishes, as a cap inside the loss would make it.

    `groups_bk` (B,) or (B, K) integer keys: pairs i != j that share a key in any column (the same report text,
    the same study) are not each other's negatives: their logits leave both softmaxes. Without it every other
    pair is a negative, as in CLIP.
    """
    img = F.normalize(img_bd.float(), dim=-1)
    txt = F.normalize(txt_bd.float(), dim=-1)
    logits_bb = logit_scale.float().exp() * img @ txt.T
    if groups_bk is not None:
        keys_bk = groups_bk if groups_bk.ndim == 2 else groups_bk[:, None]
        related_bb = (keys_bk[:, None, :] == keys_bk[None, :, :]).any(-1)
        related_bb.fill_diagonal_(False)  # the true pair stays
        logits_bb = logits_bb.masked_fill(related_bb, float("-inf"))  # symmetric: rows and columns alike
    labels_b = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits_bb, labels_b) + F.cross_entropy(logits_bb.T, labels_b))


class ClipLoss(nn.Module):
    """L_CLIP with open_clip's `ClipLoss` signature: `loss(image_features, text_features, logit_scale,
    output_dict=False)`, plus `groups` (see `info_nce`: pairs sharing a key are not negatives).

    Under DDP with `gather_negatives` (CLIP's, open_clip's `gather_with_grad=False, local_loss=False`), the pairs
    of every process are the negatives: each process may hold a different number of pairs, and one with none
    still takes part in the exchange. `counts` (each process's pair count, `pair_counts`) may be given when the
    caller has it already. The loss of a step with fewer than 2 pairs in all (no contrast) is None.
    """

    def __init__(self, gather_negatives: bool = True) -> None:
        super().__init__()
        self.gather_negatives = gather_negatives

    def world(self) -> int:
        return process_count() if self.gather_negatives else 1

    def counts(self, n_pairs: int, device: torch.device) -> list[int]:
        """Every process's pair count this step, in rank order (a collective under DDP)."""
        return pair_counts(n_pairs, device) if self.world() > 1 else [n_pairs]

    def contrast_counts(self, n_pairs: int, device: torch.device) -> list[int] | None:
        """`counts`, or None when the step has fewer than 2 pairs in all (no contrast: the term is left out, so
        nothing needs encoding for it). Every process calls it, with or without pairs of its own."""
        counts = self.counts(n_pairs, device)
        return counts if sum(counts) >= 2 else None

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        output_dict: bool = False,
        *,
        groups: torch.Tensor | None = None,
        counts: list[int] | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor] | None:
        world = self.world()
        if counts is None:
            counts = self.counts(image_features.shape[0], image_features.device)
        if sum(counts) < 2:
            return None
        if world == 1:
            loss = info_nce(image_features, text_features, logit_scale, groups)
        else:
            all_img, all_txt = gather_rows(image_features, counts), gather_rows(text_features, counts)
            all_groups = None
            if groups is not None:
                keys = groups if groups.ndim == 2 else groups[:, None]  # (0, K) on a process without pairs
                all_groups = gather_rows(keys, counts, dtype=torch.float64)
            offset = sum(counts[: dist.get_rank()])
            loss = info_nce_over_processes(
                image_features, text_features, logit_scale, all_img, all_txt, offset, world, all_groups
            )
        return {"contrastive_loss": loss} if output_dict else loss


def info_nce_over_processes(
    img_pd: torch.Tensor,
    txt_pd: torch.Tensor,
    logit_scale: torch.Tensor,
    all_img_nd: torch.Tensor,
    all_txt_nd: torch.Tensor,
    offset: int,
    world: int,
    all_groups_nk: torch.Tensor | None = None,
) -> torch.Tensor:
    """`info_nce` over the pairs of every DDP process, computed alike on each (CLIP's negatives from all devices).

    `all_img_nd` / `all_txt_nd` are every process's pairs (no gradient), this process's P pairs at rows
    offset..offset+P (`img_pd` / `txt_pd`, with gradient, take their place). Each process thus computes the same
    global loss, but its gradient reaches only its own features; DDP then averages the processes' gradients, so
    the features' gradient is scaled by `world` here (not the value): after the average it is the gradient of the
    one global loss. The temperature is used alike on every process and needs no such factor. `all_groups_nk`:
    every process's pair keys (see `info_nce`).
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
    return info_nce(img_nd, txt_nd, logit_scale, all_groups_nk)
