"""COCO evaluation (pycocotools) of instance predictions: BoxAP and MaskAP with AP50 and AP75."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.cocoeval import COCOeval

# Our metric prefix for each pycocotools iou type; stats[0..2] are AP@[.50:.95], AP@.50, AP@.75 (all areas).
IOU_TYPES = {"bbox": "box", "segm": "mask"}


def predictions_to_coco(
    outputs: Iterable[dict[str, torch.Tensor]],
    image_ids: Iterable[int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """torchvision detection outputs (boxes xyxy, labels 1..K, scores, masks (N, 1, H, W) in [0, 1]) -> COCO results.

    Each result holds image_id, category_id (labels mapped back through `category_ids`), score, bbox (xywh) and,
    when the output has masks, segmentation (RLE of mask > mask_threshold).
    """
    results: list[dict] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu().numpy()
        labels = out["labels"].detach().cpu().numpy()
        scores = out["scores"].detach().float().cpu().numpy()
        rles = None
        if "masks" in out and len(boxes):
            masks_nhw = (out["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(masks_nhw.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            result = {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(labels[k]) - 1]),
                "score": float(scores[k]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
            if rles is not None:
                result["segmentation"] = rles[k]
            results.append(result)
    return results


def coco_evaluate(
    coco_gt, results: list[dict], image_ids: Sequence[int] | None = None, iou_types: Sequence[str] = ("bbox", "segm")
) -> dict[str, float]:
    """COCO AP of `results` against the ground truth `coco_gt` (a pycocotools COCO), over `image_ids`.

    Returns {box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75} for the requested iou types. No results
    at all gives AP 0 where ground truth exists; no ground truth gives NaN (pycocotools' -1).
    """
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    has_gt = any(not a.get("iscrowd", 0) for i in image_ids for a in coco_gt.imgToAnns.get(i, []))
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        prefix = IOU_TYPES[iou_type]
        typed = _results_for(iou_type, results)
        if not typed:
            value = 0.0 if has_gt else float("nan")
            metrics.update({f"{prefix}_ap": value, f"{prefix}_ap50": value, f"{prefix}_ap75": value})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
            coco_dt = coco_gt.loadRes(typed)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = [float("nan") if s < 0 else float(s) for s in evaluator.stats[:3]]
        metrics.update({f"{prefix}_ap": stats[0], f"{prefix}_ap50": stats[1], f"{prefix}_ap75": stats[2]})
    return metrics


def _results_for(iou_type: str, results: list[dict]) -> list[dict]:
    """Results prepared for one iou type: for 'segm', pycocotools must derive box and area from the mask."""
    if iou_type == "bbox":
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    typed = []
    for r in results:
        if "segmentation" not in r:
            continue
        typed.append({k: v for k, v in r.items() if k != "bbox"})
    return typed
