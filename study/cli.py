"""`python -m study --config configs/experiment/X.yaml`: the masking-strategy study.

A grid of pretraining arms (no pretraining; SparK random masking at several ratios; MWM differentiated masking
at several (r_roi, r_bg) pairs with ROIs from one or more sources), each followed by the same downstream runs,
over several seeds. Every step runs as its own subprocess in its own folder under `out/` (study.layout) and is
skipped when it already finished, so an interrupted study resumes where it stopped. At the end every results
JSON is collected into `results.csv` / `results.md` and a plot of a downstream metric against the realised
overall masking ratio, one line per strategy (study.report).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from configs import resolve_config_args
from study.config import ExperimentConfig, ExperimentError
from study.report import write_report
from study.runner import ExperimentRunner


def main(argv: Sequence[str] | None = None) -> int:
    """0 when every step finished, 1 when some failed (the study still reports the rest), 2 on a bad config."""
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (configs/experiment/X.yaml)")
    parser.add_argument("--out", help="output folder (overrides the config's 'out')")
    parser.add_argument("--corpus", help="corpus folder (overrides the config's 'corpus')")
    parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds (e.g. a 1-seed pilot: --seeds 0)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args(resolve_config_args(sys.argv[1:] if argv is None else argv))
    try:
        config = ExperimentConfig.load(args.config, {"out": args.out, "corpus": args.corpus, "seeds": args.seeds})
        if args.report_only:
            for kind, path in write_report(config).items():
                print(f"{kind}: {path}")
            return 0
        summary = ExperimentRunner(config).run()
    except (ExperimentError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
