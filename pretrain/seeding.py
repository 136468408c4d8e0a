"""Seeds derived from a run seed and a position in the run (epoch, batch, item, rank).

Every random draw of pretraining that is not model initialisation (data order, augmentation, masks) is seeded
from where it happens in the run rather than from a global generator's history. A run resumed from a
checkpoint therefore draws exactly what the uninterrupted run would have drawn, whatever the number of
data-loader workers.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part (order included) and on nothing else."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_generator(device: torch.device | str, *parts: int | str) -> torch.Generator:
    """A torch.Generator on `device` seeded with `derive_seed(*parts)`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def unit_interval(*parts: int | str) -> float:
    """A number in [0, 1) fixed by `parts` (e.g. a stable train/val split by item id)."""
    return derive_seed(*parts) / 2**63
