"""Per-token information bottleneck on a ViT layer's output (IBA, Schulz et al. 2020; M2IB, Wang et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenBottleneck(nn.Module):
    """Replaces features x by z = lambda*x + (1-lambda)*noise, one lambda per item, token and channel.

    Features are standardised with per-item statistics (``mean_n1c``, ``std_n1c``); noise ~ N(0, noise_var) in that
    standardised space, so the prior is Q(z) = N(0, noise_var). Capacity (per item, token, channel) is
    KL[N(lambda*x, (1-lambda)^2 noise_var) || N(0, noise_var)]. lambda = sigmoid(alpha), alpha starts at
    ``init_alpha`` (5.0 as in IBA/M2IB: ~all information passes).
    """

    def __init__(
        self,
        mean_n1c: torch.Tensor,
        std_n1c: torch.Tensor,
        n_tokens: int,
        noise_var: float = 1.0,
        init_alpha: float = 5.0,
    ) -> None:
        super().__init__()
        n_items, _, channels = mean_n1c.shape
        self.register_buffer("mean_n1c", mean_n1c.float())
        self.register_buffer("std_n1c", std_n1c.float())
        self.noise_var = float(noise_var)
        self.alpha_ntc = nn.Parameter(
            torch.full((n_items, n_tokens, channels), float(init_alpha), device=mean_n1c.device)
        )

    def capacity(self, x_ntc: torch.Tensor) -> torch.Tensor:
        """KL per item, token and channel (N,T,C) for features x at the current alpha."""
        lam, keep_noise = torch.sigmoid(self.alpha_ntc), torch.sigmoid(-self.alpha_ntc)  # 1-lam without cancellation
        mu = lam * (x_ntc.float() - self.mean_n1c) / self.std_n1c
        return 0.5 * (keep_noise.square() + mu.square() / self.noise_var - 1.0) - F.logsigmoid(-self.alpha_ntc)

    def forward(self, x_nstc: torch.Tensor, eps_stc: torch.Tensor) -> torch.Tensor:
        """z (N,S,T,C) with the same dtype as x for S noise samples per item; ``eps_stc`` is standard-normal noise
        shared by all items (so an item's result does not depend on the batch it is in)."""
        lam, keep_noise = torch.sigmoid(self.alpha_ntc)[:, None], torch.sigmoid(-self.alpha_ntc)[:, None]
        mean_n11c, std_n11c = self.mean_n1c[:, None], self.std_n1c[:, None]
        x_std = (x_nstc.float() - mean_n11c) / std_n11c
        z_std = lam * x_std + keep_noise * (self.noise_var**0.5) * eps_stc
        return (z_std * std_n11c + mean_n11c).to(x_nstc.dtype)
