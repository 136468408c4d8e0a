"""A run that SIGTERM stopped exits with 143, not 0: Lightning ends it with a code-less SystemExit, and a scheduler or
`python -m study` would take the stopped run for a finished one (the study exported a 1000-step run's step-609
checkpoint and went on)."""

from __future__ import annotations

import warnings

from data.sample import write_sample_corpus
from localize.import_masks import import_masks
from pretrain.cli import main as pretrain_main
from pretrain.sigterm import SIGTERM_EXIT

CONFIG = "configs/pretrain/control_cpu.yaml"


def test_a_pretraining_stopped_by_sigterm_exits_143_and_a_finished_one_0(tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, n=8, seed=0, size=64, mode="control")
    cache = tmp_path / "gt.zarr"
    import_masks(corpus / "truth", cache, manifest_path=corpus / "pretrain" / "manifest.parquet", progress=False)
    argv = ["fit", "--config", CONFIG, "--data.corpus", str(corpus), "--data.cache", str(cache)]
    argv += ["--model.input_size", "64", "--data.batch_size", "4", "--data.stats_images", "4"]
    argv += ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stopped = pretrain_main(
            [*argv, "--trainer.default_root_dir", str(tmp_path / "stopped")]
            + ["--trainer.callbacks+=tests.ddp_probe.SigtermAtStep", "--trainer.callbacks.step", "1"]
        )
        finished = pretrain_main([*argv, "--trainer.default_root_dir", str(tmp_path / "finished")])
    assert SIGTERM_EXIT == 143 and stopped == 143
    assert finished == 0
