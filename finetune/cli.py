"""LightningCLI for the fine-tuning tasks: `fit` trains, tests on the test split and writes one results JSON.

Extra top-level options (besides LightningCLI's model / data / trainer / seed_everything):
  --results_dir DIR                 where the results JSON (and task artifacts) go (default work/results/finetune)
  --train_fraction / --train-fraction F   fraction of the training split to use (linked to data.train_fraction)
`test` (with --ckpt_path) also writes a results JSON. classify / segment: `data.normalization` follows `model.init`
(an export's recorded mean / std, else ImageNet's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from finetune.backbone import pretrained_statistics
from finetune.results import RunResult, jsonable, write_results
from finetune.task import FinetuneData, FinetuneTask
from pretrain.portable import PortableSaveConfig


def default_precision() -> str:
    """bf16 autocast on a GPU that supports it, fp32 otherwise."""
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


class FinetuneCLI(LightningCLI):
    """LightningCLI for one task module + data module; see the module docstring for the extra options."""

    def __init__(
        self,
        model_class: type[FinetuneTask],
        datamodule_class: type[FinetuneData],
        args: list[str] | None = None,
        run: bool = True,
    ) -> None:
        self.last_results_path: Path | None = None
        super().__init__(
            model_class,
            datamodule_class,
            args=args,
            run=run,
            seed_everything_default=0,
            trainer_defaults={"precision": default_precision()},
            save_config_callback=PortableSaveConfig,  # config.yaml without absolute paths
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--results_dir",
            type=str,
            default="work/results/finetune",
            help="folder for the run's results JSON and artifacts",
        )
        parser.add_argument(
            "--train_fraction",
            "--train-fraction",
            type=float,
            default=1.0,
            help="fraction of the training split to use (seeded, stratified, >= 1 per class)",
        )
        parser.link_arguments("train_fraction", "data.train_fraction")
        parser.link_arguments("model.init", "data.init")  # an export's record of its pretraining's intensity rules
        self.link_task_arguments(parser)

    def link_task_arguments(self, parser: LightningArgumentParser) -> None:
        """Data -> model links (number of classes, class names) known once the data module has read its tables."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        if self.model_class.task in ("classify", "segment"):  # detection normalises inside Mask R-CNN
            # images normalised as the backbone was pretrained: an export's recorded statistics, else ImageNet's
            parser.link_arguments("model.init", "data.normalization", compute_fn=pretrained_statistics)
        if self.model_class.task == "classify":
            parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        if self.model_class.task == "detect":
            parser.link_arguments("data.category_ids", "model.category_ids", apply_on="instantiate")

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        callback = self.trainer.checkpoint_callback
        ckpt_path = "best" if callback is not None and getattr(callback, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        self.write_run_results()

    def after_test(self) -> None:
        self.write_run_results()

    def write_run_results(self) -> Path:
        """Write the results JSON of this run (test metrics of the model) and the task's artifacts."""
        model, data = self.model, self.datamodule
        config = self.config[self.subcommand] if self.subcommand else self.config
        report = model.load_report
        result = RunResult(
            task=model.task,
            backbone=model.backbone_name,
            init=report.init if report else "scratch",
            train_fraction=data.train_fraction,
            seed=int(config["seed_everything"]),
            metrics=dict(model.test_metrics_out),
            n_train=data.n_train,
            n_test=data.n_test,
            config=jsonable(config.as_dict()),
            init_source=report.source if report else None,
            init_sha256=report.sha256 if report else None,
            subset_seed=data.subset_seed,
            details=jsonable({**model.results_details(), "splits": data.split_record}),
        )
        out_dir = Path(config["results_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        result.details["artifacts"] = model.write_artifacts(out_dir, result.stem)
        self.last_results_path = write_results(result, out_dir)
        print(f"results: {self.last_results_path}")
        return self.last_results_path
