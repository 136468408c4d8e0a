"""The masking-strategy study: every phase run as a subprocess over a grid of arms and seeds, then a report.

cli.py (`python -m study`), config.py (the YAML), arms.py (arm kinds), rois.py (ROI sources), layout.py (where
each step lives under `out`, the done marker), runner.py (resumable steps), report.py (runs.csv and the report
sections: summary.py -> results.csv / results.md, plot.py -> the plot). No phase imports this package.
"""
