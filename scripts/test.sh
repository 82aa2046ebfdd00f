#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint and import order (pyproject.toml [tool.ruff]); a finding fails the run before any test
.venv/bin/ruff check --no-cache .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
