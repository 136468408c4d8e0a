"""Viewers of a ROI cache: matplotlib overlay panels, and the `python -m localize inspect` report (HTML + PNGs).

overlay.py    drawing primitives and the item / masking-preview panels (also used by the notebook)
report.py     `python -m localize inspect`: inspect_cache() and its command line
selection.py  which items to draw;  stats.py  numbers and plots of the whole cache
panels.py     one overlay PNG per drawn item;  page.py  the HTML page
"""

from localize.viewer.overlay import item_panel, masking_preview
from localize.viewer.page import UNTRAINED_BANNER
from localize.viewer.report import inspect_cache, main
from localize.viewer.selection import select_items
from localize.viewer.stats import STAT_PLOTS

__all__ = ["STAT_PLOTS", "UNTRAINED_BANNER", "inspect_cache", "item_panel", "main", "masking_preview", "select_items"]
