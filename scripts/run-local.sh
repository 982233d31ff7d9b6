#!/usr/bin/env bash
# Run an experiment as a local multi-site simulation with Flower's own CLI (`flwr run .`).
#   scripts/run-local.sh                                  # the offline default (ResNet-18, digits, 3 sites)
#   scripts/run-local.sh simulations/configs/default_bert.yaml
#   scripts/run-local.sh simulations/configs/default.yaml "train.lr=0.01 strategy.rounds=5"
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
overrides = parse_config_args([sys.argv[2]]) if sys.argv[2].strip() else {}
print(config.load(sys.argv[1], overrides).data.num_sites)
PY
)
# The app's dependencies are already installed here: stop the SuperLink from building a
# fresh environment per run (it would try to download torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
exec flwr run . --stream --federation-config "num-supernodes=$SITES" \
  --run-config "experiment='$EXPERIMENT' $OVERRIDES"
