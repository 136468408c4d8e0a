"""Label volumes (`data.label_volumes`): NIfTI label volumes and DICOM SEG objects read as per-slice masks, matched to
the image slices by geometry, for `localize import`, `localize eval` and `finetune segment`; grids that do not match
are refused naming the file and the reason.

Expected masks come from elsewhere than the reader: the sample corpus' PNG truth (drawn per item, before any volume
is written), and hand-made volumes whose voxel-to-pixel map is worked out here from the DICOM / NIfTI conventions."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import pack_bits

from data.label_volumes import CorpusLabels, LabelGridMismatch
from data.manifest import scan_corpus, write_manifest
from data.masks import read_mask_image
from data.roi_cache import RoiCache
from data.sample import write_sample_corpus
from finetune.data import MaskedImages
from finetune.segment import SegmentationData
from localize.__main__ import main as localize_main
from localize.evaluate import evaluate_cache
from localize.import_masks import import_masks, shuffle_rois
from localize.import_masks import main as import_main
from tests._readers_files import write_dicom, write_nifti

SERIES = "chest_ct/series_000/"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_volumes")
    corpus = root / "corpus"
    write_sample_corpus(corpus, n=6, seed=0, size=64)
    manifest, failures = scan_corpus(corpus, workers=1, progress=False)
    assert failures.empty and len(manifest) == 18  # the label volumes under truth/ are no images
    write_manifest(manifest, pd.DataFrame(columns=["path", "reason"]), root / "manifest.parquet")
    return corpus, manifest, root


def png_truth(corpus, item_id: str) -> np.ndarray:
    return read_mask_image(corpus / "truth" / f"{item_id}.png")


@pytest.mark.parametrize("kind", ["nifti", "seg"])
def test_a_label_volume_gives_the_png_truth_of_every_slice(sample, kind):
    corpus, manifest, _ = sample
    labels = CorpusLabels(corpus / "truth" / "volumes" / f"{kind}.csv", corpus, manifest)
    rows = [i for i, p in enumerate(manifest["path"]) if p.startswith(SERIES)]
    assert sorted(labels.labels) == rows and len(rows) == 4  # four slices, positions shuffled against file names
    for row in rows:
        assert np.array_equal(labels.mask(row) != 0, png_truth(corpus, manifest["item_id"][row]))
    assert labels.mask(next(i for i in range(len(manifest)) if i not in rows)) is None


@pytest.mark.parametrize("kind", ["nifti", "seg"])
def test_localize_import_and_eval_read_label_volumes_like_png_truth(sample, kind, tmp_path):
    corpus, manifest, root = sample
    listing = corpus / "truth" / "volumes" / f"{kind}.csv"
    from_png = import_masks(corpus / "truth", tmp_path / "png.zarr", manifest_path=root / "manifest.parquet")
    assert from_png.done == len(manifest)
    argv = ["--label-volumes", str(listing), "--cache", str(tmp_path / "vol.zarr"), "--corpus", str(corpus)]
    assert import_main([*argv, "--no-progress"]) == 0
    png_cache, vol_cache = RoiCache.open(tmp_path / "png.zarr"), RoiCache.open(tmp_path / "vol.zarr")
    status = vol_cache.table()["status"].astype(str).to_numpy()
    for row, path in enumerate(manifest["path"]):
        if not path.startswith(SERIES):
            assert status[row] == "failed"
            continue
        size = (int(manifest["height"][row]), int(manifest["width"][row]))
        assert status[row] == "done"
        assert np.array_equal(vol_cache.read_mask(row, size), png_cache.read_mask(row, size))
    # eval of a cache that is not the truth (ROIs shuffled between items): the same per-item scores either way
    shuffle_rois(tmp_path / "png.zarr", tmp_path / "shuffled.zarr", seed=1, progress=False)
    shuffled = RoiCache.open(tmp_path / "shuffled.zarr")
    by_png, _ = evaluate_cache(shuffled, corpus / "truth")
    by_volume, summary = evaluate_cache(shuffled, None, label_volumes=listing, corpus=corpus)
    assert summary["evaluated"] == 4 and summary["without_truth"] == len(manifest) - 4
    expected = by_png.set_index("item_id").loc[by_volume["item_id"]]
    assert np.allclose(by_volume["dice"].to_numpy(), expected["dice"].to_numpy())
    assert by_volume["dice"].min() < 1.0  # the shuffled ROIs are not the truth: the comparison means something


def test_finetune_segment_reads_masks_from_a_seg_object(sample):
    corpus, manifest, root = sample
    data = SegmentationData(
        root=str(corpus), manifest=str(root / "manifest.parquet"), label_volumes="truth/volumes/seg.csv"
    )
    table = data.volumes.table()
    assert sorted(table["path"]) == sorted(p for p in manifest["path"] if p.startswith(SERIES))
    assert sum(data.split_size(s) for s in ("train", "val", "test")) == 4
    dataset = MaskedImages(corpus, table, 2, volumes=data.volumes)
    for i, item_id in enumerate(table["item_id"]):
        image, mask = dataset[i]
        assert image.shape[-2:] == mask.shape and np.array_equal(mask.numpy() != 0, png_truth(corpus, item_id))
    with pytest.raises(ValueError, match="set data.manifest"):
        SegmentationData(root=str(corpus), label_volumes="truth/volumes/seg.csv")


# ---------------------------------------------------------------------------------------------- hand-made grids
@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """Three DICOM slices of 6 x 5 pixels, 1 mm apart along z, files in the order of positions 2, 0, 1; pixel
    (r, c) of the slice at z = k mm lies at LPS (c * 0.5, r * 0.8, k) (IOP 1,0,0,0,1,0; PixelSpacing 0.8, 0.5)."""
    root = tmp_path_factory.mktemp("hand")
    corpus = root / "corpus"
    tags = {"PatientID": "P", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "PixelSpacing": [0.8, 0.5]}
    for name, k in (("a", 2), ("b", 0), ("c", 1)):
        geometry = {"ImagePositionPatient": [0.0, 0.0, float(k)], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}
        write_dicom(corpus / "s" / f"{name}.dcm", np.zeros((6, 5), np.uint16), tags=tags | geometry)
    manifest, _ = scan_corpus(corpus, workers=1, progress=False)
    return corpus, manifest, root


def label_values() -> np.ndarray:
    """Distinct values: voxel (i, j, k) = 100 k + 10 j + i + 1, on a (5, 6, 3) grid."""
    i, j, k = np.meshgrid(np.arange(5), np.arange(6), np.arange(3), indexing="ij")
    return (100 * k + 10 * j + i + 1).astype(np.int16)


def write_list(root, label_name: str, images: str = "s") -> object:
    path = root / f"{label_name}.csv"
    path.write_text(f"label,images\n{label_name},{images}\n")
    return path


def hand_affine() -> np.ndarray:
    """RAS affine of voxel (i, j, k) -> LPS (0.5 i, 0.8 j, k): i along the image's columns, j along its rows."""
    return np.diag([-0.5, -0.8, 1.0, 1.0])  # RAS x = -LPS x, RAS y = -LPS y


def test_a_hand_made_nifti_maps_voxel_column_row_slice_to_pixel(hand):
    corpus, manifest, root = hand
    write_nifti(root / "ok.nii.gz", label_values(), hand_affine())
    labels = CorpusLabels(write_list(root, "ok.nii.gz"), corpus, manifest)
    values = label_values()
    for row, path in enumerate(manifest["path"]):
        k = {"s/a.dcm": 2, "s/b.dcm": 0, "s/c.dcm": 1}[path]
        assert np.array_equal(labels.mask(row), values[:, :, k].T)  # mask[r, c] = voxel (c, r, k)
    # the same labels stored with the first axis reversed (an LPS-stored file): the same masks
    flipped = hand_affine() @ np.array([[-1, 0, 0, 4], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    write_nifti(root / "flip.nii.gz", values[::-1].copy(), flipped)
    again = CorpusLabels(write_list(root, "flip.nii.gz"), corpus, manifest)
    assert all(np.array_equal(again.mask(r), labels.mask(r)) for r in range(3))
    # ... and with the slice axis stored second (voxel (i, a, b) at LPS (0.5 i, 0.8 b, a)): the same masks again
    swap = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    write_nifti(root / "swap.nii.gz", values.transpose(0, 2, 1).copy(), hand_affine() @ swap)
    swapped = CorpusLabels(write_list(root, "swap.nii.gz"), corpus, manifest)
    assert all(np.array_equal(swapped.mask(r), labels.mask(r)) for r in range(3))


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("same", np.diag([1.0, 1.0, 1.0, 1.0]), None),
        ("wide", np.diag([2.0, 1.0, 1.0, 1.0]), "spacing differs"),
        ("turned", np.array([[0.8, -0.6, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "orientation differs"),
        ("between", np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]], float), "no label slice at"),
        ("half_px", np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "in-plane grid"),
        ("above", np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], float), "no label slice at"),
    ],
)
def test_a_grid_that_does_not_match_is_refused_naming_the_file_and_reason(hand, name, change, reason):
    corpus, manifest, root = hand
    name = f"{name}.nii.gz"
    write_nifti(root / name, label_values(), hand_affine() @ change)
    if reason is None:
        CorpusLabels(write_list(root, name), corpus, manifest)
        return
    with pytest.raises(LabelGridMismatch, match=rf"{name}: {reason}.*\(s/[abc]\.dcm frame 0\)"):
        CorpusLabels(write_list(root, name), corpus, manifest)


def test_a_seg_frame_off_the_series_grid_is_refused_and_a_missing_frame_is_empty(sample, tmp_path):
    corpus, manifest, _ = sample
    seg = pydicom.dcmread(corpus / "truth" / "volumes" / "ct_series_000.seg.dcm")
    frames = seg.PerFrameFunctionalGroupsSequence
    z = float(frames[1].PlanePositionSequence[0].ImagePositionPatient[2])
    frames[1].PlanePositionSequence[0].ImagePositionPatient[2] = z + 1.25  # between two slices (2.5 mm apart)
    seg.save_as(tmp_path / "moved.seg.dcm")
    (tmp_path / "moved.csv").write_text("label,images\nmoved.seg.dcm,chest_ct/series_000\n")
    with pytest.raises(LabelGridMismatch, match=r"moved\.seg\.dcm: no image slice at the position of frame 2"):
        CorpusLabels(tmp_path / "moved.csv", corpus, manifest)
    # the frame left out instead (SEG objects may omit empty frames): that slice's mask is empty
    seg = pydicom.dcmread(corpus / "truth" / "volumes" / "ct_series_000.seg.dcm")
    pixels = seg.pixel_array
    kept = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = pydicom.sequence.Sequence(kept[:1] + kept[2:])
    seg.PixelData = pack_bits(np.delete(pixels, 1, axis=0))
    seg.NumberOfFrames = len(pixels) - 1
    seg.save_as(tmp_path / "fewer.seg.dcm")
    (tmp_path / "fewer.csv").write_text("label,images\nfewer.seg.dcm,chest_ct/series_000\n")
    labels = CorpusLabels(tmp_path / "fewer.csv", corpus, manifest)
    masks = {row: labels.mask(row) for row in labels.labels}
    empty = [row for row, mask in masks.items() if not mask.any()]
    assert len(empty) == 1
    assert png_truth(corpus, manifest["item_id"][empty[0]]).any()  # it had lungs: the frame was really dropped


def test_the_sample_label_volumes_sit_beside_the_truth_and_do_not_change_the_images(sample):
    corpus, _, _ = sample
    written = sorted(p.name for p in (corpus / "truth" / "volumes").iterdir())
    assert written == ["ct_series_000.nii.gz", "ct_series_000.seg.dcm", "nifti.csv", "seg.csv"]
    header = nib.Nifti1Image.from_bytes(gzip.decompress((corpus / "truth/volumes/ct_series_000.nii.gz").read_bytes()))
    assert header.shape == (64, 64, 4)


def test_a_nifti_label_volume_of_a_nifti_image_stored_another_way_gives_the_png_truth(sample, tmp_path):
    # the MR volume's own grid, its first axis stored reversed (x running left instead of right): the reader slices
    # the image in RAS+ order, so the label must be turned back by its affine, not read as stored
    corpus, manifest, _ = sample
    image = nib.load(str(corpus / "brain_mri" / "vol_000.nii.gz"))
    rows = [i for i, p in enumerate(manifest["path"]) if p == "brain_mri/vol_000.nii.gz"]
    frames = manifest["frame"].to_numpy()[rows]
    truth = np.stack([png_truth(corpus, manifest["item_id"][r]) for r in np.array(rows)[np.argsort(frames)]], -1)
    assert truth.any()  # the volume has a tumour somewhere: the test can fail
    flip = np.array([[-1, 0, 0, truth.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    write_nifti(tmp_path / "mr.nii.gz", truth[::-1].astype(np.uint8).copy(), image.affine @ flip)
    (tmp_path / "mr.csv").write_text("label,images\nmr.nii.gz,brain_mri/vol_000.nii.gz\n")
    labels = CorpusLabels(tmp_path / "mr.csv", corpus, manifest)
    for row in rows:
        assert np.array_equal(labels.mask(row) != 0, png_truth(corpus, manifest["item_id"][row]))


def test_the_commands_refuse_a_mismatched_grid_in_one_line_before_writing(hand, tmp_path, capsys):
    corpus, manifest, root = hand
    shifted = hand_affine() @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]], float)
    write_nifti(root / "shifted.nii.gz", label_values(), shifted)
    listing = write_list(root, "shifted.nii.gz")
    argv = ["--label-volumes", str(listing), "--cache", str(tmp_path / "x.zarr"), "--corpus", str(corpus)]
    assert import_main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shifted.nii.gz: no label slice at the image slice's position" in err
    assert not (tmp_path / "x.zarr").exists()
    write_nifti(root / "fits.nii.gz", label_values(), hand_affine())
    good = write_list(root, "fits.nii.gz")
    assert (
        import_main(["--label-volumes", str(good), "--cache", str(tmp_path / "y.zarr"), "--corpus", str(corpus)]) == 0
    )
    cli = ["eval", "--cache", str(tmp_path / "y.zarr"), "--corpus", str(corpus)]
    assert localize_main([*cli, "--label-volumes", str(good)]) == 0
    assert '"evaluated": 3' in capsys.readouterr().out  # the cache is the labels themselves: every slice scored
    assert localize_main([*cli, "--label-volumes", str(listing)]) == 2
    assert "shifted.nii.gz: no label slice" in capsys.readouterr().err
