"""Viewers of a ROI cache: matplotlib overlay panels, and the `python -m localize inspect` report (HTML + PNGs)."""

from localize.viewer.overlay import item_panel, masking_preview
from localize.viewer.report import STAT_PLOTS, UNTRAINED_BANNER, inspect_cache, main, select_items

__all__ = ["STAT_PLOTS", "UNTRAINED_BANNER", "inspect_cache", "item_panel", "main", "masking_preview", "select_items"]
