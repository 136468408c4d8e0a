"""What every part of the sample generator shares: the modality spec, the rendered item, seeded generators."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.ids import make_item_id

README_MARKER = "MWM synthetic sample corpus"
SLICES_PER_GROUP = 4  # slices per NIfTI volume / per CT series (the last groups may hold fewer)


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality appears in the corpus: its folder, class names and COCO lesion category."""

    code: str  # 'MR' | 'CT' | 'XR', the manifest's modality code
    folder: str
    positive: str  # class name of items with >= 1 lesion; also the COCO category name
    negative: str
    category_id: int
    seed_code: int  # part of every random generator's seed: a modality's draws never depend on another's


@dataclass(frozen=True)
class Anatomy:
    """The ellipse a body part was drawn as (`shapes.ellipse`): centre, half-axes along rows / columns before the
    rotation, rotation. Not written anywhere; it tells the reports where a lesion lies in the patient."""

    center_rc: tuple[float, float]
    half_rc: tuple[float, float]
    angle_deg: float

    def axes(self, r: float, c: float) -> tuple[float, float]:
        """(r, c) in the ellipse's own axes, as fractions of its half-axes: (-1..1 along rows, -1..1 along cols)."""
        t = math.radians(self.angle_deg)
        dr, dc = r - self.center_rc[0], c - self.center_rc[1]
        u = dr * math.cos(t) - dc * math.sin(t)
        v = dr * math.sin(t) + dc * math.cos(t)
        return u / self.half_rc[0], v / self.half_rc[1]


@dataclass(frozen=True)
class Slice:
    """One rendered 2-D item before it is written: image, ROI truth and lesion instances."""

    image_hw: np.ndarray  # float32, modality units (MR arbitrary, CT HU, XR [0, 1])
    truth_hw: np.ndarray  # bool
    lesions: tuple[np.ndarray, ...]  # bool (H, W), one per instance, disjoint
    anatomy: Anatomy | None = None  # the head (MR), for the reports' location words


@dataclass(frozen=True)
class Item:
    """One 2-D item as written: file (corpus-relative), frame in it, modality and what was rendered."""

    relpath: str
    frame: int
    modality: ModalitySpec
    rendered: Slice = field(repr=False)
    label: str | None = None  # the class, for a task with classes of its own; None: the modality's by lesions
    stratum: int | None = None  # the split stratum within the modality; None: 0/1 = without/with lesions
    patient: str | None = None  # the synthetic patient when it spans several files (a CT series); None: the file

    @property
    def item_id(self) -> str:
        return make_item_id(self.relpath, self.frame)

    @property
    def positive(self) -> bool:
        return len(self.rendered.lesions) > 0

    @property
    def class_name(self) -> str:
        """Its label in labels.csv: `label`, or the modality's positive / negative class."""
        if self.label is not None:
            return self.label
        return self.modality.positive if self.positive else self.modality.negative

    @property
    def split_stratum(self) -> int:
        return int(self.positive) if self.stratum is None else self.stratum


@dataclass(frozen=True)
class ModalityMaker:
    """One modality of the corpus: `make_items(out, n, seed, size)` renders and writes its files under `out`,
    then yields exactly `n` items in a fixed order."""

    spec: ModalitySpec
    make_items: Callable[[Path, int, int, int], Iterator[Item]]


@dataclass(frozen=True)
class SampleCorpus:
    """The generated corpus, as the annotation writers see it: items in order, their splits, the arguments."""

    root: Path
    modalities: tuple[ModalitySpec, ...]
    items: list[Item]
    splits: list[str]
    n: int
    seed: int
    size: int
    report_share: float = 0.5  # share of each modality's non-test images with a report (data.sample.reports)


@dataclass(frozen=True)
class Annotation:
    """A file, or a folder ('name/'), written beside the images from the finished corpus; `data scan` skips it."""

    name: str
    write: Callable[[SampleCorpus], None]


def item_rng(seed: int, modality: ModalitySpec, kind: int, index: int) -> np.random.Generator:
    """Generator for one item (kind 0), one volume/series (kind 1), the lesion counts (2), a split stratum (3), the
    items with a report (4) or one report's phrasing (5): independent of the order of generation."""
    return np.random.default_rng([seed, modality.seed_code, kind, index])


def group_sizes(total: int, per_group: int) -> list[int]:
    """Split `total` slices into ceil(total / per_group) groups of near-equal size."""
    groups = -(-total // per_group)
    return [total // groups + (1 if g < total % groups else 0) for g in range(groups)]


def lesion_counts(n: int, seed: int, modality: ModalitySpec) -> list[int]:
    """0 lesions for n - n // 2 items, 1 or 2 (30 %) for the n // 2 positives; positions shuffled by the seed."""
    rng = item_rng(seed, modality, 2, 0)
    counts = np.zeros(n, int)
    positives = rng.permutation(n)[: n // 2]
    counts[positives] = np.where(rng.random(positives.size) < 0.3, 2, 1)
    return counts.tolist()
