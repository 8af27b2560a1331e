#!/usr/bin/env bash
# Run the whole test suite (unit, service, API, end-to-end on the default model, browser).
# Extra arguments go to pytest, e.g.  ./test.sh -m "not e2e"  or  ./test.sh tests/test_storage.py
set -euo pipefail
cd "$(dirname "$0")"
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ $# -eq 0 ]; then
  echo "==> ruff (lint)"
  .venv/bin/ruff check .
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
