"""`python -m study --config configs/experiment/X.yaml`: the masking-strategy study.

A grid of pretraining arms (no pretraining; SparK random masking at several ratios; MWM differentiated masking
at several (r_roi, r_bg) pairs with ROIs from one or more sources), each followed by the same downstream runs,
over several seeds. Every step runs as its own subprocess (`python -m localize import|run`, `python -m
pretrain fit|export`, `python -m finetune TASK fit`), in its own folder under `out/`, and leaves a `done.json`
there when it finished; a step whose `done.json` exists is not run again, so an interrupted study resumes
where it stopped. At the end every results JSON is collected into `results.csv` / `results.md` and a plot of
a downstream metric against the realised overall masking ratio, one line per strategy (experiment_report).

Layout of `out/`::

    rois/<source>.zarr                         ROI caches (imported masks, shuffled control, localize, ...)
    runs/<arm>/s<seed>/pretrain/               Lightning run folder; done.json: backbone, realised ratio
    runs/<arm>/s<seed>/<downstream>/           results JSON of that downstream run; done.json
    runs.csv  results.csv  results.md  <plot>.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DONE_FILE = "done.json"
LOG_FILE = "log.txt"
ROI_KINDS = ("import", "shuffled", "localize", "cache")


class ExperimentError(RuntimeError):
    """A configuration error or a failed step (the message names its log file)."""


# ------------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class RoiSource:
    """Where an arm's ROIs come from: imported masks (`masks`, relative to the corpus), a shuffled control of
    another source (`from_source`, `seed`), `localize run` with a config, or an existing cache (`path`)."""

    name: str
    kind: str
    masks: str | None = None
    from_source: str | None = None
    seed: int = 0
    config: str | None = None
    path: str | None = None
    optional: bool = False  # skip the arms that use it when its input is missing (e.g. a corpus without masks)


@dataclass(frozen=True)
class Arm:
    """One pretraining condition. strategy: 'none' | 'random' | 'differentiated'."""

    name: str
    strategy: str
    mask_ratio: float | None = None
    r_roi: float | None = None
    r_bg: float | None = None
    rois: str | None = None

    @property
    def line(self) -> str:
        """The plot line this arm belongs to."""
        return self.strategy if self.strategy != "differentiated" else f"differentiated ({self.rois})"

    @property
    def expected_ratio(self) -> float | None:
        return self.mask_ratio if self.strategy == "random" else None

    def pretrain_args(self) -> list[str]:
        if self.strategy == "random":
            return ["--model.masking", "random", "--model.mask_ratio", str(self.mask_ratio)]
        return ["--model.masking", "differentiated", "--model.r_roi", str(self.r_roi), "--model.r_bg", str(self.r_bg)]


@dataclass(frozen=True)
class Downstream:
    """One downstream run per (arm, seed): `python -m finetune TASK fit --config CONFIG ARGS`; skipped when a
    path in `requires` (relative to the corpus) is missing."""

    name: str
    task: str
    config: str
    args: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    out: Path
    corpus: Path
    seeds: tuple[int, ...]
    pretrain_config: str
    pretrain_args: dict[str, Any]
    rois: dict[str, RoiSource]
    default_rois: str
    arms: tuple[Arm, ...]
    downstream: tuple[Downstream, ...]
    plot_downstream: str
    plot_metric: str
    table_metrics: dict[str, tuple[str, ...]]
    sample: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: experiment config not found")
        raw = yaml.safe_load(path.read_text()) or {}
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise ExperimentError(f"{path}: {e}") from e

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        for key in ("out", "corpus", "pretrain", "arms", "downstream"):
            if key not in raw:
                raise KeyError(f"missing key {key!r}")
        rois = {name: _roi_source(name, spec) for name, spec in (raw.get("rois") or {}).items()}
        default_rois = raw.get("default_rois") or next(iter(rois), None)
        arms = tuple(arm for spec in raw["arms"] for arm in _expand_arm(spec, default_rois))
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for arm in arms:
            if arm.strategy != "none" and arm.rois not in rois:
                raise ValueError(f"arm {arm.name}: ROI source {arm.rois!r} is not defined under 'rois' {sorted(rois)}")
        for source in rois.values():
            if source.kind == "shuffled" and source.from_source not in rois:
                raise ValueError(f"ROI source {source.name}: 'from: {source.from_source}' is not a defined source")
        downstream = tuple(
            Downstream(
                name=d["name"],
                task=d["task"],
                config=d["config"],
                args=dict(d.get("args") or {}),
                requires=tuple(d.get("requires") or ()),
            )
            for d in raw["downstream"]
        )
        plot = raw.get("plot") or {}
        pretrain = raw["pretrain"]
        return cls(
            name=str(raw.get("name", "experiment")),
            out=Path(raw["out"]),
            corpus=Path(raw["corpus"]),
            seeds=tuple(int(s) for s in raw.get("seeds", [0])),
            pretrain_config=pretrain["config"],
            pretrain_args=dict(pretrain.get("args") or {}),
            rois=rois,
            default_rois=default_rois or "",
            arms=arms,
            downstream=downstream,
            plot_downstream=plot.get("downstream", downstream[0].name if downstream else ""),
            plot_metric=plot.get("metric", "accuracy"),
            table_metrics={k: tuple(v) for k, v in (raw.get("table_metrics") or DEFAULT_TABLE_METRICS).items()},
            sample=raw.get("sample"),
        )


DEFAULT_TABLE_METRICS = {"classify": ("accuracy", "auroc"), "segment": ("dice",), "detect": ("box_ap", "mask_ap")}


def _roi_source(name: str, spec: dict[str, Any]) -> RoiSource:
    kind = spec.get("kind")
    if kind not in ROI_KINDS:
        raise ValueError(f"ROI source {name}: kind must be one of {ROI_KINDS}, got {kind!r}")
    return RoiSource(
        name=name,
        kind=kind,
        masks=spec.get("masks"),
        from_source=spec.get("from"),
        seed=int(spec.get("seed", 0)),
        config=spec.get("config"),
        path=spec.get("path"),
        optional=bool(spec.get("optional", False)),
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _expand_arm(spec: dict[str, Any], default_rois: str | None) -> list[Arm]:
    """One config entry -> arms: `mask_ratio` and `pairs` ([[r_roi, r_bg], ...]) may list several values."""
    strategy = spec.get("strategy")
    if strategy == "none":
        return [Arm(name=spec.get("name", "none"), strategy="none")]
    rois = spec.get("rois", default_rois)
    if strategy == "random":
        return [
            Arm(name=spec.get("name") or f"random-{r:g}", strategy="random", mask_ratio=float(r), rois=rois)
            for r in _as_list(spec["mask_ratio"])
        ]
    if strategy == "differentiated":
        pairs = spec.get("pairs") or [[spec["r_roi"], spec["r_bg"]]]
        return [
            Arm(
                name=spec.get("name") or f"mwm-{rois}-{a:g}-{b:g}",
                strategy="differentiated",
                r_roi=float(a),
                r_bg=float(b),
                rois=rois,
            )
            for a, b in pairs
        ]
    raise ValueError(f"arm strategy must be none | random | differentiated, got {strategy!r}")


def _flags(args: dict[str, Any]) -> list[str]:
    """{'trainer.max_steps': 20} -> ['--trainer.max_steps', '20'] (lists and dicts as JSON)."""
    out = []
    for key, value in args.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)
        out += [f"--{key}", text]
    return out


# ------------------------------------------------------------------------------------------ running
@dataclass
class RunSummary:
    launched: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def line(self) -> str:
        return (
            f"experiment: launched {self.launched} runs, {self.skipped} already finished, "
            f"{len(self.failed)} failed, {len(self.not_applicable)} not applicable; {self.wall_s:.0f} s"
        )


class ExperimentRunner:
    """Runs the steps of an ExperimentConfig that have no done.json yet, then writes the report."""

    def __init__(self, config: ExperimentConfig, *, python: str = sys.executable, echo: bool = True) -> None:
        self.config = config
        self.python = python
        self.echo = echo
        self.summary = RunSummary()
        self._caches: dict[str, Path | None] = {}

    # ---------------------------------------------------------------- steps
    def step(self, run_dir: Path, argv: list[str], collect) -> dict[str, Any] | None:
        """Run `python -m argv` in run_dir unless run_dir/done.json exists; `collect()` -> the done record."""
        done = run_dir / DONE_FILE
        if done.is_file():
            self.summary.skipped += 1
            return json.loads(done.read_text())
        if run_dir.exists():  # an unfinished earlier attempt: start it over
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        self.summary.launched += 1
        label = str(run_dir.relative_to(self.config.out))
        self._say(f"[{self.summary.launched}] {label}: python -m {' '.join(argv[:3])} ...")
        started = time.perf_counter()
        with open(run_dir / LOG_FILE, "w") as log:
            log.write("python -m " + " ".join(argv) + "\n\n")
            log.flush()
            code = subprocess.run([self.python, "-m", *argv], stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            tail = "\n    ".join((run_dir / LOG_FILE).read_text().splitlines()[-8:])
            self.summary.failed.append(label)
            self._say(f"    FAILED (exit {code}); log: {run_dir / LOG_FILE}\n    {tail}")
            return None
        try:
            record = {**collect(), "command": "python -m " + " ".join(argv), "wall_s": time.perf_counter() - started}
        except (ExperimentError, OSError, ValueError, KeyError) as e:
            self.summary.failed.append(label)
            self._say(f"    FAILED collecting its outputs: {e}")
            return None
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(done)
        self._say(f"    done in {record['wall_s']:.0f} s")
        return record

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    # ---------------------------------------------------------------- ROI sources
    def roi_cache(self, name: str) -> Path | None:
        """The cache of ROI source `name`, made (once) if needed; None when an optional input is missing."""
        if name not in self._caches:
            self._caches[name] = self._make_roi_cache(name)
        return self._caches[name]

    def _make_roi_cache(self, name: str) -> Path | None:
        source = self.config.rois[name]
        cfg = self.config
        if source.kind == "cache":
            return Path(source.path)
        cache = cfg.out / "rois" / name / "cache.zarr"
        if source.kind == "import":
            masks = cfg.corpus / source.masks
            if not masks.is_dir():
                if source.optional:
                    return None
                raise ExperimentError(f"ROI source {name}: masks folder {masks} not found")
            argv = [
                "localize",
                "import",
                "--masks",
                str(masks),
                "--cache",
                str(cache),
                "--corpus",
                str(cfg.corpus),
                "--no-progress",
            ]
        elif source.kind == "shuffled":
            origin = self.roi_cache(source.from_source)
            if origin is None:
                return None
            argv = [
                "localize",
                "import",
                "--shuffle-from",
                str(origin),
                "--cache",
                str(cache),
                "--seed",
                str(source.seed),
                "--no-progress",
            ]
        else:  # localize
            argv = ["localize", "run", "--corpus", str(cfg.corpus), "--cache", str(cache), "--no-progress"]
            argv += ["--config", source.config] if source.config else []
        record = self.step(cache.parent, argv, lambda: {"cache": str(cache)})
        return Path(record["cache"]) if record else None

    # ---------------------------------------------------------------- arms
    def pretrain(self, arm: Arm, seed: int, cache: Path) -> dict[str, Any] | None:
        run_dir = self.config.out / "runs" / arm.name / f"s{seed}" / "pretrain"
        argv = [
            "pretrain",
            "fit",
            "--config",
            self.config.pretrain_config,
            "--data.corpus",
            str(self.config.corpus),
            "--data.cache",
            str(cache),
            *arm.pretrain_args(),
            "--trainer.default_root_dir",
            str(run_dir),
            "--seed_everything",
            str(seed),
            *_flags(self.config.pretrain_args),
        ]

        def collect() -> dict[str, Any]:
            version = _newest_version(run_dir)
            backbone = run_dir / "backbone.pt"
            ckpt = version / "checkpoints" / "last.ckpt"
            export = subprocess.run(
                [self.python, "-m", "pretrain", "export", str(ckpt), "--out", str(backbone)],
                capture_output=True,
                text=True,
            )
            if export.returncode != 0:
                raise ExperimentError(f"export of {version} failed:\n{export.stderr[-2000:]}")
            return {"backbone": str(backbone), **mask_statistics(version / "metrics.csv")}

        return self.step(run_dir, argv, collect)

    def downstream(self, arm: Arm, seed: int, task: Downstream, init: str) -> dict[str, Any] | None:
        run_dir = self.config.out / "runs" / arm.name / f"s{seed}" / task.name
        results_dir = run_dir / "results"
        argv = [
            "finetune",
            task.task,
            "fit",
            "--config",
            task.config,
            "--data.root",
            str(self.config.corpus),
            "--model.init",
            init,
            "--seed_everything",
            str(seed),
            "--results_dir",
            str(results_dir),
            "--trainer.default_root_dir",
            str(run_dir / "lightning"),
            *_flags(task.args),
        ]

        def collect() -> dict[str, Any]:
            files = sorted(results_dir.glob("*.json"))
            if len(files) != 1:
                raise ExperimentError(f"{results_dir}: expected one results JSON, found {len(files)}")
            return {"results": str(files[0]), "metrics": json.loads(files[0].read_text())["metrics"]}

        return self.step(run_dir, argv, collect)

    # ---------------------------------------------------------------- the study
    def run(self) -> RunSummary:
        started = time.perf_counter()
        cfg = self.config
        cfg.out.mkdir(parents=True, exist_ok=True)
        self._ensure_corpus()
        tasks = [d for d in cfg.downstream if all((cfg.corpus / r).exists() for r in d.requires)]
        for d in cfg.downstream:
            if d not in tasks:
                self.summary.not_applicable.append(f"downstream {d.name}: the corpus lacks {list(d.requires)}")
        for arm in cfg.arms:
            cache = None
            if arm.strategy != "none":
                cache = self.roi_cache(arm.rois)
                if cache is None:
                    self.summary.not_applicable.append(f"arm {arm.name}: ROI source {arm.rois} has no input here")
                    continue
            for seed in cfg.seeds:
                init = "scratch"
                if cache is not None:
                    record = self.pretrain(arm, seed, cache)
                    if record is None:
                        continue
                    init = record["backbone"]
                for task in tasks:
                    self.downstream(arm, seed, task, init)
        for note in self.summary.not_applicable:
            self._say(f"skipped: {note}")
        from study.report import write_report

        outputs = write_report(cfg)
        for kind, path in outputs.items():
            self._say(f"{kind}: {path}")
        self.summary.wall_s = time.perf_counter() - started
        self._say(self.summary.line())
        return self.summary

    def _ensure_corpus(self) -> None:
        cfg = self.config
        if cfg.corpus.is_dir():
            return
        if not cfg.sample:
            raise ExperimentError(f"{cfg.corpus}: corpus not found (or give a 'sample:' section to make one)")
        argv = ["data", "sample", "--out", str(cfg.corpus), *[f"--{k}={v}" for k, v in cfg.sample.items()]]
        self._say(f"making the sample corpus: python -m {' '.join(argv)}")
        subprocess.run([self.python, "-m", *argv], check=True, capture_output=True)


def _newest_version(run_dir: Path) -> Path:
    versions = sorted((run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise ExperimentError(f"{run_dir}: no logs/version_N folder after pretraining")
    return versions[-1]


def mask_statistics(metrics_csv: Path) -> dict[str, float | None]:
    """Averages over the run's training steps of the masking statistics the pretrainer logs each step."""
    metrics = pd.read_csv(metrics_csv)
    out: dict[str, float | None] = {}
    for column, key in (
        ("mask/realised_ratio", "realised_ratio"),
        ("mask/expected_ratio", "expected_ratio"),
        ("mask/empty_roi_share", "empty_roi_share"),
    ):
        values = metrics[column].dropna() if column in metrics else pd.Series(dtype=float)
        out[key] = float(values.mean()) if len(values) else None
    out["steps"] = int(metrics["mask/realised_ratio"].notna().sum()) if "mask/realised_ratio" in metrics else 0
    return out


# ------------------------------------------------------------------------------------------ command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (configs/experiment/X.yaml)")
    parser.add_argument("--out", help="output folder (overrides the config's 'out')")
    parser.add_argument("--corpus", help="corpus folder (overrides the config's 'corpus')")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = ExperimentConfig.load(args.config, {"out": args.out, "corpus": args.corpus})
        if args.report_only:
            from study.report import write_report

            for kind, path in write_report(config).items():
                print(f"{kind}: {path}")
            return 0
        summary = ExperimentRunner(config).run()
    except (ExperimentError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
