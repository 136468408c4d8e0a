"""The study's YAML (configs/experiment/X.yaml) as typed, checked objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.arms import Arm, expand_arm
from study.rois import RoiSource

DEFAULT_TABLE_METRICS = {"classify": ("accuracy", "auroc"), "segment": ("dice",), "detect": ("box_ap", "mask_ap")}


class ExperimentError(RuntimeError):
    """A configuration error or a failed step (the message names its log file)."""


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
    """A study: the corpus, seeds, pretraining preset, ROI sources, arms, downstream runs and what to report."""

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
    jobs: int = 1  # (arm, seed) chains run side by side: on a small CPU, 2 one-thread runs beat one 2-thread run
    env: dict[str, str] = field(default_factory=dict)  # environment of every step, e.g. {OMP_NUM_THREADS: 1}

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
        rois = {name: RoiSource.from_dict(name, spec) for name, spec in (raw.get("rois") or {}).items()}
        default_rois = raw.get("default_rois") or next(iter(rois), None)
        arms = tuple(arm for spec in raw["arms"] for arm in expand_arm(spec, default_rois))
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for arm in arms:
            if arm.pretrains and arm.rois not in rois:
                raise ValueError(f"arm {arm.name}: ROI source {arm.rois!r} is not defined under 'rois' {sorted(rois)}")
        for source in rois.values():
            if source.kind == "shuffled" and source.from_source not in rois:
                raise ValueError(f"ROI source {source.name}: 'from: {source.from_source}' is not a defined source")
        by_name = {arm.name: arm for arm in arms}
        for arm in arms:
            if arm.matches is not None and getattr(by_name.get(arm.matches), "strategy", None) != "differentiated":
                raise ValueError(f"arm {arm.name}: 'match: {arm.matches}' is not a differentiated arm of this study")
        jobs = int(raw.get("jobs", 1))
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
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
            jobs=jobs,
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        )


def as_flags(args: dict[str, Any]) -> list[str]:
    """{'trainer.max_steps': 20} -> ['--trainer.max_steps', '20'] (lists and dicts as JSON)."""
    out = []
    for key, value in args.items():
        text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)
        out += [f"--{key}", text]
    return out
