"""One results JSON per fine-tuning run, in a documented format that other tooling collects.

File: ``<results_dir>/<task>-<backbone>-<init>-f<train_fraction>-s<seed>-<UTC timestamp>.json`` holding one object:

    schema_version  int, 1
    task            'classify' | 'detect' | 'segment' | 'zeroshot'
    backbone        timm model name, e.g. 'resnet50' (zeroshot: the CLIP folder's or hub repository's name)
    init            'scratch' | 'imagenet' | 'pretrained' (an exported backbone)
    init_source     weights file the run started from (null for scratch)
    init_sha256     first 16 hex digits of that file's SHA-256 (null for scratch)
    train_fraction  fraction of the training split used (label-efficiency studies), 0 < f <= 1
    seed            the run's seed (seed_everything)
    subset_seed     the seed of the train-fraction subset
    metrics         {name: float} on the test split; per task:
                      classify: accuracy, auroc, auprc, f1 (macro over classes, except accuracy: micro); with
                                an EMA (the fine-tune recipe) also ema_accuracy, ema_auroc, ema_auprc, ema_f1;
                                per series series_accuracy, series_auroc, series_auprc, series_f1 (each series'
                                slice probabilities averaged, its label its slices' most frequent; a 2-D image is
                                its own series; details.n_test_series counts them)
                      segment:  dice, iou (mean per image, nnU-Net's convention), dice_pooled, iou_pooled (over
                                all pixels of the split); foreground classes, each image at its own resolution
                      detect:   box_ap, box_ap50, box_ap75, mask_ap, mask_ap50, mask_ap75 (COCO evaluation)
                      zeroshot: accuracy, auroc, auprc, f1 as classify (no training: n_train 0; init_source is
                                the CLIP spec)
    n_train         training examples actually used (after train_fraction)
    n_test          test examples
    config          the full resolved run configuration (LightningCLI), as a mapping
    timestamp       ISO-8601 UTC time the file was written
    code_version    the code's version (data.provenance.code_version: package version + git commit)
    details         task-specific extras (class names, load report, artifact paths, ...) and `splits`:
                    {split: {patients, items}} of the splits used (train after train_fraction)

Non-finite metric values (e.g. AP with no ground truth) are written as null.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data.portable import portable
from data.provenance import code_version

SCHEMA_VERSION = 1
TASKS = ("classify", "detect", "segment", "zeroshot")


@dataclass
class RunResult:
    """The content of one results JSON (see the module docstring for each field)."""

    task: str
    backbone: str
    init: str
    train_fraction: float
    seed: int
    metrics: dict[str, float | None]
    n_train: int
    n_test: int
    config: dict[str, Any]
    init_source: str | None = None
    init_sha256: str | None = None
    subset_seed: int = 0
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    code_version: str = field(default_factory=lambda: code_version())
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        self.metrics = {k: _finite_or_none(v) for k, v in self.metrics.items()}

    @property
    def stem(self) -> str:
        """File name without suffix: task-backbone-init-f<fraction>-s<seed>-<timestamp>."""
        stamp = re.sub(r"[^0-9T]", "", self.timestamp.split("+")[0])
        name = f"{self.task}-{self.backbone}-{self.init}-f{self.train_fraction:g}-s{self.seed}-{stamp}"
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of a config-like object (paths and other objects become strings)."""
    return json.loads(json.dumps(obj, default=str))


def write_results(result: RunResult, out_dir: str | Path) -> Path:
    """Write `result` as `<out_dir>/<result.stem>.json` (never overwriting) and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.stem}.json"
    suffix = 1
    while path.exists():  # two runs in the same second
        path = out_dir / f"{result.stem}-{suffix}.json"
        suffix += 1
    payload = portable(jsonable(asdict(result)))  # no absolute path in a results JSON (docs/CORPUS.md)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_results(path: str | Path) -> RunResult:
    """Read one results JSON back; a clear error naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return RunResult(**data)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a finetune results file ({err})") from err


def collect_results(results_dir: str | Path) -> list[RunResult]:
    """All results JSON files under `results_dir` (recursively), sorted by timestamp."""
    runs = [read_results(p) for p in sorted(Path(results_dir).rglob("*.json"))]
    return sorted(runs, key=lambda r: r.timestamp)
