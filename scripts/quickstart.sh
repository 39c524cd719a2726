#!/usr/bin/env bash
# From a fresh clone: install, run all four long-context tasks on the embedded
# Gemma 3 270M, print the accuracy-by-length table and write the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh quickstart
. .venv/bin/activate
evalkit run configs/quickstart.yaml --out results/quickstart "$@"
evalkit report results/quickstart --out reports/quickstart
