"""`mwm PHASE ...`: the installed command; each phase delegates to its `python -m` main, with the same options.

`--config` values are looked up among the shipped configs too (`configs.resolve_config`), so
`mwm localize run --config release.yaml ...` works from any folder after a non-editable install.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from configs import resolve_config_args

# phase -> (module with main(argv), arguments put before the user's, what it does); `python -m` equivalents below.
PHASES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "scan": ("data.__main__", ("scan",), "a corpus's manifest + its failures table (python -m data scan)"),
    "sample": ("data.__main__", ("sample",), "the synthetic sample corpus (python -m data sample)"),
    "pack": ("data.__main__", ("pack",), "the packed image store (python -m data pack)"),
    "localize": ("localize.__main__", (), "ROIs into the ROI cache: run, tune, eval, inspect ... (python -m localize)"),
    "smallmodels": ("smallmodels.train", (), "small CLIP + SAM trained on synthetic data (python -m smallmodels)"),
    "pretrain": ("pretrain.cli", (), "pretraining, export, MaskedCLIP (python -m pretrain)"),
    "finetune": ("finetune.__main__", (), "classify / detect / segment / zeroshot (python -m finetune)"),
    "study": ("study.cli", (), "the masking-strategy study (python -m study)"),
}


def usage() -> str:
    width = max(map(len, PHASES))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in PHASES.items()]
    return "usage: mwm PHASE [options]      (mwm PHASE --help for a phase's options; mwm --version)\n\n" + "\n".join(
        lines
    )


def phase_main(name: str) -> Callable[[list[str] | None], int | None]:
    """The `main(argv)` of a phase's module (imported on demand: `mwm scan` does not import torch's phases)."""
    return importlib.import_module(PHASES[name][0]).main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from data.provenance import code_version

        print(f"mwm {code_version()}")
        return 0
    name, rest = argv[0], resolve_config_args(argv[1:])
    if name not in PHASES:
        print(f"mwm: unknown phase {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    code = phase_main(name)([*PHASES[name][1], *rest])
    return int(code or 0)
