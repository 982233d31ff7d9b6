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
# pip compiles every module's bytecode here, and that stays: where PYTHONDONTWRITEBYTECODE is set
# (as on the CI machines), a module pip left uncompiled is compiled again by every process that
# imports it (--no-compile saved 40 s of install and made the system tests 1.7x slower).
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "installed into $VENV (activate with: source $VENV/bin/activate)"
