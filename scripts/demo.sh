#!/usr/bin/env bash
# Set up (if needed) and run the offline demo: NEMESIS organ maps and a feature PCA map on a
# generated CT phantom with the bundled demo weights -> pantheon-demo-output/ (volumes + preview.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pantheon demo --output "${1:-pantheon-demo-output}"
