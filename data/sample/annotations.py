"""What is written beside the images from the finished items: splits, labels.csv, COCO instances, README.txt."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence

import cv2
import numpy as np

from data.sample.spec import README_MARKER, SLICES_PER_GROUP, Item, SampleCorpus
from data.sample.writers import write_bytes
from data.sample.xr import xray_shape
from data.splits import assign_group_splits

SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
LABELS_CSV = "labels.csv"
COCO_JSON = "coco/instances.json"
README = "README.txt"


def assign_splits(
    items: Sequence[Item], seed: int, fractions: Sequence[tuple[str, float]] = SPLIT_FRACTIONS
) -> list[str]:
    """Whole patients per split: a CT series' files, a NIfTI volume's or a multi-frame DICOM's slices together (the
    item's `patient`, else its file), stratified by (modality, label) over patients, cut by `fractions` (60/20/20)
    with the project's one split function, `data.splits.assign_group_splits`."""
    shares = dict(fractions)
    splits = assign_group_splits(
        [item.patient or item.relpath for item in items],
        seed=seed,
        val_share=shares.get("val", 0.0),
        test_share=shares.get("test", 0.0),
        strata=[f"{item.modality.code}/{item.split_stratum}" for item in items],
    )
    return splits.tolist()


def _polygons(mask_hw: np.ndarray) -> list[list[float]]:
    """Outer contours as COCO polygons [x0, y0, x1, y1, ...] (pixel centres); the box outline for sliver masks."""
    contours, _ = cv2.findContours(mask_hw.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]
    if not polygons:
        x, y, w, h = cv2.boundingRect(mask_hw.astype(np.uint8))
        polygons = [
            [
                float(x),
                float(y),
                float(x + w - 1),
                float(y),
                float(x + w - 1),
                float(y + h - 1),
                float(x),
                float(y + h - 1),
            ]
        ]
    return polygons


def write_labels(corpus: SampleCorpus) -> None:
    """labels.csv: item_id,path,frame,modality,label,split; one row per item in generation order."""
    with (corpus.root / LABELS_CSV).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["item_id", "path", "frame", "modality", "label", "split"])
        for item, split in zip(corpus.items, corpus.splits, strict=True):
            writer.writerow([item.item_id, item.relpath, item.frame, item.modality.code, item.class_name, split])


def write_coco(corpus: SampleCorpus) -> None:
    """coco/instances.json: one image per item, one annotation per lesion, one category per modality."""
    write_bytes(corpus.root / COCO_JSON, json.dumps(_coco(corpus)).encode())


def write_readme(corpus: SampleCorpus) -> None:
    (corpus.root / README).write_text(_readme(corpus.n, corpus.seed, corpus.size))


def _coco(corpus: SampleCorpus) -> dict:
    images, annotations = [], []
    for image_id, item in enumerate(corpus.items, start=1):
        h, w = item.rendered.truth_hw.shape
        images.append(
            {
                "id": image_id,
                "file_name": item.relpath,
                "height": h,
                "width": w,
                "frame": item.frame,
                "item_id": item.item_id,
                "modality": item.modality.code,
            }
        )
        for lesion in item.rendered.lesions:
            x, y, bw, bh = cv2.boundingRect(lesion.astype(np.uint8))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": item.modality.category_id,
                    "bbox": [x, y, bw, bh],
                    "area": int(lesion.sum()),
                    "iscrowd": 0,
                    "segmentation": _polygons(lesion),
                }
            )
    categories = [{"id": m.category_id, "name": m.positive, "supercategory": "lesion"} for m in corpus.modalities]
    info = {"description": f"{README_MARKER} (synthetic, no patient data)", "version": "1"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _readme(n: int, seed: int, size: int) -> str:
    # The text still names data/sample.py (now data/sample/): it is part of the byte-identical output.
    h, w = xray_shape(size)
    return f"""{README_MARKER}
{"=" * len(README_MARKER)}

Synthetic images made by `python -m data sample` (data/sample.py) with n={n}, seed={seed}, size={size}.
No patient data: every image is drawn from simple shapes and noise. The DICOM patient/study tags hold fake but
PHI-like values ('DOE^JOHN^SYNTHETIC', 'MRN...', one patient per CT series) so that tools which must drop such
tags have something to drop.
The same arguments always give byte-identical files.

Layout ({n} 2-D items per modality):
  brain_mri/vol_XXX.nii.gz            int16 NIfTI, {size}x{size}x(<= {SLICES_PER_GROUP}) voxels of 1 mm, RAS affine.
                                      Item (path, k) is the slice np.asarray(img.dataobj)[:, :, k], not transposed.
  chest_ct/series_XXX/slice_XXX.dcm   single-frame CT ({size}x{size}), uint16 stored values,
                                      HU = stored * RescaleSlope + RescaleIntercept (-1024; odd series use slope 0.5)
                                      Slice order: ImagePositionPatient along the normal (not the file names).
  chest_ct/scout_000.dcm, derived_000.dcm, screenshot_000.dcm: a localizer, a derived image and a secondary
                                      capture with burned-in annotation, excluded by `data scan` (not items)
  chest_ct/multiframe_000.dcm         Enhanced CT, several frames, int16; rescale in
                                      SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
  chest_xray/cxr_XXX.png              16-bit grey PNG, {h}x{w} (H x W)
  truth/<item_id>.png                 uint8 0/255 mask at the item's size: the tumour (MR; empty when none),
                                      the lungs (CT, X-ray). Masks, not images: skip this folder when scanning.
  labels.csv                          item_id,path,frame,modality,label,split
                                      labels: tumor/no_tumor (MR), nodule/no_nodule (CT), opacity/normal (XR)
  coco/instances.json                 COCO instances, one annotation per lesion (categories tumor, nodule, opacity);
                                      images carry file_name (= path), frame and item_id
  reports.csv                         path,frame,report: a short synthetic report (modality, finding, lesion
                                      locations) for a share of the non-test images (data/sample/reports.py)

item_id = data.ids.make_item_id(path, frame); frame = slice index (NIfTI), frame index (multi-frame DICOM), else 0.
"""
