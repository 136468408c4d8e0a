"""The Zarr ROI cache: round trip, resume, provenance refusal, parallel writers, fast reads."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest
import zarr

from data.ids import make_item_id
from data.roi_cache import DONE, FAILED, PENDING, ProvenanceMismatch, RoiCache

PROVENANCE = {"clip": {"id": "local-dir:/models/clip", "sha256": "ab12"}, "saliency": {"method": "m2ib", "beta": 0.1}}


def make_manifest(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    paths = [f"scans/img_{i:04d}.png" for i in range(n)]
    return pd.DataFrame(
        {
            "item_id": [make_item_id(p, 0) for p in paths],
            "path": paths,
            "frame": 0,
            "modality": rng.choice(["CT", "MR", "XR"], n),
            "height": rng.integers(40, 90, n),
            "width": rng.integers(40, 90, n),
        }
    )


def item_results(manifest: pd.DataFrame, indices, seed: int = 0):
    """Deterministic per-item results at each item's own size (what a localizer would produce)."""
    masks, saliency, boxes, scores = [], [], [], []
    for i in indices:
        h, w = int(manifest.height[i]), int(manifest.width[i])
        rng = np.random.default_rng(seed * 100_003 + int(i))
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.3) * min(h, w)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8))
        saliency.append(rng.random((h, w)).astype(np.float32))
        boxes.append(np.array([[cx - r, cy - r, cx + r, cy + r]], dtype=np.float32))
        scores.append(float(rng.random()))
    return masks, saliency, boxes, scores


@pytest.fixture
def manifest() -> pd.DataFrame:
    return make_manifest(100)


def test_round_trip(tmp_path, manifest):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=64, max_boxes=3, shard_items=16)
    idx = [0, 3, 17, 40, 99]
    masks, sal, boxes, scores = item_results(manifest, idx)
    cache.write(idx, masks, sal, boxes, scores, flags=[0, 0, 1, 0, 0])

    reopened = RoiCache.open(tmp_path / "c.zarr")
    assert reopened.provenance == PROVENANCE
    assert reopened.manifest().equals(manifest[list(reopened.manifest().columns)].astype(reopened.manifest().dtypes))
    for j, i in enumerate(idx):
        h, w = int(manifest.height[i]), int(manifest.width[i])
        got = reopened.read_mask(i)
        assert got.shape == (h, w) and got.dtype == np.uint8
        # a 64x64 store loses detail at the edge only: the masks agree on >= 95% of pixels
        assert (got == masks[j]).mean() > 0.95
        assert reopened.read_mask(i, (224, 224)).shape == (224, 224)
        assert np.abs(reopened.read_saliency(i) - sal[j]).mean() < 0.2
        np.testing.assert_allclose(reopened.read_boxes(i), boxes[j], rtol=1e-5)
        assert reopened.read_record(i)["score"] == pytest.approx(scores[j])
    assert reopened.read_record(17)["empty_roi"] and not reopened.read_record(0)["empty_roi"]
    status = reopened.status()
    assert set(np.flatnonzero(status == DONE)) == set(idx)
    assert reopened.read_mask(1).sum() == 0  # never written: empty, not an error


def test_pending_after_partial_write_and_failures(tmp_path, manifest):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=32, shard_items=16)
    first = list(range(0, 40))
    cache.write(first, *item_results(manifest, first))
    cache.write_failed([50, 51], ["pixels could not be decoded", "truncated file"])
    reopened = RoiCache.open(tmp_path / "c.zarr", mode="r+", provenance=PROVENANCE)
    pending = reopened.pending()
    assert list(pending) == [i for i in range(100) if i >= 40 and i not in (50, 51)]
    assert list(reopened.pending(include_failed=True)) == list(range(40, 100))
    assert reopened.read_record(50)["reason"] == "pixels could not be decoded"
    assert reopened.summary() == {"items": 100, "done": 40, "empty_roi": 0, "absent": 0, "failed": 2, "pending": 58}
    # finishing the rest equals writing everything at once
    reopened.write(pending, *item_results(manifest, pending))
    reopened.write([50, 51], *item_results(manifest, [50, 51]))
    once = RoiCache.create(tmp_path / "once.zarr", manifest, PROVENANCE, mask_size=32, shard_items=16)
    once.write(range(100), *item_results(manifest, range(100)))
    a, b = zarr.open_group(tmp_path / "c.zarr", mode="r"), zarr.open_group(tmp_path / "once.zarr", mode="r")
    for name in ("mask", "saliency", "boxes", "score", "flags", "status", "reason"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def test_provenance_refusal_names_the_difference(tmp_path, manifest):
    RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=32)
    other = {**PROVENANCE, "saliency": {"method": "m2ib", "beta": 0.5}}
    with pytest.raises(ProvenanceMismatch) as err:
        RoiCache.open(tmp_path / "c.zarr", mode="r+", provenance=other)
    message = str(err.value)
    assert "saliency.beta" in message and "0.1" in message and "0.5" in message and "new cache" in message
    with pytest.raises(FileExistsError):
        RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE)
    with pytest.raises(FileNotFoundError, match="missing zarr.json"):
        RoiCache.open(tmp_path / "absent.zarr")


def test_sharded_layout_has_few_files(tmp_path):
    manifest = make_manifest(1000)
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=16, shard_items=256)
    cache.write(range(1000), *item_results(manifest, range(1000)))
    files = [p for p in (tmp_path / "c.zarr").rglob("*") if p.is_file()]
    assert len(files) < 100  # one file per shard per array, not one per item
    assert [len(r) for r in cache.shards()] == [256, 256, 256, 232]


def _write_shards(path: str, shard_ids: list[int]) -> None:
    cache = RoiCache.open(path, mode="r+", provenance=PROVENANCE)
    manifest = cache.manifest()
    for s in shard_ids:
        rows = list(cache.shards()[s])
        for start in range(0, len(rows), 5):  # several partial writes per shard, as a batched job does
            batch = rows[start : start + 5]
            cache.write(batch, *item_results(manifest, batch))


def test_two_writer_processes_on_distinct_shards(tmp_path):
    manifest = make_manifest(120)
    path = str(tmp_path / "c.zarr")
    RoiCache.create(path, manifest, PROVENANCE, mask_size=32, shard_items=16)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_write_shards, args=(path, ids)) for ids in ([0, 2, 4, 6], [1, 3, 5, 7])]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    parallel = RoiCache.open(path)
    serial = RoiCache.create(tmp_path / "serial.zarr", manifest, PROVENANCE, mask_size=32, shard_items=16)
    serial.write(range(120), *item_results(manifest, range(120)))
    assert (parallel.status() == DONE).all()
    for i in range(120):
        np.testing.assert_array_equal(parallel.read_mask(i), serial.read_mask(i))
        np.testing.assert_array_equal(parallel.read_saliency(i), serial.read_saliency(i))


def test_fast_reader_equals_zarr(tmp_path, manifest):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=48, shard_items=16)
    idx = list(range(0, 100, 3))
    cache.write(idx, *item_results(manifest, idx))
    plain = zarr.open_group(tmp_path / "c.zarr", mode="r")  # what any zarr user sees
    for i in range(100):  # written, unwritten items and unwritten shards alike
        np.testing.assert_array_equal(cache._read_item("mask", i), plain["mask"][i])
        np.testing.assert_array_equal(cache._read_item("saliency", i), plain["saliency"][i])
    with pytest.raises(IndexError):
        cache.read_mask(100)


def test_fast_reader_detects_corrupt_shard_index(tmp_path, manifest):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=32, shard_items=16)
    cache.write(range(16), *item_results(manifest, range(16)))
    shard = tmp_path / "c.zarr" / "mask" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(OSError, match="checksum"):
        RoiCache.open(tmp_path / "c.zarr").read_mask(0)


def test_plain_zarr_sees_status_and_provenance(tmp_path, manifest):
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=32)
    cache.write_failed([4], ["boom"])
    group = zarr.open(tmp_path / "c.zarr", mode="r")
    assert group.attrs["provenance"] == PROVENANCE and group.attrs["schema_version"] == 3
    assert group["status"][4] == FAILED and group["status"][5] == PENDING
    assert list(group["item_id"][:3]) == list(manifest.item_id[:3])


def test_masks_up_to_the_stored_size_round_trip_exactly(tmp_path):
    """Nearest-exact resizing: a mask no larger than S x S comes back pixel for pixel, even pure noise."""
    manifest = make_manifest(20, seed=3)  # heights and widths 40..89, stored at 96 x 96
    cache = RoiCache.create(tmp_path / "c.zarr", manifest, PROVENANCE, mask_size=96)
    rng = np.random.default_rng(0)
    masks = [(rng.random((h, w)) > 0.5).astype(np.uint8) for h, w in zip(manifest.height, manifest.width, strict=True)]
    cache.write(range(20), masks, masks, [np.zeros((0, 4))] * 20, [1.0] * 20)
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(cache.read_mask(i), mask)


def _with_keys(manifest: pd.DataFrame) -> pd.DataFrame:
    keyed = manifest.copy()
    keyed["patient_key"] = [f"p{i // 4}" for i in range(len(keyed))]
    keyed["study_key"] = [f"s{i // 4}" for i in range(len(keyed))]
    keyed["series_key"] = [f"r{i // 2}" for i in range(len(keyed))]
    keyed["slice_index"] = [i % 2 for i in range(len(keyed))]
    keyed["n_slices"] = 2
    return keyed


def test_grouping_keys_are_stored_and_an_old_cache_is_migrated_not_mixed(tmp_path, manifest, caplog):
    keyed = _with_keys(manifest)
    cache = RoiCache.create(tmp_path / "new.zarr", keyed, PROVENANCE, mask_size=16, shard_items=8)
    table = RoiCache.open(tmp_path / "new.zarr").manifest()
    assert table.patient_key.tolist() == keyed.patient_key.tolist()
    assert table.slice_index.tolist() == keyed.slice_index.tolist()
    # a cache made from a manifest without keys (as a schema-2 cache): opening it warns, keys are absent
    RoiCache.create(tmp_path / "old.zarr", manifest, PROVENANCE, mask_size=16, shard_items=8)
    zarr.open_group(tmp_path / "old.zarr", mode="r+").attrs["schema_version"] = 2
    with caplog.at_level("WARNING"):
        old = RoiCache.open(tmp_path / "old.zarr", "r+")
    assert "without patient/study/series keys" in caplog.text and "patient_key" not in old.manifest().columns
    with pytest.raises(ValueError, match="items differ"):
        old.add_grouping_keys(keyed.iloc[::-1].reset_index(drop=True))
    old.add_grouping_keys(keyed)
    migrated = RoiCache.open(tmp_path / "old.zarr")
    assert migrated.manifest().series_key.tolist() == keyed.series_key.tolist()
    assert zarr.open_group(tmp_path / "old.zarr", mode="r").attrs["schema_version"] == 3
    assert cache.has_grouping_keys()
