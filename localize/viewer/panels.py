"""One overlay PNG per selected item (image | saliency | ROI | SAM boxes), for the report page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from data.intensity_follow import recorded_intensity
from data.readers import load_image
from data.roi_cache import RoiCache
from localize.viewer.overlay import item_panel, save_png

PANEL_DIR = "panels"


@dataclass
class Panel:
    """One drawn item: where its PNG is (relative to OUT) and what the page says about it."""

    index: int
    item_id: str
    modality: str
    file: str
    note: str | None = None


def draw_panels(
    cache: RoiCache, table: pd.DataFrame, indices: list[int], corpus: Path | None, out: Path, progress: bool = True
) -> list[Panel]:
    """Write one overlay PNG per item into out/panels (replacing earlier panels there); an unreadable image is
    noted on its panel, never fatal."""
    (out / PANEL_DIR).mkdir(parents=True, exist_ok=True)
    for old in (out / PANEL_DIR).glob("*.png"):  # a re-run into the same OUT must not leave stale panels behind
        old.unlink()
    panels = []
    intensity = recorded_intensity(cache.provenance)  # the images as the localizer saw them (None: the defaults)
    for index in tqdm(indices, desc="panels", unit="item", disable=not progress):
        row = table.loc[index]
        size_hw = (int(row["height"]), int(row["width"]))
        image, note = None, None
        if corpus is not None:
            try:
                image = load_image(corpus, row["path"], int(row["frame"]), row["modality"], intensity)
            except Exception as e:  # one unreadable image must not stop the report
                note = f"image not drawn: {type(e).__name__}: {e}"
            if image is not None and image.shape[:2] != size_hw:
                note = (
                    f"image not drawn: its size {image.shape[:2]} differs from the cache's {size_hw}; "
                    "is --corpus the corpus this cache was made from?"
                )
                image = None
        title = f"{row['item_id']}  {row['modality']}  {row['path']}#{int(row['frame'])}  score {row['score']:.3f}"
        if row["empty_roi"]:
            title += "  EMPTY ROI"
        fig = item_panel(
            image, cache.read_saliency(index), cache.read_mask(index), cache.read_boxes(index), title, note
        )
        file = f"{PANEL_DIR}/{row['item_id']}.png"
        save_png(fig, out / file)
        panels.append(Panel(int(index), str(row["item_id"]), str(row["modality"]), file, note))
    return panels
