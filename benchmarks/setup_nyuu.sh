#!/usr/bin/env bash
# Idempotent set-up of Nyuu (npm package `nyuu`), the poster benchmarks/bench_nyuu.py compares
# usenetfs with, and of its native yEnc addon (`yencode`, compiled by node-gyp). Run as root on
# Debian 12. Installs into benchmarks/.nyuu (gitignored), or into $NYUU_DIR; nothing global.
#
# npm 11.16 introduced approvals of dependencies' install scripts (advisory in 11.x, enforced
# from npm 12): `npm install-scripts approve yencode` (npm 11.19 here; 11.16 spelled it
# `npm approve-scripts`, later releases keep that as an alias) records the approval in
# package.json, and `npm rebuild yencode` then builds the addon. npm 9/10 (Debian's own npm) run
# install scripts anyway and lack both commands.
set -euo pipefail
cd "$(dirname "$0")"
DIR="${NYUU_DIR:-$PWD/.nyuu}"
NYUU_VERSION=0.4.0

# node and npm (Debian's, unless another node is already installed: nodesource's nodejs
# package brings its own npm and conflicts with Debian's), and what node-gyp compiles with.
missing=""
command -v node >/dev/null || missing="$missing nodejs"
command -v npm >/dev/null || missing="$missing npm"
for tool in g++ make python3; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "setup_nyuu: installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing
fi

mkdir -p "$DIR"
cd "$DIR"
# allowScripts lets npm versions that gate install scripts build yencode during the install
# itself; versions that do not know the field ignore it.
[ -f package.json ] || echo '{"private": true, "allowScripts": {"yencode": true}}' > package.json
if [ ! -f node_modules/nyuu/bin/nyuu.js ]; then
    npm install --no-fund --no-audit --loglevel=error "nyuu@$NYUU_VERSION"
fi

# Not built (an npm that skipped the script anyway, or a build removed since): approve and rebuild.
if ! node -e "require('yencode')" 2>/dev/null; then
    if npm install-scripts --help >/dev/null 2>&1; then
        npm install-scripts approve yencode
    elif npm approve-scripts --help >/dev/null 2>&1; then
        npm approve-scripts yencode
    fi
    npm rebuild yencode
fi
if ! node -e "require('yencode')" 2>/dev/null; then
    echo "setup_nyuu: the yencode addon did not build; see the npm output above" >&2
    exit 1
fi
echo "setup_nyuu: done: node $(node --version), npm $(npm --version), nyuu $NYUU_VERSION in $DIR"
