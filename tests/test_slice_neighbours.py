"""2.5-D input (`data.slice_neighbours`): an item of a series is fed as its slices (z-1, z, z+1) in position order,
edge slices repeated, with slice z's ROI; the export records the convention and fine-tuning refuses the other one.

The series is hand-made: five DICOM slices, each of one constant HU value that rises with the slice's position
along the normal, written in a file order that is neither the position order nor its reverse. Expected channel
values follow from the CT soft-tissue window (level 40, width 400: HU -160..240 -> 0..1), not from the code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data.dataset import RoiDataset
from data.intensity import IntensityConfig
from data.manifest import scan_corpus, write_manifest
from data.packed_store import PackedStore
from data.packing import pack_corpus
from data.roi_cache import RoiCache
from data.slice_neighbours import neighbour_rows
from finetune.data import NeighbourSlices, read_image_chw
from finetune.segment import SegmentationData
from pretrain.datamodule import RoiDataModule
from pretrain.export import export_backbone, input_convention, read_sidecar
from pretrain.spark import SparkMIM
from tests._readers_files import write_dicom, write_opencv

SIDE = 32
RANK_OF_FILE = [3, 0, 4, 1, 2]  # file slice_k lies at position rank RANK_OF_FILE[k] (shuffled)
HU_AT_RANK = [-140.0, -80.0, -20.0, 40.0, 100.0]
VALUE_AT_RANK = [(hu + 160.0) / 400.0 for hu in HU_AT_RANK]  # 0.05, 0.2, 0.35, 0.5, 0.65
QUANTUM = 0.5 / 255 + 1e-6


def roi_of_rank(rank: int) -> np.ndarray:
    """A ROI that tells the slices apart: rows [0, 2 + 3 * rank) of columns [4, 12)."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[: 2 + 3 * rank, 4:12] = 1
    return mask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("neighbours")
    corpus = root / "corpus"
    tags = {"PatientID": "P1", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "PixelSpacing": [1, 1]}
    for k, rank in enumerate(RANK_OF_FILE):
        pixels = np.full((SIDE, SIDE), HU_AT_RANK[rank] + 1024.0, np.float64).astype(np.uint16)
        position = {"ImagePositionPatient": [0.0, 0.0, 2.5 * rank], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}
        write_dicom(corpus / "ct" / f"slice_{k}.dcm", pixels, slope=1.0, intercept=-1024.0, tags=tags | position)
    write_opencv(corpus / "xr" / "single.png", np.tile(np.arange(SIDE, dtype=np.uint8) * 8, (SIDE, 1)))
    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    assert failures.empty and len(manifest) == 6
    cache = RoiCache.create(root / "c.zarr", manifest, {"intensity": {}}, mask_size=SIDE)
    ranks = [RANK_OF_FILE[int(p.split("_")[1][0])] if p.startswith("ct/") else 0 for p in manifest["path"]]
    masks = [roi_of_rank(r) for r in ranks]
    cache.write(range(len(manifest)), masks, masks, [np.zeros((0, 4))] * len(masks), [1.0] * len(masks))
    store = PackedStore.create(root / "square.zarr", manifest, IntensityConfig(), square=SIDE)
    pack_corpus(store, corpus, progress=False)
    return corpus, root / "c.zarr", root / "square.zarr", manifest, ranks


def expected_channels(rank: int) -> list[float]:
    before, after = max(rank - 1, 0), min(rank + 1, len(HU_AT_RANK) - 1)  # edges repeat the edge slice
    return [VALUE_AT_RANK[before], VALUE_AT_RANK[rank], VALUE_AT_RANK[after]]


def test_the_neighbour_table_follows_positions_not_file_names(data):
    _, _, _, manifest, ranks = data
    rows = neighbour_rows(manifest)
    row_at_rank = {r: i for i, (r, p) in enumerate(zip(ranks, manifest["path"], strict=True)) if p.startswith("ct/")}
    for i, path in enumerate(manifest["path"]):
        if path.startswith("xr/"):
            assert rows[i].tolist() == [i, i, i]  # no series: its own slice thrice
            continue
        r = ranks[i]
        assert rows[i].tolist() == [row_at_rank[max(r - 1, 0)], i, row_at_rank[min(r + 1, 4)]]


@pytest.mark.parametrize("source", ["files", "packed"])
def test_channels_are_the_previous_own_and_next_slice_with_the_own_roi(data, source):
    corpus, cache, square, _, ranks = data
    packed = square if source == "packed" else None
    dataset = RoiDataset(corpus, cache=cache, packed=packed, input_channels="2.5d")
    flat = RoiDataset(corpus, cache=cache, packed=packed)
    seen = set()
    for i in range(len(dataset)):
        item, one = dataset[i], flat[i]
        image, path = item["image"], dataset.manifest["path"][item["index"]]
        assert image.shape == (3, SIDE, SIDE)
        if path.startswith("xr/"):  # no series: the 2-D item
            assert torch.equal(image, one["image"])
            continue
        rank = ranks[item["index"]]
        seen.add(rank)
        got = [float(v) for v in image.flatten(1).mean(1)]
        assert np.allclose(got, expected_channels(rank), atol=QUANTUM), (rank, got)
        assert (image.flatten(1).amax(1) - image.flatten(1).amin(1)).max() == 0  # each channel one whole slice
        assert torch.equal(image[1], one["image"][0])  # the centre is the 2-D item's image
        assert np.array_equal(item["roi"][0].numpy(), roi_of_rank(rank))  # slice z's ROI
    assert seen == set(range(5))


def test_the_datamodule_feeds_2_5d_batches_and_keeps_the_option(data):
    corpus, cache, square, _, _ = data
    kw = dict(input_size=SIDE, batch_size=2, num_workers=0, normalize="imagenet", hflip=0.0, roi_shape="sam")
    dm = RoiDataModule(corpus, cache, packed=square, input_channels="2.5d", **kw)
    dm.setup("fit")
    assert dm.hparams.input_channels == "2.5d"
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    flat = batch["image"].flatten(2)
    assert (flat[:, 0].mean(1) <= flat[:, 1].mean(1) + QUANTUM).all()  # values rise with the position
    assert (flat[:, 1].mean(1) <= flat[:, 2].mean(1) + QUANTUM).all()
    with pytest.raises(ValueError, match="input_channels must be one of"):
        RoiDataModule(corpus, cache, input_channels="3d", **kw)


def test_finetuning_reads_the_neighbours_of_its_rows(data):
    corpus, _, _, manifest, ranks = data
    neighbours = NeighbourSlices(manifest)
    for i, path in enumerate(manifest["path"]):
        image = read_image_chw(corpus, path, 0, neighbours=neighbours)
        if path.startswith("ct/"):
            got = [float(v) for v in image.flatten(1).mean(1)]
            assert np.allclose(got, expected_channels(ranks[i]), atol=1e-5)
        else:
            assert torch.equal(image[0], image[2])
    assert torch.equal(read_image_chw(corpus, "ct/slice_0.dcm", 0)[0], read_image_chw(corpus, "ct/slice_0.dcm", 0)[2])


def test_the_export_records_the_convention_and_finetuning_refuses_the_other(tmp_path, data):
    corpus, _, _, manifest, _ = data
    mim = SparkMIM("resnet18", input_size=64, decoder_width=32)
    state = {"model." + k: v for k, v in mim.state_dict().items()}
    for channels in ("2d", "2.5d"):
        ckpt = tmp_path / f"{channels}.ckpt"
        dm_hparams = {"input_channels": channels, "intensity_used": None}
        torch.save(
            {
                "state_dict": state,
                "hyper_parameters": {"backbone": "resnet18"},
                "datamodule_hyper_parameters": dm_hparams,
            },
            ckpt,
        )
        export_backbone(ckpt, tmp_path / f"{channels}.pt")
        meta = read_sidecar(tmp_path / f"{channels}.pt")
        assert meta["input"] == {"channels": channels} and input_convention(meta) == channels
    assert input_convention({"backbone": "resnet18"}) == "2d"  # an export from before the record

    (corpus / "labels.csv").write_text(
        "path,frame,label,split\n"
        + "".join(f"{p},0,x,{s}\n" for p, s in zip(manifest["path"], ["train"] * 5 + ["test"], strict=True))
    )
    for item_id in manifest["item_id"]:
        write_opencv(corpus / "truth" / f"{item_id}.png", np.zeros((SIDE, SIDE), np.uint8))
    write_manifest(manifest, pd.DataFrame(columns=["path", "reason"]), tmp_path / "manifest.parquet")
    kw = dict(root=str(corpus), num_classes=2, masks_dir=None)
    with pytest.raises(
        ValueError, match=r"2\.5d\.pt: the backbone was pretrained on '2\.5d' input.*set data\.input_channels: 2\.5d"
    ):
        SegmentationData(**kw, init=str(tmp_path / "2.5d.pt"))
    with pytest.raises(ValueError, match=r"2d\.pt: the backbone was pretrained on '2d' input"):
        SegmentationData(**kw, init=str(tmp_path / "2d.pt"), input_channels="2.5d")
    with pytest.raises(ValueError, match="needs data.manifest"):
        SegmentationData(**kw, init=str(tmp_path / "2.5d.pt"), input_channels="2.5d")
    accepted = SegmentationData(
        **kw, init=str(tmp_path / "2.5d.pt"), input_channels="2.5d", manifest=str(tmp_path / "manifest.parquet")
    )
    image, _ = accepted.split_dataset("train")[0]
    assert image.shape[0] == 3 and not torch.equal(image[0], image[2])  # ImageNet-normalised, but distinct slices


def test_tied_positions_prefer_the_own_file_and_nearest_frame():
    # a 4-D NIfTI: two volumes of 3 slices share the positions; a slice's neighbours are those of its own volume
    manifest = pd.DataFrame(
        {
            "path": ["v.nii"] * 6,
            "frame": range(6),
            "series_key": ["s"] * 6,
            "slice_index": [0, 1, 2, 0, 1, 2],
            "height": [8] * 6,
            "width": [8] * 6,
        }
    )
    assert neighbour_rows(manifest).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 5], [4, 5, 5]]
    unusable = np.array([True, False, True, True, True, True])
    assert neighbour_rows(manifest, unusable)[0].tolist() == [0, 0, 4]  # a failed slice is no one's neighbour
    other_size = manifest.assign(height=[8, 9, 8, 8, 8, 8])
    assert neighbour_rows(other_size)[0].tolist() == [0, 0, 4]
