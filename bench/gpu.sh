#!/usr/bin/env bash
# One GPU run of every real-size figure: `bench/gpu.py` (its docstring says what it measures and writes).
#
#   bash bench/gpu.sh [gpu.py options]          e.g. --only loc_vitb_release,gpu_tests  --budget-s 300  --dry-run
#
# Python: $PY if set, else the project's .venv when it imports torch, else python3 (the device machine's image,
# which holds torch but not every package the parts need). When that Python lacks one of them, the wheels in
# $GPU_WHEELS (default work/gpu_wheels, made by `make bench-gpu-wheels` and carried to the device machine) are
# installed first into a folder put on PYTHONPATH, without an index or dependencies (that machine reaches no registry).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${GPU_WHEELS:-work/gpu_wheels}
NEEDED="import open_clip, segment_anything, zarr, pydicom, nibabel, jsonargparse"
if ! "$PY" -c "$NEEDED" 2>/dev/null && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${GPU_SITE:-/tmp/mwm-gpu-site}
  echo "[gpu.sh] installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
  # a failed install is reported, not fatal: summary.json then names the missing packages and each part's error
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || echo "[gpu.sh] installing the wheels failed; running anyway" >&2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu.py "$@"
