#!/usr/bin/env bash
# evalkit gates itself (docs/ci.md): the smoke suite on the embedded Gemma 3 270M, run
# afresh (no response cache), gated against the committed baseline results/baselines/smoke.
# Exit 1 when a cell is significantly worse, lacks, or errored; the verdict, JUnit XML and
# markdown are left in $EVALKIT_GATE_OUT (default: a new temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/evalkit ] || bash scripts/setup.sh
. .venv/bin/activate
out="${EVALKIT_GATE_OUT:-$(mktemp -d)}"
evalkit run configs/smoke.yaml --no-cache --no-progress --out "$out/smoke"
evalkit gate --baseline results/baselines/smoke --candidate "$out/smoke" \
  --junit "$out/gate.xml" --markdown "$out/gate.md"
