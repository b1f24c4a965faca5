#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the local INN server (no provider account):
# create a volume, mount it, copy files in, unmount (which waits until every byte is
# posted and read back), drop the local cache, mount again and check that the files come
# back byte for byte from the server. The volume stays mounted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export USENETFS_HOME="${USENETFS_HOME:-$PWD/.demo-home}"
usenetfs=.venv/bin/usenetfs
mnt="$USENETFS_HOME/mnt"
pass="$USENETFS_HOME/passphrase"
mkdir -p "$USENETFS_HOME" "$mnt"
chmod 755 "$USENETFS_HOME"   # INN runs as user news and keeps its spool below this
[ -s "$pass" ] || { head -c 24 /dev/urandom | base64 > "$pass"; chmod 600 "$pass"; }

if [ ! -f "$USENETFS_HOME/config/volumes/demo/volume.json" ]; then
    $usenetfs init demo --local --group alt.binaries.test --passphrase-file "$pass"
fi
mountpoint -q "$mnt" || $usenetfs mount demo "$mnt" --passphrase-file "$pass"

sample="$mnt/demo-$(date +%Y%m%d-%H%M%S)"
mkdir "$sample"
cp -a README.md usenetfs "$sample/"
head -c 20000000 /dev/urandom > "$sample/random.bin"
(cd "$sample" && find . -type f -exec sha256sum {} + | sort -k2) > "$USENETFS_HOME/expected.sha256"
echo "copied $(du -sh "$sample" | cut -f1) into $sample"

echo "unmounting: waits until everything is posted and verified by BODY"
$usenetfs umount "$mnt"
$usenetfs cache clear demo
$usenetfs mount demo "$mnt" --passphrase-file "$pass"
(cd "$sample" && find . -type f -exec sha256sum {} + | sort -k2) > "$USENETFS_HOME/actual.sha256"
if cmp -s "$USENETFS_HOME/expected.sha256" "$USENETFS_HOME/actual.sha256"; then
    echo "round trip OK: $(wc -l < "$USENETFS_HOME/actual.sha256") files came back byte for byte from the server"
else
    echo "round trip FAILED: checksums differ" >&2
    exit 1
fi
echo "the volume is mounted at $mnt; unmount with: $PWD/$usenetfs --home $USENETFS_HOME umount $mnt"
