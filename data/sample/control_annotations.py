"""What the positive-control corpus writes beside its images: its split, the pretraining manifest and README.txt.

Pretraining must not see the test images, so the corpus names its pretraining items in a manifest of its own
(`pretrain/manifest.parquet`, the `data scan` format: every item of the train and val splits); the study imports
ROIs through it (`python -m localize import --masks truth --manifest ...`).
"""

from __future__ import annotations

import pandas as pd

from data.manifest import FAILURE_COLUMNS, MANIFEST_COLUMNS, write_manifest
from data.readers import infer_modality, source_format
from data.sample.control_shapes import SHAPE_CLASSES
from data.sample.spec import README_MARKER, SampleCorpus
from data.sample.textures import TEXTURE_CLASSES

CONTROL_SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.1), ("test", 0.3))
PRETRAIN_DIR = "pretrain"
PRETRAIN_MANIFEST = f"{PRETRAIN_DIR}/manifest.parquet"
PRETRAIN_SPLITS = ("train", "val")


def pretrain_manifest(corpus: SampleCorpus) -> pd.DataFrame:
    """The manifest rows (as `data scan` writes them) of the items pretraining may use: all but the test split."""
    rows = [
        (item.item_id, item.relpath, item.frame, infer_modality(item.relpath), *item.rendered.truth_hw.shape)
        + (source_format(corpus.root / item.relpath),)
        for item, split in zip(corpus.items, corpus.splits, strict=True)
        if split in PRETRAIN_SPLITS
    ]
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype({"frame": "int64", "height": "int64", "width": "int64"})
    return manifest.sort_values(["path", "frame"], kind="stable").reset_index(drop=True)


def write_pretrain_manifest(corpus: SampleCorpus) -> None:
    write_manifest(
        pretrain_manifest(corpus), pd.DataFrame(columns=list(FAILURE_COLUMNS)), corpus.root / PRETRAIN_MANIFEST
    )


def write_control_readme(corpus: SampleCorpus) -> None:
    (corpus.root / "README.txt").write_text(
        f"""{README_MARKER} (positive control)
{"=" * len(README_MARKER)}

Made by `python -m data sample --mode control` with n={corpus.n}, seed={corpus.seed}, size={corpus.size}.
A positive control for the masking study: the class of an image is decided only by the texture inside its
lesion ({", ".join(TEXTURE_CLASSES)}: gratings of one period at 1, 2, 3 or many orientations); the background
(ramp, large flat shapes, arcs, mottling, grain) is drawn without the class. No patient data.

  texture_lesions/img_XXXXX.png   8-bit grey PNG, {corpus.size}x{corpus.size}, modality OT
  truth/<item_id>.png             uint8 0/255: the lesion (exactly the pixels drawn from the lesion)
  labels.csv                      item_id,path,frame,modality,label,split (train/val/test 60/10/30 per class)
  {PRETRAIN_MANIFEST}      the pretraining items (train + val) as a `data scan` manifest
  coco/instances.json             one instance per image (category 'lesion')
"""
    )


def write_control_shapes_readme(corpus: SampleCorpus) -> None:
    (corpus.root / "README.txt").write_text(
        f"""{README_MARKER} (positive control, shape design)
{"=" * len(README_MARKER)}

Made by `python -m data sample --mode control_shapes` with n={corpus.n}, seed={corpus.seed}, size={corpus.size}.
A positive control for the masking study: the class of an image is decided only by the outline of its lesion
({", ".join(SHAPE_CLASSES)}; random place, size and rotation); the lesion's grey level and texture and the
smooth background (ramp, mottling) are drawn without the class. No patient data.

  texture_lesions/img_XXXXX.png   8-bit grey PNG, {corpus.size}x{corpus.size}, modality OT
  truth/<item_id>.png             uint8 0/255: the lesion (exactly the pixels drawn from the lesion)
  labels.csv                      item_id,path,frame,modality,label,split (train/val/test 60/10/30 per class)
  {PRETRAIN_MANIFEST}      the pretraining items (train + val) as a `data scan` manifest
  coco/instances.json             one instance per image (category 'lesion')
"""
    )
