#!/usr/bin/env bash
# Run an experiment as a local multi-site simulation with Flower's own CLI (`flwr run .`).
#   scripts/run-local.sh                                  # the offline default (ResNet-18, digits, 3 sites)
#   scripts/run-local.sh simulations/configs/default_bert.yaml
#   scripts/run-local.sh simulations/configs/default.yaml "train.lr=0.01 strategy.rounds=5"
# Continue a stopped run (same experiment and overrides, plus the run's folder):
#   scripts/run-local.sh simulations/configs/default.yaml "train.lr=0.01 strategy.rounds=5 resume='runs/<...>.incomplete'"
# The number of simulated sites is read from the experiment (data.num_sites).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/flwr ] && source .venv/bin/activate
EXPERIMENT="${1:-simulations/configs/default.yaml}"
OVERRIDES="${2:-}"
SITES=$(python - "$EXPERIMENT" "$OVERRIDES" <<'PY'
import sys
from flwr.common.config import parse_config_args  # the parser `flwr run --run-config` uses
from common import config
from common.errors import ConfideError
try:
    overrides = parse_config_args([sys.argv[2]]) if sys.argv[2].strip() else {}
    resume = str(overrides.pop(config.RESUME_KEY, "") or "")
    exp = config.load(sys.argv[1], overrides)
    if resume:  # the folder checked against the experiment before any Flower process starts
        from server.run import preflight
        preflight(exp, config.resolve_path(resume))
    print(exp.data.num_sites)
except ConfideError as exc:
    sys.exit(f"confide: {exc}")
except ValueError as exc:  # Flower's parser: a malformed "key=value" list
    sys.exit(f"confide: overrides {sys.argv[2]!r} are not 'key=value' pairs: {exc}")
PY
)
# The app's dependencies are already installed here: stop the SuperLink from building a
# fresh environment per run (it would try to download torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
flwr run . --stream --federation-config "num-supernodes=$SITES" \
  --run-config "experiment='$EXPERIMENT' $OVERRIDES" 2>&1 | tee "$LOG"
# `flwr run --stream` exits 0 whatever became of the run: ask the SuperLink how it finished.
RUN_ID=$(grep -oE 'started run [0-9]+' "$LOG" | tail -1 | grep -oE '[0-9]+$' || true)
if [ -z "$RUN_ID" ]; then
  echo "run-local: flwr run did not start a run (see above)" >&2
  exit 1
fi
STATUS=$(flwr ls --run-id "$RUN_ID" --format json | python -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["status"])')
if [ "$STATUS" != "finished:completed" ]; then
  echo "run-local: run $RUN_ID ended as $STATUS" >&2
  exit 1
fi
