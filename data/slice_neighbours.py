"""2.5-D input: the slices before and after each item of a series, read as its three input channels.

With input channels "2.5d" an item at slice z of a series is fed as the slices (z-1, z, z+1) in series order (the
manifest's `slice_index`, the dense rank of the position along the slice normal, `data.series`), instead of slice z
copied three times ("2d", the authors' release). At the ends of a series the missing neighbour is the edge slice
itself. An item without a series (a raster image, a manifest without the series columns) is its own slice thrice.

A neighbour is another manifest row of the same series at slice index z-1 / z+1 and of the same size; where several
rows share that index (a 4-D NIfTI's volumes, duplicate positions) the one of the item's own file and nearest frame
is taken. `usable` leaves rows out as neighbours (e.g. items a packed store failed to pack): the item's own slice
stands in for them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

InputChannels = Literal["2d", "2.5d"]
INPUT_CHANNELS: tuple[str, ...] = ("2d", "2.5d")
_SERIES = ("series_key", "slice_index")


def check_input_channels(value: str) -> str:
    """`value` when it is one of INPUT_CHANNELS; a one-line ValueError otherwise."""
    if value not in INPUT_CHANNELS:
        raise ValueError(f"input_channels must be one of {INPUT_CHANNELS}, got {value!r}")
    return value


def neighbour_rows(manifest: pd.DataFrame, usable: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) int64 manifest rows of (slice z-1, z, z+1) for every row z of `manifest` (see the module docstring)."""
    n = len(manifest)
    own = np.arange(n, dtype=np.int64)
    out = np.repeat(own[:, None], 3, axis=1)
    if n == 0 or not all(c in manifest.columns for c in _SERIES):
        return out
    table = pd.DataFrame(
        {
            "row": own,
            "series": manifest["series_key"].astype(str).to_numpy(),
            "z": manifest["slice_index"].to_numpy(dtype=np.int64),
            "path": manifest["path"].astype(str).to_numpy(),
            "frame": manifest["frame"].to_numpy(dtype=np.int64),
            "h": manifest["height"].to_numpy(dtype=np.int64),
            "w": manifest["width"].to_numpy(dtype=np.int64),
        }
    )
    table = table[table["series"] != ""]
    candidates = table if usable is None else table[np.asarray(usable, dtype=bool)[table["row"].to_numpy()]]
    for column, step in ((0, -1), (2, 1)):
        wanted = table.assign(z=table["z"] + step)
        pairs = wanted.merge(candidates, on=["series", "z", "h", "w"], suffixes=("", "_n"))
        if pairs.empty:
            continue
        pairs["other_file"] = pairs["path"] != pairs["path_n"]
        pairs["frame_gap"] = (pairs["frame"] - pairs["frame_n"]).abs()
        best = pairs.sort_values(["row", "other_file", "frame_gap", "row_n"], kind="stable").drop_duplicates("row")
        out[best["row"].to_numpy(), column] = best["row_n"].to_numpy()
    return out
