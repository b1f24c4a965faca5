"""Incremental index backups: what a first backup posts, and what later ones post after
small changes, against a private INN on loopback (measured, not asserted).

The index is built through the Index API, as uploads leave it: files in directories of
1,000, every tenth one big (a run of 90 segments), the others packed 7 to a segment. Then,
for each chunk size, on a fresh volume holding a copy of that same index:

    1. a first backup                        (everything is posted)
    2. 100 new files in a new directory      then a backup
    3. 100 new files in an existing one      then a backup (names land mid-b-tree)
    4. nothing changed                       then a backup
    5. a restore on a "new machine", and its integrity check

    python benchmarks/bench_backup.py [--files 100000] [--chunks 64,256,1024]  (KiB)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usenetfs.backup import bootstrap_keys, post_backup, restore  # noqa: E402
from usenetfs.home import Home  # noqa: E402
from usenetfs.index import ROOT_INODE, VOLUME_SCOPE, Index, extent  # noqa: E402
from usenetfs.index.snapshot import copy_consistent  # noqa: E402
from usenetfs.innserver import InnServer  # noqa: E402
from usenetfs.nntp.client import NNTPClient, PoolOptions  # noqa: E402
from usenetfs.nntp.config import ServerConfig  # noqa: E402
from usenetfs.volume import Volume  # noqa: E402

SEG = 716_800
REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
GROUP = "alt.binaries.test"
PASSPHRASE = "benchmark passphrase"


def add_files(index: Index, rng: random.Random, parent: int, count: int, first_name: int = 0) -> None:
    """`count` files under `parent`, named IMG_<n> for n = first_name, first_name + 10, ...:
    every tenth a run of 90 segments, the rest packed 7 to a segment; all posted and
    verified."""
    packed: list[int] = []

    def pack() -> None:
        seg = index.new_segment(VOLUME_SCOPE, SEG)
        index.mark_posted(seg, 0, SEG + 37, rng.getrandbits(32))
        index.mark_verified(seg, 0)
        for slot, ino in enumerate(packed):
            size = rng.randrange(1000, SEG // 7)
            index.update_inode(ino, size=size)
            index.set_extents(ino, [extent(0, size, seg, slot * (SEG // 7), SEG)])
        packed.clear()

    with index.batch():
        for k in range(count):
            node = index.make_node(parent, b"IMG_%07d.jpg" % (first_name + 10 * k), REG, 1000, 1000)
            if k % 10 == 9:
                first = index.new_segment_run(VOLUME_SCOPE, 90, SEG, 100_000)
                for seg in range(first, first + 90):
                    index.mark_posted(seg, 0, SEG + 37, rng.getrandbits(32))
                    index.mark_verified(seg, 0)
                size = 89 * SEG + 100_000
                index.update_inode(node.id, size=size)
                index.set_extents(node.id, [extent(0, size, first, 0, SEG)])
            else:
                packed.append(node.id)
                if len(packed) == 7:
                    pack()
        if packed:
            pack()


def build(path: Path, files: int) -> None:
    rng = random.Random(1)
    index = Index.create(path)
    try:
        for d in range(-(-files // 1000)):
            parent = index.make_node(ROOT_INODE, b"album %05d" % d, DIR, 1000, 1000)
            add_files(index, rng, parent.id, min(1000, files - d * 1000))
        index.checkpoint("TRUNCATE")
    finally:
        index.close()


def _sha256(path: Path) -> str:
    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def line(label: str, stats, seconds: float) -> str:
    return (f"  {label:34} {stats.posted:6,} of {stats.chunks + stats.list_chunks:6,} chunks "
            f"{stats.posted_bytes / 1e6:9.2f} MB posted  {seconds:6.2f} s")


async def run(server: InnServer, root: Path, template: Path, chunk_size: int) -> None:
    home = Home(root / "config", root / "data", root / "cache")
    volume = Volume.create(home, "vol", servers=[server.url], group=GROUP, passphrase=PASSPHRASE, log_n=10)
    settings = volume.load()
    keys = volume.unlock(PASSPHRASE)
    pkeys = bootstrap_keys(PASSPHRASE, bytes.fromhex(settings.volume_id))
    shutil.copyfile(template, volume.index_file)
    index = Index.open(volume.index_file)
    rng = random.Random(2)
    print(f"\nchunks of {chunk_size // 1024} KiB; index {volume.index_file.stat().st_size / 1e6:.1f} MB")
    config = ServerConfig(server.host, server.port)
    try:
        async with NNTPClient(config, PoolOptions(max_connections=8)) as client:
            async def backup(label: str):
                started = time.perf_counter()
                stats = await post_backup(volume, volume.load(), keys, client, pkeys, chunk_size=chunk_size)
                print(line(label, stats, time.perf_counter() - started))
                return stats

            await backup("1. first backup")
            parent = index.make_node(ROOT_INODE, b"new album", DIR, 1000, 1000)
            add_files(index, rng, parent.id, 100)
            await backup("2. +100 files in a new directory")
            add_files(index, rng, index.lookup(ROOT_INODE, b"album 00000"), 100, first_name=5)  # between the others
            await backup("3. +100 files in an existing one")
            await backup("4. no change")
            started = time.perf_counter()
            other = Home(root / "other" / "config", root / "other" / "data", root / "other" / "cache")
            restored, seq = await restore(other, "vol", settings.volume_id, PASSPHRASE, client, ["local"])
            seconds = time.perf_counter() - started
            copy_consistent(volume.index_file, root / "now.sqlite")  # what backup 4 saw
            same = _sha256(root / "now.sqlite") == _sha256(restored.index_file)
            print(f"  5. restore of backup {seq}: {seconds:.2f} s (fetch, hash checks, integrity "
                  f"check); {'identical to' if same else 'DIFFERENT FROM'} the live index")
    finally:
        index.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--chunks", default="64,256,1024", help="chunk sizes in KiB, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        os.chmod(tmp, 0o755)
        root = Path(tmp)
        started = time.perf_counter()
        build(root / "template.sqlite", args.files)
        index = Index.open(root / "template.sqlite")
        stats = index.stats()
        index.close()
        print(f"index: {stats.inodes:,} inodes, {sum(stats.segments):,} segments, "
              f"{(root / 'template.sqlite').stat().st_size / 1e6:.1f} MB (built in "
              f"{time.perf_counter() - started:.0f} s)")
        with InnServer(root / "inn") as server:
            for kib in (int(k) for k in args.chunks.split(",")):
                trio.run(run, server, root / f"chunks-{kib}", root / "template.sqlite", kib * 1024)


if __name__ == "__main__":
    main()
