"""Matplotlib drawing of cached ROIs: image, saliency heat map, ROI contour, SAM boxes, masking grids.

Shared by `python -m localize inspect` and notebooks/inspect_roi_cache.ipynb. Every function draws into axes
the caller owns (or returns a new Figure) and never touches pyplot's global state, so it works under the Agg
backend in a command and inline in a notebook alike. Arrays are at one resolution: the caller resizes the
cached ROI / saliency to the image (`RoiCache.read_mask(i, image.shape[:2])`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

ROI_COLOR = "#00e5ff"
BOX_COLOR = "#ffb000"
VISIBLE_COLOR = "#76ff03"
MASKED_COLOR = (0.05, 0.05, 0.05, 0.82)  # masked cells: near-black, the image barely shows through


def save_png(fig: Figure, path: Path) -> None:
    """Write a figure of this module (or the report's plots) as a PNG at 100 dpi."""
    fig.savefig(path, dpi=100)


def show_image(ax: Axes, image: np.ndarray | None, shape_hw: tuple[int, int]) -> None:
    """The image in grey (2-D) or colour (H,W,3); a neutral background of `shape_hw` when there is none."""
    if image is None:
        image = np.full(shape_hw, 0.5, dtype=np.float32)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_saliency(ax: Axes, saliency_hw: np.ndarray, image: np.ndarray | None) -> None:
    """The soft saliency as a heat map, over the image when there is one."""
    show_image(ax, image, saliency_hw.shape)
    alpha = 0.55 if image is not None else 1.0
    ax.imshow(saliency_hw, cmap="inferno", vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")


def draw_roi(ax: Axes, roi_hw: np.ndarray, *, filled: bool = False) -> None:
    """The ROI's outline (and a translucent fill when `filled`); draws nothing for an empty ROI."""
    if not roi_hw.any():
        return
    if filled:
        ax.imshow(
            np.ma.masked_where(roi_hw == 0, roi_hw), cmap="cool", vmin=0, vmax=1, alpha=0.35, interpolation="nearest"
        )
    ax.contour(roi_hw.astype(np.float32), levels=[0.5], colors=[ROI_COLOR], linewidths=1.5)


def draw_boxes(ax: Axes, boxes_k4: np.ndarray) -> None:
    """xyxy boxes in pixels, numbered in prompt order."""
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes_k4, dtype=np.float32).reshape(-1, 4)):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOR, linewidth=1.5))
        ax.text(
            x0,
            y0,
            str(k + 1),
            color="black",
            fontsize=7,
            va="bottom",
            bbox={"facecolor": BOX_COLOR, "edgecolor": "none", "pad": 1},
        )


def draw_cells(
    ax: Axes,
    cells_hw: np.ndarray,
    shape_hw: tuple[int, int],
    *,
    color: str = ROI_COLOR,
    fill: tuple[float, float, float, float] | None = None,
) -> None:
    """Outline (or fill with `fill`) the True cells of a coarse grid laid over an image of `shape_hw`."""
    gh, gw = cells_hw.shape
    ch, cw = shape_hw[0] / gh, shape_hw[1] / gw
    for r, c in zip(*np.nonzero(cells_hw), strict=True):
        if fill is not None:
            ax.add_patch(Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, facecolor=fill, edgecolor="none"))
        else:
            ax.add_patch(Rectangle((c * cw - 0.5, r * ch - 0.5), cw, ch, fill=False, edgecolor=color, linewidth=1.2))


def draw_grid(ax: Axes, grid_hw: tuple[int, int], shape_hw: tuple[int, int]) -> None:
    """Thin lines at the cell borders of a `grid_hw` grid over an image of `shape_hw`."""
    for r in range(1, grid_hw[0]):
        ax.axhline(r * shape_hw[0] / grid_hw[0] - 0.5, color="white", linewidth=0.4, alpha=0.6)
    for c in range(1, grid_hw[1]):
        ax.axvline(c * shape_hw[1] / grid_hw[1] - 0.5, color="white", linewidth=0.4, alpha=0.6)


def item_panel(
    image: np.ndarray | None,
    saliency_hw: np.ndarray,
    roi_hw: np.ndarray,
    boxes_k4: np.ndarray,
    title: str,
    note: str | None = None,
) -> Figure:
    """One row: image | saliency heat map | final ROI contour | SAM box prompts (+ ROI).

    `image` None draws the saliency, ROI and boxes on a neutral background (no corpus given).
    """
    shape_hw = roi_hw.shape
    fig = Figure(figsize=(11.0, 3.2), layout="constrained")
    ax_img, ax_sal, ax_roi, ax_box = fig.subplots(1, 4)
    show_image(ax_img, image, shape_hw)
    ax_img.set_title("image" if image is not None else "image (no --corpus)", fontsize=9)
    draw_saliency(ax_sal, saliency_hw, image)
    ax_sal.set_title("saliency", fontsize=9)
    show_image(ax_roi, image, shape_hw)
    draw_roi(ax_roi, roi_hw, filled=image is None)
    ax_roi.set_title(f"ROI ({roi_hw.mean():.1%} of image)" if roi_hw.any() else "ROI (empty)", fontsize=9)
    show_image(ax_box, image, shape_hw)
    draw_roi(ax_box, roi_hw)
    draw_boxes(ax_box, boxes_k4)
    ax_box.set_title(f"SAM boxes ({len(boxes_k4)})", fontsize=9)
    fig.suptitle(title if note is None else f"{title}\n{note}", fontsize=10)
    return fig


def masking_preview(
    image: np.ndarray,
    roi_hw: np.ndarray,
    cells_hw: np.ndarray,
    visible_hw: np.ndarray,
    title: str = "",
) -> Figure:
    """What the pretrainer sees: image | ROI | ROI cells on the encoder grid | visible (outlined) vs masked (dark).

    `image`, `roi_hw` at the input resolution; `cells_hw` (ROI cells) and `visible_hw` (True = visible) on the
    encoder's grid.
    """
    shape_hw = roi_hw.shape
    grid_hw = cells_hw.shape
    fig = Figure(figsize=(11.0, 3.4), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, 4)
    show_image(axes[0], image, shape_hw)
    axes[0].set_title(f"input {shape_hw[0]}x{shape_hw[1]}", fontsize=9)
    show_image(axes[1], image, shape_hw)
    draw_roi(axes[1], roi_hw, filled=True)
    axes[1].set_title("ROI", fontsize=9)
    show_image(axes[2], image, shape_hw)
    draw_grid(axes[2], grid_hw, shape_hw)
    draw_cells(axes[2], cells_hw, shape_hw)
    axes[2].set_title(f"ROI cells: {int(cells_hw.sum())} of {cells_hw.size}", fontsize=9)
    show_image(axes[3], image, shape_hw)
    draw_grid(axes[3], grid_hw, shape_hw)
    draw_cells(axes[3], ~visible_hw, shape_hw, fill=MASKED_COLOR)
    draw_cells(axes[3], visible_hw, shape_hw, color=VISIBLE_COLOR)
    axes[3].set_title(
        f"visible {int(visible_hw.sum())} (ROI {int((visible_hw & cells_hw).sum())}) / "
        f"masked {int((~visible_hw).sum())}",
        fontsize=9,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
