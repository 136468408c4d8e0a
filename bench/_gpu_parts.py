"""What `bench/gpu.py` runs: each part's command at real size (GPU) and at tiny size (`--dry-run`, CPU), its time
budget, its headline figures and the issue's targets for them.

Planned GPU time (H100/H200; bf16 ~800 TFLOP/s on large matrix products, plain fp32 ~50, so ~30 sustained; each
figure below is an estimate from FLOPs, the budget is the part's timeout). Costs per image, release M2IB (10 steps x
10 noise copies, bottleneck after block 7 of 12): one ViT-B/16 block at 197 tokens is ~2.9 GFLOP forward; our loop
runs the 4-block suffix per step, forward + input gradient ~2x forward: 4 x 2.9 x 2 x 100 ~ 2.3 TFLOP per
image-prompt (the issue's "about 2"); the authors' loop runs the whole tower forward per step: ~4.7 TFLOP. Prompts
per image: 2.33 (MR 3, CT 2, XR 2). SAM image encoder at 1024 px: vit_b ~0.74 TFLOP, vit_h ~6 TFLOP.

  part               estimate  budget  what dominates
  loc_vitb_release     ~75 s   180 s   24 images x 2 rounds: authors' loop fp32 24 x (2.33 x 4.7 + 0.74) TFLOP / 30
                                        ~ 9 s, ours unbatched ~5 s, batched fp32 ~4.5 s (per round); warm-up, bf16 pass,
                                        stage pass ~10 s; writing + loading random BiomedCLIP/SAM ~20 s, corpus ~10 s
  pretrain_resnet50    ~30 s    75 s   ResNet-50 224 px batch 64 ~1.6 TFLOP per dense step (~25 ms bf16), MWM step
                                        ~2-3x that; 25 steps each + breakdown + loader corpus (~10 s) + 2 x 37 loader
                                        batches of 64
  maskedclip_vitb16    ~25 s    60 s   12 rounds of 4 kinds (~0.1-0.3 s each, batch 64) + building 2 x (ViT-B + BERT)
  gpu_tests            ~35 s    90 s   pytest collection + 3 bf16 Lightning steps + the saliency bf16 test
  loc_vitb_fast        ~45 s    75 s   16 images x 2 rounds, the authors' loop ~6 s per round dominates; setup ~30 s
  loc_vith_release     ~65 s   100 s   16 images x 1 round; the authors' loop + SAM vit_h fp32 16 x 11 / 30 ~ 6 s,
                                        fp32 pass ~6 s; writing a random vit_h (641M parameters, 2.5 GB) ~20 s
  total               ~275 s   (the global budget, 480 s by default, skips what no longer fits)

Order: the issue's headline figures first (localization with the release's defaults, pretraining step, MaskedCLIP
step), then the GPU-marked tests, then the variants (fast preset, SAM vit_h).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

OPS = {">=": lambda value, bound: value >= bound, "<=": lambda value, bound: value <= bound}


@dataclass(frozen=True)
class Target:
    """`value <op> bound`, e.g. Target(">=", 50)."""

    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"target op must be one of {sorted(OPS)}, got {self.op!r}")

    def met(self, value: float | None) -> bool | None:
        return None if value is None else bool(OPS[self.op](value, self.bound))

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """A key of the part's JSON reported in the summary, with its target if the issue sets one."""

    key: str
    target: Target | None = None


@dataclass(frozen=True)
class Part:
    """One benchmark: `python <args>` with the mode's arguments appended; writes `<name>.json`."""

    name: str
    what: str
    args: tuple[str, ...]  # after the python executable: a script (or -m module) and the arguments both modes share
    real: tuple[str, ...]  # appended at real size (GPU)
    dry: tuple[str, ...]  # appended for --dry-run (tiny, CPU)
    budget_s: float  # timeout at real size
    estimate_s: float  # planned GPU time (see the module docstring)
    figures: tuple[Figure, ...] = ()
    kind: Literal["json", "pytest"] = "json"
    dry_note: str = ""
    dry_budget_s: float = 240
    files: tuple[str, ...] = field(default=())  # pytest: the test files (found at run time)

    def argv(self, dry_run: bool) -> list[str]:
        return [*self.args, *(self.dry if dry_run else self.real), *self.files]


# Tiny sizes for the dry run: one thread (the CI machine has 2 shared cores), one round, a few images or steps.
_LOC_DRY = ("--size", "tiny", "--images", "3", "--batch-size", "3", "--repeats", "1", "--steps", "2", "--threads", "1")
_LOC_FIGURES = (
    Figure("batched_images_per_s", Target(">=", 50)),
    Figure("speedup_vs_naive", Target(">=", 5)),
    Figure("bf16_other_precision_images_per_s", Target(">=", 50)),
    Figure("naive_images_per_s"),
    Figure("bf16_roi_pixel_disagreement"),
    Figure("mask_agreement"),
)
_VARIANT_FIGURES = (  # no target: the targets are for the release's defaults with SAM vit_b
    Figure("batched_images_per_s"),
    Figure("bf16_other_precision_images_per_s"),
    Figure("speedup_vs_naive"),
    Figure("bf16_roi_pixel_disagreement"),
    Figure("mask_agreement"),
)


def gpu_test_files(repo: Path) -> tuple[str, ...]:
    """The test files holding a `@pytest.mark.gpu` test (only these are collected: the others need no GPU)."""
    marker = "@pytest.mark." + "gpu"  # split so that this file is not mistaken for a test file by a grep
    return tuple(
        str(p.relative_to(repo)) for p in sorted((repo / "tests").glob("test_*.py")) if marker in p.read_text()
    )


def default_parts(repo: Path) -> list[Part]:
    """The GPU run, most important first."""
    return [
        Part(
            "loc_vitb_release",
            "localization, BiomedCLIP ViT-B/16 + SAM vit_b, the release's M2IB and precision (fp32; bf16 pass beside)",
            ("bench/localize.py", "--preset", "release", "--precision", "fp32"),
            ("--size", "real", "--sam", "vit_b", "--images", "24", "--batch-size", "12", "--repeats", "2"),
            (*_LOC_DRY, "--bf16-on-cpu"),
            budget_s=180,
            estimate_s=75,
            figures=_LOC_FIGURES,
            dry_note="tiny stand-ins (96 px images, 2 M2IB steps); bf16 through CPU autocast",
        ),
        Part(
            "pretrain_resnet50",
            "MWM pretraining step vs dense supervised step, ResNet-50 at 224, batch 64, bf16, LAMB; data loader "
            "alone and feeding the step",
            ("bench/pretrain_step.py", "--breakdown", "--optimizer", "lamb"),
            (
                *("--backbone", "resnet50", "--size", "224", "--batch", "64", "--steps", "20", "--warmup", "5"),
                *("--threads", "8", "--loader-corpus", "8", "--corpus-copies", "16", "--loader-workers", "8"),
                *("--loader-batches", "20"),
            ),
            (
                *("--backbone", "resnet18", "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1"),
                *("--threads", "1", "--decoder-width", "32", "--loader-corpus", "3", "--corpus-px", "48"),
                *("--corpus-copies", "2", "--loader-workers", "1", "--loader-batches", "2"),
            ),
            budget_s=75,
            estimate_s=30,
            figures=(
                Figure("step_ratio_vs_dense", Target("<=", 1.3)),
                Figure("mask_share"),
                Figure("step_images_per_s"),
                Figure("dense_images_per_s"),
                Figure("loader_images_per_s"),
                Figure("fed_step_images_per_s"),
                Figure("fed_share_of_step"),
            ),
            dry_note="ResNet-18 at 32 px, batch 4, fp32; a 48 px sample corpus of 18 items",
        ),
        Part(
            "maskedclip_vitb16",
            "MaskedCLIP step vs MAE-style step, ViT-B/16 + BERT-base at 224, batch 64, bf16",
            ("bench/maskedclip_step.py",),
            ("--size", "vit-b16", "--steps", "10", "--warmup", "2", "--threads", "8"),
            ("--dry-run", "--threads", "1", "--batch", "4"),
            budget_s=60,
            estimate_s=25,
            figures=(
                Figure("step_ratio_vs_mim", Target("<=", 1.5)),
                Figure("images_per_s"),
                Figure("mim_images_per_s"),
                Figure("text_tower_share"),
                Figure("teacher_pass_share"),
            ),
            dry_note="the tiny preset (test_vit2 at 96 px), 1 step of each, fp32",
        ),
        Part(
            "gpu_tests",
            "the tests marked gpu (pytest -m gpu)",
            ("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"),
            (),
            (),
            budget_s=90,
            estimate_s=35,
            figures=(
                Figure("passed", Target(">=", 1)),
                Figure("failed", Target("<=", 0)),
                Figure("errors", Target("<=", 0)),
            ),
            kind="pytest",
            files=gpu_test_files(repo),
        ),
        Part(
            "loc_vitb_fast",
            "localization, SAM vit_b, the fast M2IB preset in bf16 (fp32 pass beside)",
            ("bench/localize.py", "--preset", "fast", "--precision", "bf16", "--no-stages"),
            ("--size", "real", "--sam", "vit_b", "--images", "16", "--batch-size", "16", "--repeats", "2"),
            (*_LOC_DRY, "--bf16-on-cpu", "--no-warmup"),
            budget_s=75,
            estimate_s=45,
            figures=_VARIANT_FIGURES,
            dry_note="tiny stand-ins; bf16 through CPU autocast",
        ),
        Part(
            "loc_vith_release",
            "localization, SAM vit_h architecture, the release's M2IB in bf16 (fp32 pass beside)",
            ("bench/localize.py", "--preset", "release", "--precision", "bf16", "--no-stages"),
            ("--size", "real", "--sam", "vit_h", "--images", "16", "--batch-size", "8", "--repeats", "1"),
            (*_LOC_DRY, "--bf16-on-cpu", "--no-warmup"),
            budget_s=100,
            estimate_s=65,
            figures=_VARIANT_FIGURES,
            dry_note="tiny stand-ins in place of SAM vit_h (a real vit_h needs a GPU); bf16 through CPU autocast",
        ),
        Part(
            "spark_reference",
            "our pretraining step (plain fp32, channels_last, bf16, both) vs SparK's own step, ResNet-50 at 224, batch "
            "64, AdamW; needs SparK's pretrain/ folder in $SPARK_DIR (else skipped)",
            ("bench/spark_reference.py", "--variants", "plain,channels_last,bf16,fast_cl"),
            (
                *("--backbone", "resnet50", "--size", "224", "--batch", "64", "--steps", "8", "--warmup", "3"),
                *("--threads", "8", "--device", "cuda"),
            ),
            (
                *("--backbone", "resnet18", "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "1"),
                *("--threads", "1", "--decoder-width", "32"),
            ),
            budget_s=75,
            estimate_s=45,
            figures=(
                Figure("speedup_fast_cl", Target(">=", 1.3)),
                Figure("speedup_plain"),
                Figure("speedup_channels_last"),
                Figure("speedup_bf16"),
            ),
            dry_note="ResNet-18 at 64 px, batch 2, fp32; skipped without $SPARK_DIR",
        ),
        Part(
            "m2ib_reference",
            "our release M2IB vs the authors' code (MedCLIP-SAMv2 scripts) on a toy-width depth-12 CLIP at 224 px; "
            "needs their saliency_maps/ folder in $M2IB_REF_DIR (else skipped)",
            ("bench/m2ib_reference.py",),
            ("--images", "8", "--width", "768", "--repeats", "2"),
            ("--images", "1", "--width", "16", "--depth", "4", "--layer", "2", "--steps", "2", "--repeats", "1"),
            budget_s=60,
            estimate_s=35,
            figures=(
                Figure("speedup_batched", Target(">=", 5)),
                Figure("speedup_per_image"),
                Figure("maps_equal"),
            ),
            dry_note="depth-4 width-16 CLIP, 2 steps; skipped without $M2IB_REF_DIR",
        ),
    ]
