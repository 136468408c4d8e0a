"""Which items the report draws: named ones in order, or a seeded random subset stratified by modality."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Selection:
    """Item indices to draw, plus the requested ones that cannot be drawn (with why)."""

    indices: list[int]
    skipped: dict[str, str] = field(default_factory=dict)


def select_items(
    table: pd.DataFrame,
    *,
    item_ids: list[str] | None = None,
    n: int = 12,
    seed: int = 0,
    modality: str | None = None,
) -> Selection:
    """Done items to draw: the named `item_ids` in the given order, else `n` random ones stratified by modality.

    Stratified: modalities take turns (sorted by name), each contributing its items in a seeded random order,
    until `n` are chosen or none are left. `modality` restricts either way. Unknown ids raise ValueError;
    named items that are not done are skipped and reported in `Selection.skipped`.
    """
    done = table["status"] == "done"
    if modality is not None:
        known = sorted(table["modality"].unique())
        if modality not in known:
            raise ValueError(f"modality {modality!r} is not in this cache (it has {known})")
    if item_ids is not None:
        position = pd.Series(table.index, index=table["item_id"])
        unknown = [i for i in item_ids if i not in position.index]
        if unknown:
            raise ValueError(f"item ids not in this cache: {', '.join(unknown)}")
        chosen, skipped = [], {}
        for item_id in dict.fromkeys(item_ids):  # keeps order, drops repeats
            index = int(position[item_id])
            row = table.loc[index]
            if modality is not None and row["modality"] != modality:
                skipped[item_id] = f"modality {row['modality']}, not {modality}"
            elif not done[index]:
                why = f": {row['reason']}" if row["reason"] else ""
                skipped[item_id] = f"{row['status']}{why}"
            else:
                chosen.append(index)
        return Selection(chosen, skipped)
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {n}")
    candidates = table[done if modality is None else done & (table["modality"] == modality)]
    rng = np.random.default_rng(seed)
    queues = {m: list(rng.permutation(group.index.to_numpy())) for m, group in sorted(candidates.groupby("modality"))}
    chosen = []
    while len(chosen) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop(0)))
    return Selection(chosen)
