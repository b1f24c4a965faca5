#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 / Ubuntu machine, run as root:
# system packages (FUSE, INN, test tools), then the Python package with its test extras.
# Safe to run again; each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# Build tools for pyfuse3 (compiled against libfuse3), INN, and what the tests drive
# (systemd: its systemd-analyze checks the units in contrib/).
PKGS="python3 python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev inn2 rsync attr openssl libglib2.0-bin procps util-linux systemd"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
    echo "setup: installing system packages:$missing"
    apt-get update -qq
    # inn2's postinst fails on a host whose hostname has no dot ("hostname does not resolve or
    # domain not set in inn.conf"). Pre-seed the domain so the first configure succeeds; if the
    # package was already half-configured, mend it and re-run dpkg --configure.
    if [ -f /etc/news/inn.conf ] && ! grep -q '^domain:' /etc/news/inn.conf; then
        echo "domain: localdomain" >> /etc/news/inn.conf
    fi
    if ! apt-get install -y -qq $missing; then
        if [ -f /etc/news/inn.conf ] && ! grep -q '^domain:' /etc/news/inn.conf; then
            echo "domain: localdomain" >> /etc/news/inn.conf
        fi
        dpkg --configure -a
        apt-get install -y -qq $missing
    fi
fi

# Also mend a half-configured inn2 left by an earlier failed run.
if dpkg-query -W -f='${Status}' inn2 2>/dev/null | grep -qv "install ok installed"; then
    grep -q '^domain:' /etc/news/inn.conf || echo "domain: localdomain" >> /etc/news/inn.conf
    dpkg --configure -a
fi

# A virtual environment of the project's own: Debian's Python refuses system-wide pip
# installs (PEP 668), and this keeps the project's pinned libraries apart from the system's.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# /sbin/mount.usenetfs, so `mount -t usenetfs` and fstab lines of type usenetfs work. It runs
# this checkout's .venv Python. The lock keeps it from changing under a running test of it.
if [ "$(id -u)" -eq 0 ]; then
    flock /run/lock/usenetfs-mount-helper.lock .venv/bin/usenetfs install-mount-helper \
        || echo "setup: warning: mount.usenetfs not installed (see above); 'usenetfs mount' still works"
fi
echo "setup: done (commands are in $(pwd)/.venv/bin)"
