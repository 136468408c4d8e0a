"""The localize configuration: the release's settings by default, written once; precision; progress by items."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data.manifest import scan_corpus
from data.roi_cache import CacheGeometry, RoiCache
from data.sample import write_sample_corpus
from localize.config import ConfigError, LocalizeConfig
from localize.job import ItemProgress, plan_units
from localize.localizer import Localizer, localizer_provenance
from localize.refine import RefineConfig
from localize.saliency import M2IBSaliency, build_saliency
from localize.standins import write_standins

ROOT = Path(__file__).resolve().parents[1]
FAST = ["saliency={method: similarity}", "batch_size=4"]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    return write_standins(tmp_path_factory.mktemp("standins"))


def test_defaults_are_the_release_and_live_in_the_classes():
    config = LocalizeConfig.load(None, ["sam=vit_h:/models/sam_vit_h_4b8939.pth"])
    assert config.refine == RefineConfig() and config.geometry == CacheGeometry() and config.precision == "fp32"
    assert build_saliency(config.saliency) == M2IBSaliency()  # the release's M2IB, preset "release"
    assert asdict(RefineConfig()) == {"threshold": 0.3, "top_k": 2, "use_sam": True, "expand_ratio": 1.0}
    assert asdict(CacheGeometry()) == {"mask_size": 256, "max_boxes": 4, "max_rects": 32, "shard_items": 256}


def test_standins_config_has_the_releases_saliency_and_refinement(standins):
    written = yaml.safe_load(standins.read_text())
    assert written["refine"] == asdict(RefineConfig())
    # the release's M2IB, at the block of the stand-in's 6 that sits where the release's 7 of 12 does
    assert build_saliency(written["saliency"]) == M2IBSaliency(layer=3)
    assert written["precision"] == "fp32" and written["untrained"] is True


def test_release_example_config_names_vit_h_and_the_release_sections():
    config = LocalizeConfig.load(ROOT / "configs" / "localize" / "release.yaml")
    assert str(config.sam).startswith("vit_h:") and "sam_vit_h_4b8939.pth" in config.sam
    assert build_saliency(config.saliency) == M2IBSaliency() and config.refine == RefineConfig()
    assert config.precision == "fp32"


def test_config_sections_are_typed_and_errors_name_the_field(standins):
    config = LocalizeConfig.load(standins, ["refine.threshold=0.4", "geometry.shard_items=8", "saliency.preset=fast"])
    assert config.refine.threshold == 0.4 and config.geometry.shard_items == 8
    assert build_saliency(config.saliency).noise_samples == 1  # the fast preset
    again = LocalizeConfig(**config.to_dict())  # the form Dask workers receive
    assert again == config
    with pytest.raises(ConfigError, match="thresh"):
        LocalizeConfig.load(standins, ["refine.thresh=0.4"])
    with pytest.raises(ConfigError, match="precision"):
        LocalizeConfig.load(standins, ["precision=fp16"])
    with pytest.raises(ConfigError, match="preset"):
        LocalizeConfig.load(standins, ["saliency.preset=fastest"])
    with pytest.raises(ConfigError, match="max_boxes"):
        LocalizeConfig.load(standins, ["refine.top_k=5"])


def test_provenance_says_precision_and_preset(standins):
    release = localizer_provenance(LocalizeConfig.load(standins))
    fast = localizer_provenance(LocalizeConfig.load(standins, ["saliency.preset=fast"]))
    assert release["precision"] == "fp32" and release["saliency"]["preset"] == "release"
    assert fast["saliency"]["preset"] == "fast" and fast["saliency"]["noise_stats"] == "empirical"
    assert release["refine"]["rect_rule"] == "sam"


def test_bf16_is_refused_off_the_gpu_with_a_clear_message(standins, tmp_path):
    config = LocalizeConfig.load(standins, [*FAST, "precision=bf16"])
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="bf16.*GPU option.*fp32"):
        Localizer.from_config(config, "cpu")


class CountingBar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_item_progress_counts_each_item_once():
    bar = CountingBar()
    progress = ItemProgress(bar, n_items=10)
    progress([0, 1, 2, 3])
    progress([4, 5])
    progress([0, 1, 2, 3])  # a shard re-run after a lost worker reports its items again
    progress([6, 6, 7])
    assert bar.n == 8 and progress.finished == 8


@pytest.mark.slow
def test_dask_progress_counts_a_rerun_shard_once(tmp_path, standins):
    """A unit that runs twice (what Dask does when a worker dies mid-shard) reports its items twice; the bar
    moves once per item."""
    from localize.driver import _dask_runner, create_cache

    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, n=3, seed=0, size=48)
    config = LocalizeConfig.load(standins, [*FAST, "geometry.shard_items=4"])
    cache = create_cache(config, corpus, tmp_path / "c.zarr", None, localizer_provenance(config))
    units = plan_units(cache, config.batch_size)
    assert len(units) >= 2
    bar = CountingBar()
    progress = ItemProgress(bar, cache.n_items)
    with _dask_runner(config, workers=2, scheduler=None) as run_units:
        run_units([*units, units[0]], cache, corpus, cache.manifest(), progress)
        deadline = time.monotonic() + 30
        while progress.finished < cache.n_items and time.monotonic() < deadline:
            time.sleep(0.1)  # worker events arrive asynchronously
        time.sleep(1.0)  # and the re-run unit's duplicate reports too
    assert bar.n == cache.n_items == len(scan_corpus(corpus, progress=False)[0])
    assert (RoiCache.open(tmp_path / "c.zarr").status() == 1).all()
    assert np.isfinite(RoiCache.open(tmp_path / "c.zarr").table().score).all()


def test_an_roi_with_more_regions_than_the_cache_holds_is_a_recorded_failure(tmp_path, standins):
    from data.readers import load_image
    from localize.driver import run_localization

    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, n=3, seed=0, size=48)
    config = LocalizeConfig.load(
        standins, [*FAST, "geometry.max_rects=1", "refine.use_sam=false", "refine.threshold=0.7"]
    )
    manifest, _ = scan_corpus(corpus, progress=False)
    images = [load_image(corpus, r.path, r.frame, r.modality) for r in manifest.itertuples()]
    rect_counts = [len(item.rects_k4) for item in Localizer.from_config(config)(images, list(manifest.modality))]
    assert max(rect_counts) > 1, "the case needs an ROI of several regions"
    run_localization(config, corpus, tmp_path / "c.zarr", workers=0, progress=False)
    table = RoiCache.open(tmp_path / "c.zarr").table()
    too_many = np.array(rect_counts) > 1
    assert (table.status[too_many] == "failed").all() and (table.status[~too_many] == "done").all()
    assert table.reason[too_many].str.contains("too many regions.*max_rects").all()
