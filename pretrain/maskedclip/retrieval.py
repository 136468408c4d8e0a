"""Image <-> report retrieval on the validation pairs: recall@K, the measure CLIP-style models report."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECALL_KS = (1, 5, 10)


def related_pairs(groups_nk: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: pairs i, j that share a key in any column (the same report text, the same study); i ~ i."""
    keys_nk = groups_nk.reshape(groups_nk.shape[0], -1)
    return (keys_nk[:, None, :] == keys_nk[None, :, :]).any(-1)


def recall_at_k(
    img_nd: torch.Tensor, txt_nd: torch.Tensor, groups_nk: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Recall@K both ways over N pairs (row i of each is pair i), by cosine similarity.

    image -> report: the share of images with a correct report among the K most similar of the N reports, a report
    being correct when it is the image's own or related to it (`related_pairs`: a duplicate of its text, its
    study's), since those are indistinguishable as answers; report -> image likewise over the N images.
    Keys `i2t_recall@K`, `t2i_recall@K`; K beyond N counts as N.
    """
    sim_nn = F.normalize(img_nd.float(), dim=-1) @ F.normalize(txt_nd.float(), dim=-1).T
    related_nn = related_pairs(groups_nk).to(sim_nn.device)
    out: dict[str, float] = {}
    for name, scores_nn in (("i2t", sim_nn), ("t2i", sim_nn.T)):
        for k in ks:
            top_nk = scores_nn.topk(min(k, scores_nn.shape[1]), dim=1).indices
            out[f"{name}_recall@{k}"] = float(related_nn.gather(1, top_nk).any(1).float().mean())
    return out
