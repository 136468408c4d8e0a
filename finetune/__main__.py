"""`python -m finetune {classify,detect,segment} {fit,test,validate,predict} --config configs/finetune/X.yaml ...` and
`python -m finetune zeroshot --clip SPEC --prompts configs/zeroshot/X.yaml ...`."""

from __future__ import annotations

import importlib
import sys

from configs import resolve_config_args

# task -> (module, LightningModule class, LightningDataModule class)
TASKS = {
    "classify": ("finetune.classify", "ClassificationModule", "ClassificationData"),
    "detect": ("finetune.detect", "DetectionModule", "DetectionData"),
    "segment": ("finetune.segment", "SegmentationModule", "SegmentationData"),
}

USAGE = """usage: python -m finetune {classify,detect,segment} {fit,test} --config configs/finetune/X.yaml [options]
       python -m finetune zeroshot --clip local-dir:DIR --prompts configs/zeroshot/X.yaml [--root DIR ...]

  classify  image classification (SparK fine-tune or MAE linear probe): accuracy, macro AUROC / AUPRC / F1
  detect    Mask R-CNN + FPN on COCO data: BoxAP, MaskAP (AP, AP50, AP75); convolutional backbones only
  segment   UNet decoder on the backbone's features: mean Dice per image, pooled Dice, IoU
  zeroshot  an open_clip model classifies by prompt similarity, no training: accuracy, macro AUROC / AUPRC / F1

`fit` trains, tests on the test split and writes one results JSON to --results_dir.
Run `python -m finetune TASK fit --help` for every option."""


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    task, rest = argv[0], resolve_config_args(argv[1:])  # shipped configs from any folder
    if task == "zeroshot":  # an evaluation, not a Lightning run
        from finetune.zeroshot import main as zeroshot_main

        return zeroshot_main(rest)
    if task not in TASKS:
        print(f"unknown task {task!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module_name, model_name, data_name = TASKS[task]
    module = importlib.import_module(module_name)
    from finetune.cli import FinetuneCLI
    from pretrain.sigterm import exit_code

    if from_command_line:  # LightningCLI reads sys.argv itself; its usage line then names the task
        sys.argv = [f"python -m finetune {task}", *rest]
    model, data = getattr(module, model_name), getattr(module, data_name)
    return exit_code(lambda: FinetuneCLI(model, data, args=None if from_command_line else rest))


if __name__ == "__main__":
    sys.exit(main())
