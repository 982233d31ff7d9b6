#!/usr/bin/env bash
# Trial data for docker/compose.yaml: each site's train.npz and the coordinator's test.npz, from the
# offline default data set (scikit-learn's 8x8 digits; no download).
#   docker/make-trial-data.sh DEPLOY [--sites site-a,site-b]
# Writes DEPLOY/<site>/data/train.npz (an IID share each) and DEPLOY/coordinator/data/test.npz.
# Runs with the checkout's Python environment (.venv, or the active one).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
[ -x "$repo/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ] && python="$repo/.venv/bin/python"
[ $# -ge 1 ] || { echo "usage: docker/make-trial-data.sh DEPLOY [--sites site-a,site-b]" >&2; exit 2; }
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m simulations.trial_data "$@"
