#!/usr/bin/env bash
# Set up (idempotent) and run every test: units first, then real INN, real mounts, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
