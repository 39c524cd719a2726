#!/usr/bin/env bash
# Install (as scripts/setup.sh) and run the whole test suite, engine and browser tests
# included. The browser tests drive Debian's chromium; it is installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "the browser tests need chromium and chromedriver: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
. .venv/bin/activate
python -m pytest "$@"
