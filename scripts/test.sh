#!/usr/bin/env bash
# Install (as scripts/setup.sh) and run the whole test suite, engine tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
