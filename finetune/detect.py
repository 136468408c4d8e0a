"""Detection + instance segmentation: torchvision's Mask R-CNN with an FPN on our backbone, COCO BoxAP / MaskAP.

`python -m finetune detect fit --config configs/finetune/detect_tiny.yaml` trains, evaluates the test split with
pycocotools and writes the results JSON. Data: COCO instances json (boxes + polygon or RLE masks) with images
under `root`; an image entry may carry 'frame' (the 2-D frame of a DICOM/NIfTI file) and 'modality', as the
sample corpus's coco/instances.json does. Plain COCO datasets with ordinary image files work the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR
from torch.utils.data import Dataset
from torchvision.transforms import v2

from data.ids import make_item_id
from data.manifest import read_manifest
from data.portable import portable
from data.splits import assign_group_splits, check_groups_disjoint, patient_groups
from finetune.coco_eval import coco_evaluate, predictions_to_coco
from finetune.data import (
    CocoInstances,
    collate_lists,
    load_coco,
    primary_category,
    stratified_subset,
    under_root,
    with_manifest_keys,
)
from finetune.layer_decay import detect_layer_id, detectron2_no_decay, layer_decay_groups, resnet_depths
from finetune.maskrcnn import D2_TEST_SIZE, D2_TRAIN_SIZES, Norm, build_mask_rcnn
from finetune.optim import make_optimizer
from finetune.task import FinetuneData, FinetuneTask

# detectron2 SOLVER.STEPS of SparK's / MWM's config (90k iterations in all), in optimizer steps
D2_MILESTONES = (60000, 80000)


class DetectionData(FinetuneData):
    """COCO instances split into train / val / test.

    root:          folder the images' file_name are relative to.
    ann_file:      COCO instances json (a relative path is looked up under `root` first).
    test_ann_file: optional separate test json (standard COCO train/val files); then every image of `ann_file`
                   is used for training, unless a split is given.
    split_csv:     optional CSV with a split column and item_id (matched to the images' 'item_id' field) or
                   path[, frame] (matched to file_name, frame); e.g. the sample corpus's labels.csv. Without it,
                   images' own 'split' fields are used, else a seeded split stratified by each image's most
                   frequent category.
    modalities:    keep only images whose 'modality' field is one of these.
    manifest:      the corpus's manifest (relative: under `root` first), for each image's patient; else an image's
                   own 'patient_key' field, else its file is its patient.
    Splits are by patient (`data.splits`): a given split (CSV or the images' fields) is refused if a patient is
    on two sides; a drawn one takes whole patients, stratified by their images' most frequent category.
    train_fraction: seeded subset of the training patients, stratified the same way (>= 1 per stratum).
    filter_empty:  leave training images without a (non-crowd) instance out, as detectron2 does
                   (DATALOADER.FILTER_EMPTY_ANNOTATIONS); after the subset, so it does not change which images
                   the fraction draws. Evaluation keeps every image.
    packed, init, intensity: a packed image store of the corpus to read images from, the model's init (linked by
                 the CLI) and the intensity rules; see `FinetuneData` (the rules follow the store / the export).
    input_channels: "2d" or "2.5d" (slices z-1, z, z+1 as the channels; needs `manifest`), as the backbone was
                 pretrained: see `FinetuneData`.
    """

    collate_fn = staticmethod(collate_lists)  # images of different sizes + per-image targets
    drop_last_train = False

    def __init__(
        self,
        root: str = "work/corpus",
        ann_file: str = "coco/instances.json",
        test_ann_file: str | None = None,
        split_csv: str | None = None,
        modalities: list[str] | None = None,
        manifest: str | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        augment: bool = True,
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        split_seed: int = 0,
        val_share: float = 0.2,
        test_share: float = 0.2,
        intensity: dict[str, Any] | None = None,
        packed: str | None = None,
        init: str | None = None,
        filter_empty: bool = True,
        input_channels: str = "2d",
    ) -> None:
        super().__init__(train_fraction, subset_seed, intensity, packed, init, input_channels)
        self.neighbours = self.slice_neighbours(Path(root), manifest)
        self.root = Path(root)
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.coco = load_coco(under_root(self.root, ann_file))
        self.test_coco = load_coco(under_root(self.root, test_ann_file)) if test_ann_file else self.coco
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        if test_ann_file and sorted(self.test_coco.getCatIds()) != self.category_ids:
            raise ValueError(f"{test_ann_file}: categories differ from {ann_file}'s")
        rows = None if manifest is None else read_manifest(under_root(self.root, manifest))
        images = self._image_table(self.coco, modalities, rows)
        splits = self._splits(images, split_csv, split_seed, val_share, 0.0 if test_ann_file else test_share)
        train = images[splits == "train"].reset_index(drop=True)
        keep = stratified_subset(train["stratum"], train_fraction, subset_seed, patient_groups(train))
        test = self._image_table(self.test_coco, modalities, rows) if test_ann_file else images[splits == "test"]
        chosen = {"train": train.iloc[keep], "val": images[splits == "val"], "test": test}
        if filter_empty:
            chosen["train"] = chosen["train"][[self._has_instance(self.coco, i) for i in chosen["train"]["id"]]]
        self.image_ids: dict[str, list[int]] = {name: rows_["id"].tolist() for name, rows_ in chosen.items()}
        self.record_splits({name: patient_groups(rows_) for name, rows_ in chosen.items()})
        if not self.image_ids["train"]:
            raise ValueError(f"{ann_file}: the training split is empty (filter_empty: {filter_empty})")

    @staticmethod
    def _has_instance(coco, image_id: int) -> bool:
        return any(not a.get("iscrowd", 0) for a in coco.imgToAnns.get(image_id, []))

    @staticmethod
    def _image_table(coco, modalities: list[str] | None, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
        rows = [
            {
                "id": i,
                "file_name": info["file_name"],
                "path": info["file_name"],
                "patient_key": info.get("patient_key", ""),
                "frame": int(info.get("frame", 0)),
                "item_id": info.get("item_id", ""),
                "modality": info.get("modality", ""),
                "split": info.get("split", ""),
                "stratum": primary_category(coco, i),
            }
            for i, info in sorted(coco.imgs.items())
        ]
        table = pd.DataFrame(rows)
        if modalities:
            table = table[table["modality"].isin(list(modalities))].reset_index(drop=True)
        if table.empty:
            raise ValueError(f"no COCO images (modalities {modalities})")
        if manifest is not None and "patient_key" in manifest.columns and not table["patient_key"].astype(bool).any():
            table = with_manifest_keys(table.drop(columns="patient_key"), manifest[["path", "frame", "patient_key"]])
        return table

    def _splits(
        self, images: pd.DataFrame, split_csv: str | None, seed: int, val_share: float, test_share: float
    ) -> np.ndarray:
        groups = patient_groups(images)
        if split_csv is not None:
            csv_path = under_root(self.root, split_csv)
            splits = self._splits_from_csv(images, csv_path)
            check_groups_disjoint(groups, splits, str(csv_path))
            return splits
        if images["split"].astype(bool).all():
            check_groups_disjoint(groups, images["split"], "the COCO images' split fields")
            return images["split"].to_numpy().astype(str)
        return assign_group_splits(
            groups, seed=seed, val_share=val_share, test_share=test_share, strata=images["stratum"].tolist()
        )

    @staticmethod
    def _splits_from_csv(images: pd.DataFrame, csv_path: Path) -> np.ndarray:
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: split CSV not found")
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        if "split" not in table.columns:
            raise ValueError(f"{csv_path}: no split column")
        if "item_id" not in table.columns:
            if "path" not in table.columns:
                raise ValueError(f"{csv_path}: needs an item_id or a path column to match COCO images")
            frames = table["frame"].astype(int) if "frame" in table.columns else [0] * len(table)
            table["item_id"] = [make_item_id(p, f) for p, f in zip(table["path"], frames, strict=True)]
        split_of = dict(zip(table["item_id"], table["split"], strict=True))
        keys = zip(images["item_id"], images["file_name"], images["frame"], strict=True)
        ids = [item or make_item_id(name, frame) for item, name, frame in keys]
        unknown = [i for i in ids if i not in split_of]
        if unknown:
            raise ValueError(f"{csv_path}: {len(unknown)} COCO image(s) have no split row (e.g. item {unknown[0]})")
        return np.array([split_of[i] for i in ids])

    @property
    def num_classes(self) -> int:
        """Object categories + 1 (background), as torchvision's detection models count them."""
        return len(self.category_ids) + 1

    def split_size(self, split: str) -> int:
        return len(self.image_ids[split])

    def evaluation_source(self, split: str) -> tuple[Any, list[int]]:
        """(COCO ground truth, image ids) that the predictions on `split` are evaluated against."""
        return (self.test_coco if split == "test" else self.coco), self.image_ids[split]

    def split_dataset(self, split: str) -> Dataset:
        transform = v2.RandomHorizontalFlip() if split == "train" and self.augment else None
        coco, ids = self.evaluation_source(split)
        return CocoInstances(self.root, coco, ids, transform, self.intensity, self.packed, self.neighbours)


class DetectionModule(FinetuneTask):
    """Mask R-CNN + FPN on the backbone (finetune.maskrcnn), fine-tuned as SparK's / MWM's detectron2 config does;
    COCO evaluation on val / test.

    num_classes:  categories + 1 (linked from the data); category_ids: the COCO ids of labels 1..K (linked).
    norm, box_head, trainable_layers, train_sizes, test_size, max_size: see finetune.maskrcnn.build_mask_rcnn
                  (defaults: trainable BatchNorm everywhere, 4conv1fc, nothing frozen, shorter side 480-896 in
                  training and 800 in evaluation, longer side <= 1333).
    optimizer:    'adamw' (SparK) | 'sgd' (momentum 0.9, detectron2's default); lr is absolute (detectron2's
                  BASE_LR, not scaled by the batch); weight decay on everything but normalisation layers.
    layer_decay:  detectron2 layer map of SparK (finetune.layer_decay.detect_layer_id): the stem trains at
                  lr x 0.6^6 for ResNet-50, FPN and heads at lr; ResNet backbones only (1 = off).
    schedule:     'multistep' (detectron2: linear warm-up over warmup_steps from warmup_factor x lr, then x gamma
                  at each of `milestones`, in optimizer steps) | 'cosine' (the shared warm-up + cosine schedule).
    COCO evaluation gathers predictions in this process: run evaluation on one device (the configs use devices: 1).
    maskrcnn_kwargs: further torchvision MaskRCNN arguments (e.g. rpn_post_nms_top_n_train, box_batch_size_per_image,
                  box_detections_per_img); fewer sampled RoIs make CPU runs fast.
    """

    task = "detect"

    def __init__(
        self,
        backbone: str = "resnet50",
        init: str = "scratch",
        num_classes: int = 2,
        category_ids: list[int] | None = None,
        norm: Norm = "bn",
        box_head: Literal["4conv1fc", "2fc"] = "4conv1fc",
        trainable_layers: int = 5,
        train_sizes: list[int] | None = None,
        test_size: int = D2_TEST_SIZE,
        max_size: int = 1333,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 2.5e-4,
        weight_decay: float = 1e-4,
        layer_decay: float = 0.6,
        schedule: Literal["multistep", "cosine"] = "multistep",
        warmup_steps: int = 1000,
        warmup_factor: float = 0.01,
        milestones: list[int] | None = None,
        gamma: float = 0.25,
        mask_threshold: float = 0.5,
        strict_load: bool = True,
        maskrcnn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone, init)
        self.save_hyperparameters()
        self.hparams.update(portable(dict(self.hparams)))  # no absolute path in checkpoints (docs/CORPUS.md)
        self.category_ids = list(category_ids) if category_ids else list(range(1, num_classes))
        if len(self.category_ids) != num_classes - 1:
            raise ValueError(f"{len(self.category_ids)} category ids for {num_classes - 1} object classes")
        self.model, self.load_report = build_mask_rcnn(
            backbone,
            init,
            num_classes,
            norm=norm,
            box_head=box_head,
            trainable_layers=trainable_layers,
            train_sizes=tuple(train_sizes) if train_sizes else D2_TRAIN_SIZES,
            test_size=test_size,
            max_size=max_size,
            strict=strict_load,
            **(maskrcnn_kwargs or {}),
        )
        depths = resnet_depths(self.model.backbone)
        if depths is None and layer_decay != 1:
            raise ValueError(f"layer_decay {layer_decay}: the detection layer map knows ResNets only, not {backbone}")
        self.layer_map = detect_layer_id(depths) if depths else ((lambda name: 0), 1)
        self.mask_threshold = mask_threshold
        self._results: list[dict] = []

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        layer_of, n = self.layer_map
        groups = layer_decay_groups(
            self.model,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            layer_decay=hp.layer_decay,
            layer_of=layer_of,
            num_layers=n,
            no_decay=detectron2_no_decay,
        )
        optimizer = make_optimizer(hp.optimizer, groups, hp.lr)
        if hp.schedule == "cosine":
            return self.warmup_cosine(
                optimizer, warmup_steps=hp.warmup_steps, warmup_start_ratio=hp.warmup_factor, min_lr_ratio=0.0
            )
        if hp.schedule != "multistep":
            raise ValueError(f"schedule must be 'multistep' or 'cosine', got {hp.schedule!r}")
        warmup = LinearLR(optimizer, start_factor=hp.warmup_factor, total_iters=max(1, hp.warmup_steps))
        steps = MultiStepLR(optimizer, milestones=list(hp.milestones or D2_MILESTONES), gamma=hp.gamma)
        schedule = ChainedScheduler([warmup, steps], optimizer=optimizer)  # the factors multiply, as in detectron2
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def _predict(self, batch: tuple[list[torch.Tensor], list[dict]]) -> None:
        images, targets = batch
        outputs = self.model(images)
        self._results.extend(
            predictions_to_coco(outputs, [t["image_id"] for t in targets], self.category_ids, self.mask_threshold)
        )

    def _evaluate(self, split: str) -> dict[str, float]:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "evaluation_source"):
            raise RuntimeError("detection evaluation needs the DetectionData module (its COCO ground truth)")
        coco_gt, image_ids = datamodule.evaluation_source(split)
        metrics = coco_evaluate(coco_gt, self._results, image_ids)
        self._results = []
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._results = []

    def validation_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        self._predict(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluate("val")
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._results = []

    def test_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        self._predict(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics_out = self._evaluate("test")
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics_out.items()})

    def results_details(self) -> dict[str, Any]:
        details = super().results_details()
        transform = self.model.transform
        details.update(
            category_ids=self.category_ids,
            train_sizes=list(transform.train_sizes),
            test_size=transform.test_size,
            max_size=transform.max_size,
        )
        return details
