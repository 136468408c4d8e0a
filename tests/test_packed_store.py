"""The packed image store: pixels equal the raw path's at the stored size, item order, provenance, plain zarr."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import zarr

from data.intensity import IntensityConfig
from data.intensity_follow import IntensityMismatch
from data.item_store import DONE, FAILED
from data.manifest import scan_corpus
from data.packed_store import PackedStore, stored_size
from data.packing import pack_corpus
from data.provenance import ProvenanceMismatch
from data.readers import load_image
from tests._readers_files import cut
from tests.packed_fixtures import MAX_SIDE, write_mixed_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = write_mixed_corpus(tmp_path_factory.mktemp("mixed"))
    manifest, failures = scan_corpus(root, workers=1, progress=False)
    assert failures.empty
    return root, manifest


def packed(tmp_path, corpus, dtype="uint8", **kw) -> PackedStore:
    root, manifest = corpus
    store = PackedStore.create(tmp_path / f"{dtype}.zarr", manifest, IntensityConfig(), max_side=MAX_SIDE, dtype=dtype)
    pack_corpus(store, root, progress=False, **kw)
    return PackedStore.open(store.path)


def raw_at_stored_size(root, row) -> np.ndarray:
    image = load_image(root, row.path, row.frame, row.modality)
    h, w = stored_size(row.height, row.width, MAX_SIDE)
    return image if (h, w) == image.shape[:2] else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def test_stored_size_caps_the_longest_side_and_keeps_the_aspect():
    assert stored_size(100, 70, 64) == (64, 45)  # 70 * 64 / 100 = 44.8
    assert stored_size(70, 100, 64) == (45, 64)
    assert stored_size(64, 10, 64) == (64, 10) and stored_size(3000, 1, 512) == (512, 1)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_packed_images_equal_the_raw_path_at_the_stored_size(tmp_path, corpus, dtype):
    root, manifest = corpus
    store = packed(tmp_path, corpus, dtype)
    assert store.manifest()["item_id"].tolist() == manifest["item_id"].tolist()  # the manifest's item order
    top = np.iinfo(dtype).max
    status = store.status()
    sizes = store.stored_sizes()
    for row in manifest.itertuples():
        assert status[row.Index] == DONE, row.path
        expected = raw_at_stored_size(root, row)
        assert tuple(sizes[row.Index]) == expected.shape[:2]
        pixels = store.read_pixels(row.Index)
        # exactly the rounded raw values (uint16: 16-bit PNG and CT values keep their 65536 levels)
        np.testing.assert_array_equal(pixels, np.rint(expected * top).astype(dtype), err_msg=row.path)
        assert np.abs(store.read_image(row.Index) - expected).max() <= 0.5 / top + 1e-7
    large = manifest.index[manifest.path == "xray/large.png"][0]
    assert tuple(sizes[large]) == (64, 45) and store.read_image(large, "native").shape == (100, 70)
    colour = manifest.index[manifest.path == "xray/colour.png"][0]
    assert store.read_pixels(colour).shape == (30, 20, 3)


def test_unreadable_items_fail_with_a_reason_and_the_others_are_packed(tmp_path):
    root = write_mixed_corpus(tmp_path / "corpus", volumes=1)
    manifest, _ = scan_corpus(root, workers=1, progress=False)
    volume = root / "ct" / "vol_0.nii.gz"
    cut(volume, volume, keep=-3000)  # truncated after the scan: its last slices no longer decode
    store = PackedStore.create(tmp_path / "s.zarr", manifest, IntensityConfig(), max_side=MAX_SIDE)
    pack_corpus(store, root, progress=False)
    table = store.manifest().assign(status=store.status(), reason=store._group["reason"][:])
    broken = table[table.path == "ct/vol_0.nii.gz"]
    assert (broken.status == FAILED).any() and broken.reason[broken.status == FAILED].str.contains("NIfTI").all()
    # the slices item-by-item reading can still decode are packed, as the raw path reads them
    assert (broken.status == DONE).any()
    for index in broken.index[broken.status == DONE]:
        row = manifest.loc[index]
        expected = np.rint(load_image(root, row.path, row.frame, row.modality) * 255).astype(np.uint8)
        np.testing.assert_array_equal(store.read_pixels(index), expected)
    assert (table.status[table.path != "ct/vol_0.nii.gz"] == DONE).all()


def test_readable_with_plain_zarr(tmp_path, corpus):
    store = packed(tmp_path, corpus)
    group = zarr.open_group(store.path, mode="r")
    assert group.attrs["kind"] == "packed-images" and group.attrs["provenance"]["max_side"] == MAX_SIDE
    for i in range(0, store.n_items, 3):
        if store.status()[i] != DONE:
            continue
        h, w = group["stored_hw"][i]
        name = "image" if group["channels"][i] == 1 else "image_rgb"
        np.testing.assert_array_equal(group[name][i][:h, :w], store.read_pixels(i))


def test_readable_through_an_fsspec_url(tmp_path, corpus):
    store = packed(tmp_path, corpus)
    remote = PackedStore.open(f"file://{store.path}")  # zarr's FsspecStore, as for s3://: no local fast path
    assert remote._group.store.__class__.__name__ == "FsspecStore"
    for i in np.flatnonzero(store.status() == DONE):
        np.testing.assert_array_equal(remote.read_pixels(i), store.read_pixels(i))


def test_other_settings_are_refused_naming_the_field(tmp_path, corpus):
    _, manifest = corpus
    path = tmp_path / "s.zarr"
    PackedStore.create(path, manifest, IntensityConfig(ct_window="lung"), max_side=MAX_SIDE)
    same = PackedStore.open_or_create(path, manifest, IntensityConfig(ct_window=(-600, 1500)), max_side=MAX_SIDE)
    assert same.intensity.differences(IntensityConfig(ct_window="lung")) == []
    with pytest.raises(IntensityMismatch) as err:
        PackedStore.open_or_create(path, manifest, IntensityConfig(ct_window="bone"), max_side=MAX_SIDE)
    assert 'ct_window: "bone" vs [-600.0, 1500.0]' in str(err.value)  # this run's vs the store's, both named
    with pytest.raises(ProvenanceMismatch, match="manifest_sha256"):
        PackedStore.open_or_create(path, manifest.iloc[::-1], IntensityConfig(ct_window="lung"), max_side=MAX_SIDE)
    with pytest.raises(ProvenanceMismatch, match="max_side"):
        PackedStore.open_or_create(path, manifest, IntensityConfig(ct_window="lung"), max_side=32)
    with pytest.raises(FileExistsError):
        PackedStore.create(path, manifest, IntensityConfig(ct_window="lung"))


def test_parts_and_workers_build_the_same_store(tmp_path, corpus):
    root, manifest = corpus
    one = packed(tmp_path, corpus)
    split = PackedStore.create(tmp_path / "split.zarr", manifest, IntensityConfig(), max_side=MAX_SIDE, shard_items=4)
    for k in range(3):
        pack_corpus(split, root, part=(k, 3), progress=False)
    pooled = PackedStore.create(tmp_path / "pool.zarr", manifest, IntensityConfig(), max_side=MAX_SIDE, shard_items=4)
    pack_corpus(pooled, root, workers=2, progress=False)
    for other in (PackedStore.open(split.path), PackedStore.open(pooled.path)):
        np.testing.assert_array_equal(other.status(), one.status())
        for i in np.flatnonzero(one.status() == DONE):
            np.testing.assert_array_equal(other.read_pixels(i), one.read_pixels(i))
