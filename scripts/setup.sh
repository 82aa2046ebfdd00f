#!/usr/bin/env bash
# One-time set-up into ./.venv. torch is installed first and pinned to the CPU wheel, so that no
# dependency pulls a CUDA build of several GB (for a GPU, install your CUDA torch into the venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
