"""Batches of K images per study (`data.images_per_study`): a report meets several slices of its study in one step,
so that L_CLIP's study-level pairs and `pairs_per_study` have something to work on (issue 25, item 5).

Each epoch, from a generator seeded by (seed, epoch): the studies are shuffled and dealt round-robin to the ranks
(each rank its own studies: no study is in two ranks' batches of one epoch); on each rank, from (seed, epoch, rank),
every study's images are shuffled and cut into chunks of K (the last one shorter when K does not divide the
study), the chunks are spread over the epoch (chunk j of a study's m at a random point of [j/m, (j+1)/m)) and
packed in that order into batches of B/K chunks of distinct studies. Every rank yields the same number of batches,
`len(sampler)`, fixed for the run: (all chunks) // (ranks x B/K). A rank whose chunks run out first takes a
fresh shuffle of its studies' chunks; chunks left in unfinished batches wait for the next epoch. When every study
holds exactly K images and the studies split evenly over ranks and batches, each image is seen once per epoch.

The sampler is a `DistributedSampler` whose items are whole batches (the loader runs with `batch_size=None` over
`KeyedBatches`): Lightning then keeps it under DDP and calls `set_epoch`, as for `EpochSampler`, and a run resumed
mid-epoch skips the batches already trained on (`skip_next`), as `RoiDataModule` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, default_collate

from pretrain.seeding import derive_seed


class StudyBatchSampler(DistributedSampler):
    """Yields this rank's batches of the epoch, each a list of `(epoch, position)` keys (see the module's doc).

    Args:
        studies: the study of each dataset position (any hashable labels; equal = one study).
        images_per_study: K, images of one study per batch (at most; fewer when a study has fewer).
        batch_size: B, images per batch when every chunk is full; a multiple of K.
        num_replicas, rank, seed: as `DistributedSampler`'s.
    """

    def __init__(
        self, studies: Sequence[Any], images_per_study: int, batch_size: int, num_replicas: int, rank: int, seed: int
    ) -> None:
        super().__init__(range(len(studies)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        k, world = images_per_study, num_replicas
        if k < 1 or batch_size % k:
            raise ValueError(f"data.images_per_study {k} must be >= 1 and divide the batch size {batch_size}")
        self.images_per_study = k
        self.studies_per_batch = batch_size // k
        # positions of each study, in dataset order; studies numbered in order of first appearance
        _, first, inverse = np.unique(np.asarray(studies).astype(str), return_index=True, return_inverse=True)
        order = np.argsort(first)
        self.members = [np.flatnonzero(inverse == s) for s in order]
        if len(self.members) // world < self.studies_per_batch:
            raise ValueError(
                f"{len(self.members)} studies over {world} device(s) cannot fill batches of {self.studies_per_batch} "
                f"distinct studies ({batch_size} images, {k} per study): lower data.batch_size or raise "
                "data.images_per_study"
            )
        chunks = sum(-(-len(m) // k) for m in self.members)
        self.batches_per_rank = chunks // (world * self.studies_per_batch)
        self._skip = 0

    def __len__(self) -> int:
        return self.batches_per_rank

    def skip_next(self, n_batches: int) -> None:
        """The next iteration starts at this rank's `n_batches`-th batch of the epoch (a run resumed mid-epoch)."""
        self._skip = n_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]
        # a generator: nothing runs (and the skip stays) until the first batch is asked for; a DataLoader with
        # workers makes and drops one iterator of its sampler before the one it reads
        epoch, skip, self._skip = self.epoch, self._skip, 0
        for batch in self.rank_batches(epoch, self.rank)[skip:]:
            yield [(epoch, int(i)) for i in batch]

    def rank_studies(self, epoch: int, rank: int) -> list[int]:
        """The studies (numbers) dealt to `rank` in `epoch`: every `num_replicas`-th of the epoch's shuffle."""
        shuffled = np.random.default_rng(derive_seed(self.seed, "study-order", epoch)).permutation(len(self.members))
        return shuffled[rank :: self.num_replicas].tolist()

    def rank_batches(self, epoch: int, rank: int) -> list[list[int]]:
        """`rank`'s `len(self)` batches of `epoch`: lists of dataset positions, K (or fewer) per study."""
        rng = np.random.default_rng(derive_seed(self.seed, "study-batches", epoch, rank))
        studies = self.rank_studies(epoch, rank)
        width = self.studies_per_batch
        batches: list[list[int]] = []
        open_batches: list[tuple[set[int], list[int]]] = []  # (studies in it, positions), oldest first
        while len(batches) < self.batches_per_rank:
            for study, chunk in self._spread_chunks(studies, rng):
                home = next((b for b in open_batches if study not in b[0]), None)
                if home is None:
                    home = (set(), [])
                    open_batches.append(home)
                home[0].add(study)
                home[1].extend(chunk)
                if len(home[0]) == width:
                    open_batches.remove(home)
                    batches.append(home[1])
                    if len(batches) == self.batches_per_rank:
                        break
        return batches

    def _spread_chunks(self, studies: list[int], rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        """One pass over these studies' images: (study, chunk of <= K positions), chunk j of a study's m placed at a
        random point of [j/m, (j+1)/m) of the pass, so that a large study is spread over the epoch."""
        k = self.images_per_study
        keyed: list[tuple[float, int, list[int]]] = []
        for study in studies:
            images = rng.permutation(self.members[study])
            m = -(-len(images) // k)
            offsets = rng.random(m)
            keyed.extend(((j + offsets[j]) / m, study, images[j * k : (j + 1) * k].tolist()) for j in range(m))
        keyed.sort(key=lambda t: t[0])
        return [(study, chunk) for _, study, chunk in keyed]


class KeyedBatches(Dataset):
    """`items[key]` for every key of a batch, collated: the dataset of a loader whose sampler yields whole batches
    (`batch_size=None`)."""

    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, keys: list[Any]) -> Any:
        return default_collate([self.items[key] for key in keys])
