"""The report's HTML page: banner, summary table, statistics plots, panels, provenance; all cache text escaped."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from localize.viewer.panels import Panel
from localize.viewer.selection import Selection
from localize.viewer.strip import Strip

UNTRAINED_BANNER = "ROIs from UNTRAINED stand-in models carry no meaning"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.banner { background: #b71c1c; color: white; font-size: 1.6em; font-weight: bold; padding: 0.8em 1em;
          border-radius: 6px; margin-bottom: 1em; }
.note { color: #8d6e00; }
table.summary td, table.summary th { padding: 2px 10px; text-align: right; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
figure { margin: 0 0 1.2em 0; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; }
"""


def render_html(
    stats: dict[str, Any],
    plots: dict[str, str],
    panels: list[Panel],
    selection: Selection,
    corpus: Path | None,
    strips: list[Strip] | None = None,
) -> str:
    """The report page; every string from the cache is HTML-escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>ROI cache: {e(stats['cache'])}</title><style>{_CSS}</style></head><body>",
    ]
    if stats["untrained"]:
        parts.append(f"<div class='banner' id='untrained'>{e(UNTRAINED_BANNER)}</div>")
    parts.append(f"<h1>ROI cache <code>{e(stats['cache'])}</code></h1>")
    rate = stats["empty_roi_rate"]
    parts.append(
        f"<p>{stats['items']} items: {stats['done']} done, {stats['failed']} failed, {stats['pending']} pending; "
        f"empty ROI in {stats['empty_roi']} of the done items ({'n/a' if rate is None else f'{rate:.1%}'})"
        + (f", {stats['absent']} of them absent by the volume-aware rule" if stats.get("absent") else "")
        + ".</p>"
    )
    parts.append(
        "<table class='summary'><tr><th>modality</th><th>items</th><th>done</th><th>failed</th>"
        "<th>pending</th><th>empty ROI</th><th>median ROI area</th><th>median score</th></tr>"
    )
    for modality, m in stats["per_modality"].items():
        area, score = m["area_fraction"]["median"], m["score"]["median"]
        parts.append(
            f"<tr><td>{e(modality)}</td><td>{m['items']}</td><td>{m['done']}</td><td>{m['failed']}</td>"
            f"<td>{m['pending']}</td><td>{m['empty_roi']}</td>"
            f"<td>{'' if area is None else f'{area:.1%}'}</td><td>{'' if score is None else f'{score:.3f}'}</td></tr>"
        )
    parts.append("</table>")

    parts.append("<h2>Statistics</h2>")
    for name, file in plots.items():
        parts.append(f"<figure><img src='{e(file)}' alt='{e(name)}'></figure>")
    if stats["failure_reasons"]:
        parts.append("<h3>Failure reasons</h3><ul>")
        parts += [f"<li>{count} &times; <code>{e(r)}</code></li>" for r, count in stats["failure_reasons"].items()]
        parts.append("</ul>")

    parts.append(f"<h2>Items ({len(panels)})</h2>")
    if corpus is None:
        parts.append(
            "<p class='note'>No <code>--corpus</code> given: the panels show saliency, ROI and boxes "
            "without the images (the cache does not record the corpus root).</p>"
        )
    if selection.skipped:
        parts.append("<p class='note'>Not drawn:</p><ul>")
        parts += [f"<li><code>{e(i)}</code>: {e(why)}</li>" for i, why in selection.skipped.items()]
        parts.append("</ul>")
    for panel in panels:
        note = f"<figcaption class='note'>{e(panel.note)}</figcaption>" if panel.note else ""
        parts.append(
            f"<figure id='{e(panel.item_id)}'><img src='{e(panel.file)}' alt='{e(panel.item_id)}'>{note}</figure>"
        )

    for strip in strips or []:
        parts.append(f"<h2 id='series-{e(strip.series)}'>Series {e(strip.series)} ({len(strip.item_ids)} slices)</h2>")
        if strip.note:
            parts.append(f"<p class='note'>{e(strip.note)}</p>")
        parts.append(f"<figure><img src='{e(strip.file)}' alt='series {e(strip.series)}'></figure>")
        parts.append("<table class='summary'><tr><th>slice</th><th>item</th><th>presence</th><th>absent</th></tr>")
        for z, item_id, p, absent in zip(strip.slice_index, strip.item_ids, strip.presence, strip.absent, strict=True):
            presence = "n/a" if p is None else f"{p:.3f}"
            parts.append(
                f"<tr><td>{z}</td><td>{e(item_id)}</td><td>{presence}</td><td>{'yes' if absent else ''}</td></tr>"
            )
        parts.append("</table>")

    parts.append("<h2>Provenance</h2>")
    parts.append(f"<pre>{e(json.dumps(stats['provenance'], indent=2, sort_keys=True))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
