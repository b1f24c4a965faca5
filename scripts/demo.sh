#!/usr/bin/env bash
# Set up (idempotent) and run the main job against the local INN server: no provider
# account needed. For now: start the local server and prove a round trip with
# `usenetfs server test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export USENETFS_HOME="${USENETFS_HOME:-$PWD/.demo-home}"
exec .venv/bin/usenetfs server test --local "$@"
