"""`python -m localize inspect`: panels, statistics and the HTML page, on a cache the real localizer wrote."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.manifest import scan_corpus, write_manifest
from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from localize.config import LocalizeConfig
from localize.driver import run_localization
from localize.standins import write_standins
from localize.viewer import STAT_PLOTS, UNTRAINED_BANNER, main, select_items

BROKEN = "chest_xray/cxr_001.png"  # decodes at scan time, is broken before localization: one failed item
FLAT = "chest_xray/flat.png"  # nothing stands out: an empty ROI


def build_sample_cache(tmp: Path) -> tuple[Path, Path]:
    """Sample corpus (+ a flat X-ray) -> stand-in localization (fast similarity saliency) -> (corpus, cache).

    The cache has every status the report must count: done items, at least one empty ROI, one failed item.
    """
    corpus, cache = tmp / "corpus", tmp / "roi_cache.zarr"
    write_sample_corpus(corpus, n=3, seed=0, size=64)
    cv2.imwrite(str(corpus / FLAT), np.full((56, 64), 128, np.uint8))
    manifest, failures = scan_corpus(corpus, progress=False, workers=1)
    manifest = manifest[~manifest["path"].str.startswith("truth/")].reset_index(drop=True)  # masks, not images
    (corpus / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n broken after the scan")
    write_manifest(manifest, failures, tmp / "manifest.parquet")
    config = LocalizeConfig.load(write_standins(tmp / "standins"), ["saliency={method: similarity}"])
    run_localization(config, corpus, cache, manifest_path=tmp / "manifest.parquet", workers=0, progress=False)
    return corpus, cache


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    return build_sample_cache(tmp_path_factory.mktemp("inspect"))


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs_d = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs_d["src"] or "")
        if attrs_d.get("id"):
            self.ids.add(attrs_d["id"] or "")


def parse_page(out: Path) -> _Images:
    parser = _Images()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    return parser


def test_report_panels_plots_and_page(sample, tmp_path, capsys):
    corpus, cache_path = sample
    out = tmp_path / "report"
    assert main(["--cache", str(cache_path), "--corpus", str(corpus), "--out", str(out), "--n", "4"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    table = RoiCache.open(cache_path).table()

    # one PNG per selected item, all done, stratified: 4 items over 3 modalities cover each modality
    panels = sorted(p.relative_to(out).as_posix() for p in (out / "panels").glob("*.png"))
    assert len(panels) == 4 and panels == sorted(p["file"] for p in stats["panels"])
    drawn = table.set_index("item_id").loc[[p["item_id"] for p in stats["panels"]]]
    assert (drawn["status"] == "done").all() and set(drawn["modality"]) == {"CT", "MR", "XR"}
    assert all(p["note"] is None for p in stats["panels"])  # every image was read from the corpus
    for name in STAT_PLOTS.values():
        assert cv2.imread(str(out / name)) is not None, name

    # the page shows exactly these files, by relative paths that exist; the untrained banner is on top
    page = parse_page(out)
    assert sorted(page.srcs) == sorted([*panels, *STAT_PLOTS.values()])
    assert all((out / src).is_file() for src in page.srcs)
    assert "untrained" in page.ids and UNTRAINED_BANNER in (out / "index.html").read_text()
    assert "panels" in capsys.readouterr().err  # the progress bar


def test_statistics_match_the_cache(sample, tmp_path):
    corpus, cache_path = sample
    out = tmp_path / "report"
    assert main(["--cache", str(cache_path), "--out", str(out), "--n", "0", "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    cache = RoiCache.open(cache_path)
    summary, table = cache.summary(), cache.table()

    assert summary["failed"] == 1 and summary["empty_roi"] >= 1  # the fixture's broken and flat images
    assert {k: stats[k] for k in summary} == summary
    assert stats["empty_roi_rate"] == pytest.approx(summary["empty_roi"] / summary["done"])
    assert stats["failure_reasons"] == {"UnreadableImage: <file>: cannot decode PNG (corrupt or truncated)": 1}
    assert table.loc[table["path"] == FLAT, "empty_roi"].item()
    assert stats["per_modality"]["XR"]["failed"] == 1 and stats["per_modality"]["XR"]["empty_roi"] >= 1
    assert sum(m["items"] for m in stats["per_modality"].values()) == cache.n_items

    done = np.flatnonzero((table["status"] == "done").to_numpy())
    s = cache.mask_size
    areas = np.array([cache.read_mask(int(i), (s, s)).mean() for i in done])
    assert stats["area_fraction"]["mean"] == pytest.approx(areas.mean())
    xr = [i for i in done if table.loc[i, "modality"] == "XR"]
    assert stats["per_modality"]["XR"]["area_fraction"]["min"] == 0.0  # the empty ROI
    assert stats["per_modality"]["XR"]["score"]["median"] == pytest.approx(float(np.median(table.score[xr])))
    assert stats["provenance"] == cache.provenance and stats["untrained"] is True


def test_chosen_items(sample, tmp_path, capsys):
    corpus, cache_path = sample
    table = RoiCache.open(cache_path).table()
    mr = table[(table["modality"] == "MR") & (table["status"] == "done")]["item_id"].iloc[0]
    flat = table.loc[table["path"] == FLAT, "item_id"].item()
    failed = table.loc[table["path"] == BROKEN, "item_id"].item()
    out = tmp_path / "chosen"
    assert main(["--cache", str(cache_path), "--out", str(out), "--n", "3", "--no-progress"]) == 0  # replaced below
    argv = [
        "--cache",
        str(cache_path),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--no-progress",
        "--items",
        f"{flat},{mr},{failed}",
    ]
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert [p["item_id"] for p in stats["panels"]] == [flat, mr]
    assert sorted(p.name for p in (out / "panels").iterdir()) == sorted([f"{flat}.png", f"{mr}.png"])
    assert stats["not_drawn"] == {failed: table.loc[table["path"] == BROKEN, "reason"].map("failed: {}".format).item()}
    html = (out / "index.html").read_text()
    assert failed in html and "cannot decode PNG" in html

    assert main(["--cache", str(cache_path), "--out", str(tmp_path / "x"), "--items", f"{mr},nosuchitem"]) == 2
    assert "nosuchitem" in capsys.readouterr().err


def test_without_or_with_the_wrong_corpus(sample, tmp_path):
    _, cache_path = sample
    out = tmp_path / "no_corpus"
    assert main(["--cache", str(cache_path), "--out", str(out), "--n", "2", "--modality", "MR", "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["panels"]) == 2 and {p["modality"] for p in stats["panels"]} == {"MR"}
    assert "No <code>--corpus</code> given" in (out / "index.html").read_text()

    wrong = tmp_path / "other_corpus"
    wrong.mkdir()
    out = tmp_path / "wrong_corpus"
    assert (
        main(["--cache", str(cache_path), "--corpus", str(wrong), "--out", str(out), "--n", "2", "--no-progress"]) == 0
    )
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["panels"]) == 2 and all(p["note"].startswith("image not drawn") for p in stats["panels"])
    assert all((out / p["file"]).is_file() for p in stats["panels"])


def test_bad_input_is_reported(sample, tmp_path, capsys):
    _, cache_path = sample
    missing = tmp_path / "nowhere.zarr"
    assert main(["--cache", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no ROI cache" in err
    assert not (tmp_path / "o").exists()
    assert main(["--cache", str(cache_path), "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus folder not found" in capsys.readouterr().err
    assert main(["--cache", str(cache_path), "--out", str(tmp_path / "o"), "--modality", "US"]) == 2
    assert "'US'" in capsys.readouterr().err


def test_random_selection_is_stratified_and_seeded():
    modality = ["CT"] * 10 + ["MR"] * 1 + ["XR"] * 10
    status = pd.Categorical(["done"] * 20 + ["failed"], categories=["pending", "done", "failed"])
    table = pd.DataFrame(
        {
            "item_id": [f"id{i}" for i in range(21)],
            "modality": modality,
            "status": status,
            "reason": [""] * 20 + ["boom"],
        }
    )
    chosen = select_items(table, n=7, seed=1).indices
    counts = pd.Series([modality[i] for i in chosen]).value_counts().to_dict()
    assert counts == {"CT": 3, "MR": 1, "XR": 3} and len(set(chosen)) == 7 and 20 not in chosen
    assert select_items(table, n=7, seed=1).indices == chosen
    assert any(select_items(table, n=7, seed=s).indices != chosen for s in range(2, 6))
    assert sorted(select_items(table, n=100, seed=0).indices) == list(range(20))  # every done item, no more
    only_xr = select_items(table, n=4, modality="XR").indices
    assert len(only_xr) == 4 and all(modality[i] == "XR" for i in only_xr)
    picked = select_items(table, item_ids=["id20", "id3", "id3"])
    assert picked.indices == [3] and picked.skipped == {"id20": "failed: boom"}


def test_panels_draw_the_images_with_the_intensity_rules_the_cache_records(tmp_path):
    """A CT image through the lung window looks different from the soft-tissue default: the panel follows the
    cache's recorded rules; a cache recording the default rules draws what one recording none does."""
    from data.intensity import IntensityConfig
    from localize.viewer.panels import draw_panels

    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, n=3, seed=0, size=64)
    manifest, _ = scan_corpus(corpus, progress=False)
    ct = [int(i) for i in np.flatnonzero(manifest["modality"].to_numpy() == "CT")[:1]]
    assert ct, "the sample corpus has a CT item"
    drawn = {}
    for name, intensity in [
        ("lung", IntensityConfig(ct_window="lung").to_dict()),
        ("default", IntensityConfig().to_dict()),
        ("none", None),
    ]:
        cache = RoiCache.create(tmp_path / f"{name}.zarr", manifest, {"intensity": intensity}, mask_size=32)
        table = cache.table()
        draw_panels(cache, table, ct, corpus, tmp_path / name, progress=False)
        (png,) = (tmp_path / name / "panels").glob("*.png")
        drawn[name] = cv2.imread(str(png))
    assert np.array_equal(drawn["default"], drawn["none"])
    assert not np.array_equal(drawn["lung"], drawn["default"])
