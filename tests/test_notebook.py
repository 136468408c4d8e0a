"""notebooks/inspect_roi_cache.ipynb runs top to bottom on a cache of the sample corpus, and ships without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from data.roi_cache import RoiCache
from localize.viewer import UNTRAINED_BANNER
from tests.test_inspect import build_sample_cache

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_roi_cache.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "MWM_CACHE" in code[0].source and "MWM_CORPUS" in code[0].source  # parameters at the top


def test_notebook_executes_on_the_sample_cache(tmp_path, monkeypatch):
    corpus, cache_path = build_sample_cache(tmp_path)
    monkeypatch.setenv("MWM_CACHE", str(cache_path))
    monkeypatch.setenv("MWM_CORPUS", str(corpus))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # raises CellExecutionError (with the failing cell and traceback) on any error
    NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # overlays and the masking preview
    assert any(UNTRAINED_BANNER in o.get("data", {}).get("text/html", "") for o in outputs)
    stream = "".join(o.text for o in outputs if o.output_type == "stream")
    assert str(cache_path) in stream

    # the masking preview's numbers follow the MWM fork's rule: keep int(N*(1-r)) cells per region in Python floats
    # (0.8 ROI / 0.4 background; 1 - 0.8 is 0.19999999999999996, so 5 ROI cells keep none)
    summary = json.loads(stream.strip().splitlines()[-1])
    cache = RoiCache.open(cache_path)
    record = cache.read_record(cache.table().set_index("item_id").index.get_loc(summary["item_id"]))
    assert record["status"] == "done"
    n_roi, n_bg = summary["roi_cells"], summary["background_cells"]
    assert summary["grid_hw"] == [7, 7] and n_roi + n_bg == 49
    keep_roi, keep_bg = int(n_roi * (1 - 0.8)), int(n_bg * (1 - 0.4))
    if keep_roi + keep_bg == 0:  # the sampler keeps at least one cell, background first
        keep_bg, keep_roi = (1, 0) if n_bg else (0, 1)
    assert (summary["visible_roi_cells"], summary["visible_background_cells"]) == (keep_roi, keep_bg)
    assert summary["realised_ratio"] == pytest.approx(1 - (keep_roi + keep_bg) / 49, abs=1e-4)
    assert summary["expected_ratio"] == pytest.approx((0.8 * n_roi + 0.4 * n_bg) / 49, abs=1e-4)
