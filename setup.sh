#!/usr/bin/env bash
# Set up AIGC Studio on a fresh Debian machine with Python 3.11. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"

# Debian packages: g++ for the C++ decoding loop (built once on first use; without it the
# studio decodes through Python, slower), Chromium and its driver for the browser tests,
# PostgreSQL for the tests that run the studio on a real PostgreSQL server (the tests start
# their own cluster; the Debian service itself is not needed).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 \
   || ! command -v g++ >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "==> Installing Debian packages (g++, chromium, chromium-driver, postgresql)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ chromium chromium-driver postgresql >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> Creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
echo "==> Installing torch (CPU build) first"
$PIP install -q "$(grep -E '^torch==' requirements.txt)"
echo "==> Installing the pinned dependencies"
$PIP install -q -r requirements.txt -r requirements-dev.txt
$PIP install -q --no-deps -r requirements-nodeps.txt
echo "==> Installing AIGC Studio itself (registers the built-in generator plugins)"
$PIP install -q --no-deps -e .
echo "==> Preparing the default language models (assembling and converting their GGUF files once, building the"
echo "    C++ decoding loop), so the first message answers in seconds; set AIGC_SKIP_PREPARE=1 to skip"
if [ -z "${AIGC_SKIP_PREPARE:-}" ]; then
  HF_HUB_OFFLINE=1 .venv/bin/python launch.py prepare
fi
echo
echo "Done. Start the studio:   .venv/bin/python launch.py"
echo "Run the tests:            ./test.sh"
