#!/usr/bin/env bash
# Run an experiment as a local multi-site simulation with Flower's own CLI (`flwr run .`).
#   scripts/run-local.sh                                  # the offline default (ResNet-18, digits, 3 sites)
#   scripts/run-local.sh simulations/configs/default_bert.yaml
#   scripts/run-local.sh simulations/configs/default.yaml "train.lr=0.01 strategy.rounds=5"
# Continue a stopped run (same experiment and overrides, plus the run's folder):
#   scripts/run-local.sh simulations/configs/default.yaml "train.lr=0.01 strategy.rounds=5 resume='runs/<...>.incomplete'"
# The number of simulated sites is read from the experiment (data.num_sites). Outputs land in this
# checkout's runs/ (or output_dir), whichever local SuperLink runs the job. CONFIDE_VERBOSE=1 keeps
# Flower's and Ray's own lines. Stop a run: flwr ls; flwr stop <run-id> (README, "Stop a run").
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/flwr ] && source .venv/bin/activate
EXPERIMENT="${1:-simulations/configs/default.yaml}"
OVERRIDES="${2:-}"
# Checked and completed before any Flower process starts (simulations/run_local.py): string values
# quoted for Flower's parser, experiment/output_dir/resume made absolute (the local SuperLink runs
# jobs from the folder it was started in, maybe another checkout; outputs land here all the same).
PREPARED=$(python -m simulations.run_local prepare "$EXPERIMENT" "$OVERRIDES")
SITES=$(sed -n 1p <<<"$PREPARED")
RUN_CONFIG=$(sed -n 2p <<<"$PREPARED")
# One line about a local SuperLink already running: shared by every local run; another user's is refused.
python -m simulations.run_local check .
# The app's dependencies are already installed here: stop the SuperLink from building a
# fresh environment per run (it would try to download torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# Flower's notices printed before Confide's code loads (its default federation size, how to resize
# it: this script sets it) and Ray's tip are left out; CONFIDE_VERBOSE=1 keeps every line.
NOISE='Since flwr 1\.32, default simulated SuperNodes|To change federation size, use|flwr federation simulation-config|Tip: In future versions of Ray|^[^a-zA-Z]*warnings\.warn\($'
quiet() {
  if [ "${CONFIDE_VERBOSE:-0}" = 1 ]; then cat; else grep --line-buffered -v -E "$NOISE" || [ $? -eq 1 ]; fi
}
FEDERATION="num-supernodes=$SITES"
# Flower's own verbose switch reaches its simulation process (which the SuperLink starts, not this
# shell); Confide's ServerApp then keeps every line too (common/logs.py).
[ "${CONFIDE_VERBOSE:-0}" = 1 ] && FEDERATION="$FEDERATION verbose=true"
# `flwr run --stream` exits 0 whatever became of the run; `confide submit` (simulations/submit.py)
# asks the SuperLink how it ended and exits 0 only for a completed run (1 failed or stopped, 2 none started).
python -m simulations.submit . --federation-config "$FEDERATION" --run-config "$RUN_CONFIG" 2>&1 | quiet
