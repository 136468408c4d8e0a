"""Every DDP process's image-report pairs, for CLIP's negatives from all devices (counts differ between processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def process_count() -> int:
    """Processes in the default group (1 outside DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pair_counts(n_pairs: int, device: torch.device) -> list[int]:
    """Each process's number of pairs this step, in rank order (a collective: every process must call it)."""
    count = torch.tensor([n_pairs], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    return [int(c) for c in counts]


def gather_rows(x_nd: torch.Tensor, counts: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of every process (`counts[r]` from rank r), concatenated in rank order, as `dtype` (float64 keeps
    integer keys exact), without gradient. Padded to the largest count for the collective, since all_gather needs
    equal shapes."""
    most = max(counts)
    padded_md = x_nd.new_zeros((most, x_nd.shape[1]), dtype=dtype)
    padded_md[: x_nd.shape[0]] = x_nd.detach().to(dtype)
    parts = [torch.empty_like(padded_md) for _ in counts]
    dist.all_gather(parts, padded_md)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])
