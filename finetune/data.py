"""Downstream datasets: labelled images (CSV or ImageFolder), image + mask pairs, COCO instances; splits and subsets.

Pixels are read through `data.readers.load_image` (or from a packed image store of the corpus, `data.packed_store`),
so DICOM, NIfTI and 16-bit PNG get the same intensity handling as in pretraining; plain 8-bit PNG/JPEG work the same
way. Images come out as float32 (3, H, W) in [0, 1]
(grey repeated to three channels).

Tables (pandas) have one row per 2-D image with columns path (relative to the data root), frame (int), modality
(str, '' = infer from the file), plus label / split / mask_path / item_id where the task needs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from data.ids import make_item_id
from data.intensity import IntensityConfig
from data.label_volumes import CorpusLabels
from data.manifest import read_manifest
from data.masks import read_label_image, read_mask_image
from data.packed_store import ImageSize, PackedStore
from data.readers import load_image
from data.slice_neighbours import neighbour_rows
from data.splits import assign_group_splits, check_groups_disjoint, group_subset, patient_groups

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


def read_image_chw(
    root: str | Path,
    relpath: str,
    frame: int = 0,
    modality: str | None = None,
    intensity: IntensityConfig | None = None,
    packed: PackedStore | None = None,
    size: ImageSize = "native",
    neighbours: NeighbourSlices | None = None,
) -> torch.Tensor:
    """Frame `frame` of `root/relpath` as float32 (3, H, W) in [0, 1]; grey is repeated to three channels, or with
    `neighbours` (2.5-D input) the slices before, at and after it in its series (`NeighbourSlices`).

    With `packed`, the image comes from that packed store (normalised by its rules), at its stored `size` or
    resized back to the file's own ("native", so that masks and boxes line up)."""

    def pixels_of(path: str, index: int) -> np.ndarray:
        if packed is not None:
            return packed.image_at(path, int(index), modality or None, size)
        return load_image(root, path, int(index), modality or None, intensity)

    pixels = pixels_of(relpath, frame)
    if pixels.ndim == 2 and neighbours is not None:
        before, after = neighbours.around(relpath, int(frame))
        stack = [pixels if (p, f) == (relpath, int(frame)) else pixels_of(p, f) for p, f in (before, after)]
        # a neighbour of another size (a mixed series): the centre stands in, as at the series' ends
        before_hw, after_hw = (x if x.shape == pixels.shape else pixels for x in stack)
        pixels = np.stack([before_hw, pixels, after_hw], axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    x = x[None].expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
    return x.contiguous()


class NeighbourSlices:
    """(path, frame) of the slices before and after each image of a corpus manifest, in series order (2.5-D input,
    `data.slice_neighbours`: edge slices repeat, an image without a series is its own neighbour). An image the
    manifest lacks is its own neighbour too."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        manifest = manifest.reset_index(drop=True)
        keys = list(zip(manifest["path"].astype(str), manifest["frame"].astype(int), strict=True))
        rows = neighbour_rows(manifest)
        self._around = {key: (keys[r[0]], keys[r[2]]) for key, r in zip(keys, rows, strict=True)}

    def around(self, path: str, frame: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """((path, frame) of slice z-1, of slice z+1) of the image at slice z."""
        key = (str(path), int(frame))
        return self._around.get(key, (key, key))


def read_mask_hw(
    path: str | Path, num_classes: int = 2, volumes: CorpusLabels | None = None, row: int | None = None
) -> torch.Tensor:
    """A label mask image as int64 (H, W): binary (num_classes == 2) -> `data.masks.read_mask_image` (any non-zero
    colour is foreground), else grey values are class ids (`data.masks.read_label_image`). With `volumes`, the label
    of manifest row `row` from label volumes (`data.label_volumes`; `path` names the label file in errors)."""
    if volumes is not None:
        mask = volumes.mask(int(row))
        if num_classes == 2:
            return torch.from_numpy((mask != 0).astype(np.int64))
    elif num_classes == 2:
        return torch.from_numpy(read_mask_image(path).astype(np.int64))
    else:
        mask = read_label_image(path)
    if int(mask.max()) >= num_classes:
        raise ValueError(f"{path}: mask holds value {int(mask.max())}, but num_classes is {num_classes}")
    return torch.from_numpy(mask.astype(np.int64))


# --------------------------------------------------------------------------------------------------------------
# Tables


LABEL_KEYS = ("path", "item_id", "series_key", "patient_key")  # finest first: the level a labels CSV keys by
KEY_COLUMNS = ("patient_key", "study_key", "series_key")  # grouping keys a table may carry (manifest or CSV)
_CSV_TEXT = ("path", "label", "modality", "split", "item_id", "patient", *KEY_COLUMNS)


def read_label_csv(
    csv_path: str | Path,
    modalities: Sequence[str] | None = None,
    manifest: pd.DataFrame | str | Path | None = None,
) -> pd.DataFrame:
    """A CSV of labels as a table of labelled images (one row per 2-D image).

    The CSV keys its rows by one of LABEL_KEYS, the finest it has: `path` (with optional frame, default 0: one
    row per image, as before), `item_id`, `series_key` or `patient_key` (a label of a whole series or patient,
    which reaches every slice through the `manifest`, `data scan`'s, needed for the last three). Optional columns:
    modality, split, item_id, and grouping keys `patient_key` / `series_key` / `study_key` (pseudonyms), or
    `patient` (any patient code, hashed here so it reaches no output; it groups the rows of a CSV keyed by path,
    and cannot key labels: the manifest's keys are keyed hashes that only `data scan` can make). With a manifest,
    path-keyed rows take the manifest's grouping keys they lack. `modalities` keeps only rows of those modalities.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: label CSV not found (the sample corpus is written by `make sample`)")
    table = pd.read_csv(csv_path, dtype=dict.fromkeys(_CSV_TEXT, str), keep_default_na=False)
    keys = [k for k in LABEL_KEYS if k in table.columns]
    if "label" not in table.columns or not keys:
        need = "label" if "label" not in table.columns else " | ".join(LABEL_KEYS)
        raise ValueError(f"{csv_path}: missing column(s) ['{need}']; have {list(table.columns)}")
    if "patient" in table.columns:
        if "patient_key" in table.columns:
            raise ValueError(f"{csv_path}: give a patient or a patient_key column, not both")
        table["patient_key"] = [_pseudonym(p) if p else "" for p in table.pop("patient")]  # groups rows only
    if "split" in table.columns:
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise ValueError(f"{csv_path}: split values must be {SPLITS}, found {bad}")
    manifest = read_manifest(manifest) if isinstance(manifest, str | Path) else manifest
    if keys[0] == "path":
        table["frame"] = table["frame"].astype(int) if "frame" in table.columns else 0
        if manifest is not None:
            table = with_manifest_keys(table, manifest)
    else:
        table = _labels_to_slices(table, keys[0], manifest, csv_path)
    if "modality" not in table.columns:
        table["modality"] = ""
    if modalities:
        if not table["modality"].astype(bool).any():
            raise ValueError(f"{csv_path}: filtering by modality needs a modality column")
        table = table[table["modality"].isin(list(modalities))]
        if table.empty:
            raise ValueError(f"{csv_path}: no rows with modality in {list(modalities)}")
    return table.reset_index(drop=True)


def _pseudonym(value: str) -> str:
    return "csv:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def with_manifest_keys(table: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Path-keyed rows with the grouping keys (and modality, item_id) of their manifest row, where they lack them."""
    extra = [c for c in (*KEY_COLUMNS, "item_id", "modality") if c in manifest.columns and c not in table.columns]
    if not extra:
        return table
    rows = manifest[["path", "frame", *extra]].astype({"frame": int})
    return table.merge(rows, on=["path", "frame"], how="left", validate="many_to_one").fillna(dict.fromkeys(extra, ""))


def _labels_to_slices(labels: pd.DataFrame, key: str, manifest: pd.DataFrame | None, csv_path: Path) -> pd.DataFrame:
    """Labels of items, series or patients (`key`) as one row per manifest slice of each."""
    if manifest is None:
        raise ValueError(f"{csv_path}: labels keyed by {key} need the corpus manifest to reach their images (manifest)")
    if key not in manifest.columns:
        raise ValueError(f"{csv_path}: labels keyed by {key}, but the manifest has no {key} column (scan again)")
    clash = labels.groupby(key)["label"].nunique()
    if (clash > 1).any():
        raise ValueError(f"{csv_path}: {key} {str(clash.index[clash > 1][0])[:12]} has more than one label")
    labels = labels.drop_duplicates(key)
    slices = manifest.drop(columns=[c for c in labels.columns if c != key and c in manifest.columns])
    table = slices.merge(labels, on=key, how="inner").astype({"frame": int})
    unmatched = len(set(labels[key]) - set(slices[key]))
    if unmatched:
        raise ValueError(f"{csv_path}: {unmatched} label row(s) match no image of the manifest by {key}")
    return table.sort_values(["path", "frame"], kind="stable")


def under_root(root: str | Path, path: str | Path) -> Path:
    """A data file's path: a relative one under `root` first (where it exists there, or nowhere else)."""
    path, root = Path(path), Path(root)
    inside = not path.is_absolute() and ((root / path).is_file() or not path.is_file())
    return root / path if inside else path


def scan_image_folder(root: str | Path) -> pd.DataFrame:
    """An ImageFolder tree as a table: root/<class>/**/<image>, or root/{train,val,test}/<class>/**/<image>.

    Columns path (relative to root), frame (0), modality (''), label (the class folder), split (when the tree
    has split folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: image folder not found")
    split_dirs = [d for d in SPLITS if (root / d).is_dir()]
    rows = []
    for split in split_dirs or [None]:
        base = root / split if split else root
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
                    row = {
                        "path": path.relative_to(root).as_posix(),
                        "frame": 0,
                        "modality": "",
                        "label": class_dir.name,
                    }
                    if split:
                        row["split"] = split
                    rows.append(row)
    if not rows:
        raise ValueError(f"{root}: no images in class sub-folders (suffixes {IMAGE_SUFFIXES})")
    return pd.DataFrame(rows)


def series_groups(table: pd.DataFrame) -> np.ndarray:
    """The series of each row: its `series_key` where non-empty, else its file (a NIfTI volume or a multi-frame
    DICOM is one series; a 2-D image its own)."""
    paths = table["path"].astype(str).to_numpy()
    keys = table["series_key"].fillna("").astype(str).to_numpy() if "series_key" in table.columns else [""] * len(paths)
    return np.asarray([k if k else "path:" + p for k, p in zip(keys, paths, strict=True)], dtype=object)


def table_splits(
    table: pd.DataFrame,
    *,
    seed: int,
    val_share: float = 0.2,
    test_share: float = 0.2,
    strata: str | None = "label",
    what: str = "labels",
) -> pd.DataFrame:
    """`table` with a 'split' column by patient (`data.splits.patient_groups`): its own, refused when one patient
    is on two sides, else a seeded split of whole patients stratified by `strata` over patients (val_share and
    test_share are shares of patients)."""
    groups = patient_groups(table)
    if "split" in table.columns:
        check_groups_disjoint(groups, table["split"], what)
        return table
    column = None if strata is None else table[strata]
    table["split"] = assign_group_splits(groups, seed=seed, val_share=val_share, test_share=test_share, strata=column)
    return table


def stratified_subset(
    strata: Sequence[Hashable], fraction: float, seed: int, groups: Sequence[Hashable] | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, stratified `fraction` of the patients (`groups`; None: each item its own), at
    least one patient of every stratum, with all their items (`data.splits.group_subset`): the subset depends only
    on (groups, strata, fraction, seed), and a smaller fraction's subset is contained in a larger one's.
    """
    return group_subset(range(len(strata)) if groups is None else groups, strata, fraction, seed)


# --------------------------------------------------------------------------------------------------------------
# Datasets


Transform = Callable[..., object]


class LabelledImages(Dataset):
    """Rows of a label table -> (image float32 (3, H, W), class index int64); `transform` maps the image."""

    def __init__(
        self,
        root: str | Path,
        table: pd.DataFrame,
        class_names: Sequence[str],
        transform: Transform | None = None,
        intensity: IntensityConfig | None = None,
        packed: PackedStore | None = None,
        neighbours: NeighbourSlices | None = None,
    ) -> None:
        self.root, self.intensity, self.packed, self.neighbours = Path(root), intensity, packed, neighbours
        self.table = table.reset_index(drop=True)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(self.table["label"]) - set(self.class_index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {list(class_names)}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.table.iloc[i]
        # stored size from a packed store: the transform resizes it anyway
        image_chw = read_image_chw(
            self.root,
            row["path"],
            row["frame"],
            row["modality"],
            self.intensity,
            self.packed,
            "stored",
            self.neighbours,
        )
        image = tv_tensors.Image(image_chw)
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), torch.tensor(self.class_index[row["label"]])


class MaskedImages(Dataset):
    """Rows with path, frame, modality, mask_path -> (image float32 (3, H, W), mask int64 (H, W)).

    `transform` is a torchvision v2 transform called as `transform(image, mask)` so the mask moves with the image;
    with `transform_mask=False` it maps the image only and the mask keeps the image's original size (scoring at
    the image's own resolution).
    """

    def __init__(
        self,
        root: str | Path,
        table: pd.DataFrame,
        num_classes: int = 2,
        transform: Transform | None = None,
        intensity: IntensityConfig | None = None,
        transform_mask: bool = True,
        packed: PackedStore | None = None,
        neighbours: NeighbourSlices | None = None,
        volumes: CorpusLabels | None = None,
    ) -> None:
        self.root, self.intensity, self.packed, self.neighbours = Path(root), intensity, packed, neighbours
        self.volumes = volumes  # masks from label volumes: rows name their manifest row (`CorpusLabels.table`)
        self.table = table.reset_index(drop=True)
        self.num_classes = num_classes
        self.transform, self.transform_mask = transform, transform_mask

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.table.iloc[i]
        image_chw = read_image_chw(
            self.root,
            row["path"],
            row["frame"],
            row["modality"],
            self.intensity,
            self.packed,
            neighbours=self.neighbours,
        )
        mask_hw = read_mask_hw(row["mask_path"], self.num_classes, self.volumes, row.get("mask_row"))
        if tuple(mask_hw.shape) != tuple(image_chw.shape[-2:]):
            raise ValueError(
                f"{row['mask_path']}: mask is {tuple(mask_hw.shape)} but its image "
                f"{row['path']} (frame {row['frame']}) is {tuple(image_chw.shape[-2:])}"
            )
        image, mask = tv_tensors.Image(image_chw), tv_tensors.Mask(mask_hw[None])
        if self.transform is not None and self.transform_mask:
            image, mask = self.transform(image, mask)
        elif self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0].long()


def corpus_mask_table(
    corpus: str | Path,
    labels_csv: str | Path | None = None,
    modalities: Sequence[str] | None = None,
    manifest: str | Path | None = None,
) -> pd.DataFrame:
    """Image + truth-mask table of a corpus in the sample layout: labels.csv items with truth/<item_id>.png
    (`manifest`: see `read_label_csv`)."""
    corpus = Path(corpus)
    table = read_label_csv(labels_csv or corpus / "labels.csv", modalities, manifest)
    if "item_id" not in table.columns:
        table["item_id"] = [make_item_id(p, f) for p, f in zip(table["path"], table["frame"], strict=True)]
    table["mask_path"] = [str(corpus / "truth" / f"{item_id}.png") for item_id in table["item_id"]]
    absent = [p for p in table["mask_path"] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} truth mask(s) missing, e.g. {absent[0]}")
    return table


def folder_mask_table(images_dir: str | Path, masks_dir: str | Path) -> pd.DataFrame:
    """Image + mask table of two folders; a mask is matched to the image with the same file stem."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    masks = {_stem(p): p for p in masks_dir.iterdir() if p.is_file()} if masks_dir.is_dir() else {}
    if not masks:
        raise ValueError(f"{masks_dir}: no mask images")
    rows, unmatched = [], []
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)):
        mask = masks.get(_stem(path))
        if mask is None:
            unmatched.append(path.name)
            continue
        rows.append(
            {"path": path.relative_to(images_dir).as_posix(), "frame": 0, "modality": "", "mask_path": str(mask)}
        )
    if not rows:
        raise ValueError(f"{images_dir}: no image has a mask of the same name in {masks_dir}")
    if unmatched:
        raise ValueError(f"{images_dir}: {len(unmatched)} image(s) without a mask in {masks_dir}, e.g. {unmatched[0]}")
    return pd.DataFrame(rows)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def load_coco(ann_file: str | Path):
    """pycocotools COCO object of `ann_file` (quietly), with a clear error naming the file."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    try:
        dataset = json.loads(ann_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{ann_file}: cannot read COCO json ({err})") from err
    missing = {"images", "annotations", "categories"} - set(dataset)
    if missing:
        raise ValueError(f"{ann_file}: not a COCO instances file, missing {sorted(missing)}")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """COCO images -> (image float32 (3, H, W), target) for torchvision's Mask R-CNN.

    target: boxes (N, 4) float32 xyxy in pixels, labels (N,) int64 in 1..K (contiguous; 0 is background),
    masks (N, H, W) uint8, image_id (int). Crowd and degenerate (< 1 px) annotations are left out of training
    targets (COCO evaluation still sees them). An image entry's optional 'frame' and 'modality' fields say which
    2-D frame of a DICOM/NIfTI file it is. `transform(image, target)` is a torchvision v2 transform.
    """

    def __init__(
        self,
        root: str | Path,
        coco,
        image_ids: Sequence[int] | None = None,
        transform: Transform | None = None,
        intensity: IntensityConfig | None = None,
        packed: PackedStore | None = None,
        neighbours: NeighbourSlices | None = None,
    ) -> None:
        self.root, self.intensity, self.packed, self.neighbours = Path(root), intensity, packed, neighbours
        self.coco = coco
        self.image_ids = list(image_ids) if image_ids is not None else sorted(coco.getImgIds())
        self.category_ids = sorted(coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[i]
        info = self.coco.imgs[image_id]
        image_chw = read_image_chw(
            self.root,
            info["file_name"],
            info.get("frame", 0),
            info.get("modality"),
            self.intensity,
            self.packed,
            neighbours=self.neighbours,
        )
        h, w = image_chw.shape[-2:]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(
                f"{self.root / info['file_name']}: image is {h}x{w} but the COCO json says "
                f"{info['height']}x{info['width']} (image id {image_id})"
            )
        anns = [
            a
            for a in self.coco.imgToAnns.get(image_id, [])
            if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
        ]
        boxes = torch.tensor(
            [[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], dtype=torch.float32
        ).reshape(-1, 4)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": image_id,
        }
        image = tv_tensors.Image(image_chw)
        if self.transform is not None:
            image, target = self.transform(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), target


def primary_category(coco, image_id: int) -> int:
    """The most frequent category of an image's annotations (0 when it has none): a stratum for splits."""
    cats = [a["category_id"] for a in coco.imgToAnns.get(image_id, [])]
    return max(set(cats), key=lambda c: (cats.count(c), -c)) if cats else 0


def collate_lists(batch: list) -> tuple[list, list]:
    """Detection batches: (list of images, list of targets); images keep their own sizes."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def collate_stack_and_list(batch: list) -> tuple[torch.Tensor, list]:
    """Segmentation evaluation batches: (stacked images, list of masks at each image's own size)."""
    images, masks = zip(*batch, strict=True)
    return torch.stack(images), list(masks)
