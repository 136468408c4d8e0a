"""Every split of the project, by patient: one function assigns train / val / test, the others check and count.

A corpus is patients with many slices each; a split drawn per slice puts one patient's slices on both sides and
inflates every downstream figure. Here the unit drawn is the group (the manifest's `patient_key`); each item
inherits its group's split. Stratification, where asked, is over groups: a group's stratum is its most frequent
item stratum (ties: the smallest in sorted order), so a patient whose slices carry one label counts once for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
PATIENT_COLUMN = "patient_key"  # the manifest's pseudonymous patient key (a keyed hash, never the PatientID)


def patient_groups(table: pd.DataFrame, path_column: str = "path") -> np.ndarray:
    """The group of each row: its `patient_key` where the table has a non-empty one, else its file path.

    Without patient keys each file is its own patient: a DICOM multi-frame file or a NIfTI volume is one group
    (all its frames together), never one per slice; a folder of one-file-per-slice DICOM needs the manifest's keys.
    """
    paths = table[path_column].astype(str).to_numpy()
    if PATIENT_COLUMN not in table.columns:
        return np.asarray(["path:" + p for p in paths], dtype=object)
    keys = table[PATIENT_COLUMN].fillna("").astype(str).to_numpy()
    return np.asarray([k if k else "path:" + p for k, p in zip(keys, paths, strict=True)], dtype=object)


def assign_group_splits(
    groups: Sequence[Hashable],
    *,
    seed: int,
    val_share: float = 0.2,
    test_share: float = 0.2,
    strata: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Seeded split labels ('train' / 'val' / 'test', a str array aligned with `groups`), whole groups at a time.

    Per group stratum (sorted), the groups are permuted with one seeded generator and cut by their rank quantile
    (rank + 0.5) / n: below `test_share` is test, below `test_share + val_share` val, the rest train. The shares
    are of groups, not items. Depends only on (groups, strata, seed, shares), not on the order of the rows.
    """
    if not (0 <= val_share < 1 and 0 <= test_share < 1 and val_share + test_share < 1):
        raise ValueError(
            f"need 0 <= val_share, test_share and val_share + test_share < 1; got {val_share}, {test_share}"
        )
    keys = np.asarray([str(g) for g in groups])
    if strata is not None and len(strata) != len(keys):
        raise ValueError(f"strata has {len(strata)} entries for {len(keys)} items")
    group_stratum = _group_strata(keys, None if strata is None else [str(s) for s in strata])
    split_of: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for stratum in sorted(set(group_stratum.values())):
        members = sorted(g for g, s in group_stratum.items() if s == stratum)
        order = [members[i] for i in rng.permutation(len(members))]
        for rank, group in enumerate(order):
            q = (rank + 0.5) / len(order)
            split_of[group] = "test" if q < test_share else "val" if q < test_share + val_share else "train"
    return np.asarray([split_of[g] for g in keys], dtype=str)


def split_counts(groups: Sequence[Hashable], splits: Sequence[str]) -> dict[str, dict[str, int]]:
    """{split: {"patients": distinct groups, "items": rows}} for the record each run writes."""
    out: dict[str, dict[str, int]] = {}
    for name in sorted(set(map(str, splits))):
        members = [str(g) for g, s in zip(groups, splits, strict=True) if str(s) == name]
        out[name] = {"patients": len(set(members)), "items": len(members)}
    return out


def check_groups_disjoint(groups: Sequence[Hashable], splits: Sequence[str], what: str = "splits") -> None:
    """Raise ValueError naming the first group found on two sides (e.g. a user's split column drawn per slice)."""
    seen: dict[str, str] = {}
    for group, split in zip(groups, splits, strict=True):
        group, split = str(group), str(split)
        if seen.setdefault(group, split) != split:
            raise ValueError(
                f"{what}: patient group {group[:12]} is in both '{seen[group]}' and '{split}'; "
                "every split must be by patient"
            )


def group_subset(groups: Sequence[Hashable], strata: Sequence[Hashable], fraction: float, seed: int) -> np.ndarray:
    """Sorted item indices of a seeded `fraction` of the groups per group stratum, at least one group each.

    Per group stratum (sorted; a group's stratum as in `assign_group_splits`), the sorted groups are permuted with
    one seeded generator and the first max(1, round(fraction * n_groups)) are kept with all their items; so the
    subset depends only on (groups, strata, fraction, seed), and a smaller fraction's is inside a larger one's.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    keys = np.asarray([str(g) for g in groups])
    if len(strata) != len(keys):
        raise ValueError(f"strata has {len(strata)} entries for {len(keys)} items")
    if fraction == 1:
        return np.arange(len(keys))
    group_stratum = _group_strata(keys, [str(s) for s in strata])
    rng = np.random.default_rng(seed)
    kept: set[str] = set()
    for stratum in sorted(set(group_stratum.values())):
        members = sorted(g for g, s in group_stratum.items() if s == stratum)
        order = [members[i] for i in rng.permutation(len(members))]
        kept.update(order[: max(1, int(round(fraction * len(members))))])
    return np.flatnonzero(np.isin(keys, sorted(kept)))


def _group_strata(keys: np.ndarray, strata: list[str] | None) -> dict[str, str]:
    if strata is None:
        return dict.fromkeys(keys.tolist(), "")
    counts: dict[str, Counter] = {}
    for key, stratum in zip(keys.tolist(), strata, strict=True):
        counts.setdefault(key, Counter())[stratum] += 1
    return {key: min(c, key=lambda s: (-c[s], s)) for key, c in counts.items()}
