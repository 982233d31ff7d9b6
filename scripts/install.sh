#!/usr/bin/env bash
# Create .venv and install Confide with its pinned dependencies (CPU, offline-capable afterwards).
# torch/torchvision are installed first, pinned, so pip takes the local builds instead of
# resolving a different multi-GB build through another package's requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CONFIDE_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# --no-compile: Python writes each module's bytecode when it is first imported, instead of pip
# compiling every file of torch and the rest up front (about 40 s of a 100 s install).
"$VENV/bin/python" -m pip install -q --no-compile "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q --no-compile -e ".[dev]"
echo "installed into $VENV (activate with: source $VENV/bin/activate)"
