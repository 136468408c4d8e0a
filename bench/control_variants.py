"""Pilot tool for issue 26 (docs/STUDY.md, "Pilots for a control in which pretraining learns"): writes the
positive-control corpus with its texture classes or grain changed, to measure whether a variant lets masked
pretraining beat a randomly initialised encoder before the generator itself is changed.

Variants (`--variant`): `angular` the corpus of `python -m data sample --mode control` unchanged; `orient45`
one grating per image at a class-specific orientation (0, 45, 90, 135 degrees, +-6 degrees); `orient15` the
same at 0, 15, 30, 45 degrees (+-2 degrees); `orient15_clean` as `orient15` without the background's and the
lesion's pixel grain (the only unpredictable content of a flat patch); `orient15_smooth` as `orient15_clean` over
a smooth background (the ramp and the low-frequency mottling only: no flat shapes, arcs or grain, so the background
is nearly free to reconstruct and the loss is spent on the lesion) with larger lesions (radius 22-30% of the side
instead of 14-22%); `angular_smooth` the generator's classes on that smooth background with those larger lesions.
`shapes_smooth`: the class is the lesion's outline (disc, square, triangle, cross; random rotation), the lesion
filled with a texture of a class-free kind, on that smooth background with those larger lesions (since made the
generator's `--mode control_shapes`, pixel for pixel); `shapes` the same outlines at the generator's lesion size over
its loud background.
Everything else (shapes, places,
levels, periods, splits, manifest) is the generator's, from the same seeds.

This is a throwaway measurement, not a corpus mode: it replaces `data.sample.textures._orientations`,
`data.sample.control.draw_background`, `draw_region` and `RADIUS_RANGE` inside this process only (the pipeline
never runs it).

    python bench/control_variants.py --variant orient15 --out work/pilots/corpus_fine
"""

# ruff: noqa: E402  (the sys.path fix below must run before the project imports)
from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import inspect

import cv2
import numpy as np

from data.sample import control, textures
from data.sample.corpus import write_sample_corpus

ORIENTATIONS_DEG = {"orient45": ((0, 45, 90, 135), 6.0), "orient15": ((0, 15, 30, 45), 2.0)}
GRAIN_LINE = "img += rng.uniform(0.01, 0.03) * rng.standard_normal(shape).astype(np.float32)"


def one_orientation_per_class(degrees: tuple[int, ...], jitter_deg: float):
    """`_orientations` replacement: a single grating at the class's angle (+- jitter), whatever the base angle."""
    angles = dict(zip(textures.TEXTURE_CLASSES, np.deg2rad(degrees), strict=True))

    def orientations(kind: str, base_rad: float, rng: np.random.Generator) -> np.ndarray:
        return np.array([angles[kind] + np.deg2rad(rng.uniform(-jitter_deg, jitter_deg))])

    return orientations


def without_grain() -> None:
    """The background without its last draw (the grain) and lesions with zero grain; earlier draws unchanged."""
    source = inspect.getsource(control.draw_background)
    if GRAIN_LINE not in source:
        raise RuntimeError("data.sample.control.draw_background changed: update bench/control_variants.py")
    namespace = dict(vars(control))
    exec(source.replace(GRAIN_LINE, "pass"), namespace)  # noqa: S102  (the generator's own source, one line out)
    control.draw_background = namespace["draw_background"]
    draw_region = control.draw_region

    def region_without_grain(rng: np.random.Generator, size: int):
        mask_hw, level, contrast, _grain = draw_region(rng, size)
        return mask_hw, level, contrast, 0.0

    control.draw_region = region_without_grain


def smooth_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The generator's ramp and mottling only (its first and last-but-one draws): no shapes, arcs or grain."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    img = rng.uniform(0.3, 0.6) + rng.uniform(0.2, 0.5) * (cols * np.cos(angle) + rows * np.sin(angle))
    img = img + rng.uniform(0.02, 0.06) * control.smooth_noise(rng, (size, size), size / 12)
    return np.clip(img, 0, 1).astype(np.float32)


SHAPE_VERTICES = {  # unit-circumradius outlines of the shape classes (x, y), before rotation
    "disc": np.stack(
        [np.cos(np.linspace(0, 2 * np.pi, 48, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False))],
        1,
    ),
    "square": np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) / np.sqrt(2),
    "triangle": np.stack([np.cos(np.arange(3) * 2 * np.pi / 3), np.sin(np.arange(3) * 2 * np.pi / 3)], 1),
    "cross": np.array(
        [
            [1, 0.33],
            [0.33, 0.33],
            [0.33, 1],
            [-0.33, 1],
            [-0.33, 0.33],
            [-1, 0.33],
            [-1, -0.33],
            [-0.33, -0.33],
            [-0.33, -1],
            [0.33, -1],
            [0.33, -0.33],
            [1, -0.33],
        ]
    )
    / np.hypot(1, 0.33),
}


def shape_lesion(region_rng: np.random.Generator, texture_rng: np.random.Generator, label: int, size: int):
    """`draw_lesion` replacement: the class is the lesion's outline (disc, square, triangle, cross; random
    rotation, radius, place, level), filled with a texture of a class-free kind (`shapes_*` variants)."""
    radius = region_rng.uniform(*control.RADIUS_RANGE) * size
    center = region_rng.uniform(radius + 2, size - radius - 2, 2)
    angle = region_rng.uniform(0, 2 * np.pi)
    level, contrast = float(region_rng.uniform(0.2, 0.8)), float(region_rng.uniform(0.06, 0.12))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    outline = SHAPE_VERTICES[tuple(SHAPE_VERTICES)[label]] @ rot.T * radius + center
    mask_hw = cv2.fillPoly(np.zeros((size, size), np.uint8), [np.round(outline).astype(np.int32)], 1).astype(bool)
    period = float(texture_rng.uniform(*control.PERIOD_RANGE_PX))
    kind = textures.TEXTURE_CLASSES[int(texture_rng.integers(len(textures.TEXTURE_CLASSES)))]
    texture_hw = textures.texture_field(kind, (size, size), period, texture_rng)
    return mask_hw, np.clip(level + contrast * texture_hw, 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    variants = [
        "angular",
        "orient45",
        "orient15",
        "orient15_clean",
        "orient15_smooth",
        "angular_smooth",
        "shapes_smooth",
        "shapes",
    ]
    parser.add_argument("--variant", required=True, choices=variants)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    orientation_set = args.variant.removesuffix("_clean").removesuffix("_smooth")
    if orientation_set in ORIENTATIONS_DEG:
        textures._orientations = one_orientation_per_class(*ORIENTATIONS_DEG[orientation_set])
    if args.variant.endswith(("_clean", "_smooth")):
        without_grain()
    if args.variant.endswith("_smooth"):
        control.draw_background = smooth_background
        control.RADIUS_RANGE = (0.22, 0.30)
    if args.variant.startswith("shapes"):
        control.draw_lesion = shape_lesion
    summary = write_sample_corpus(args.out, n=args.n, seed=args.seed, size=args.size, mode="control")
    print(f"{args.variant} control corpus in {summary.root}: {summary.items}")


if __name__ == "__main__":
    main()
