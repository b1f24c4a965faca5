"""Shares: what publishing a folder posts and costs, what re-publishing after small changes
posts, and what a subscriber's first fetch and a refresh cost, against a private INN on
loopback (measured, not asserted).

The volume's index is built through the Index API as in bench_backup.py (directories of
1,000 files, every tenth a 90-segment run, the rest packed 7 to a segment; segments marked
verified: publishing reads the index, not the data). Then:

    1. a first publish of the whole volume      (every directory encoded, every object posted)
    2. a publish with nothing changed
    3. one new file in one directory            then a publish
    4. 100 new files in a new directory         then a publish
    5. a subscriber's first fetch (empty home)  the tree into a mirror index
    6. a refresh of that subscriber             after steps 3-4 happen once more

    python benchmarks/bench_share.py [--files 20000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backup import DIR, GROUP, PASSPHRASE, add_files  # noqa: E402
from usenetfs.home import Home  # noqa: E402
from usenetfs.index import ROOT_INODE, Index  # noqa: E402
from usenetfs.innserver import InnServer  # noqa: E402
from usenetfs.nntp.client import NNTPClient, PoolOptions  # noqa: E402
from usenetfs.nntp.config import ServerConfig  # noqa: E402
from usenetfs.share.capability import make_hint  # noqa: E402
from usenetfs.share.mount import subscribe  # noqa: E402
from usenetfs.share.publish import publish  # noqa: E402
from usenetfs.share.state import ShareFiles  # noqa: E402
from usenetfs.share.subscribe import Access, Subscription  # noqa: E402
from usenetfs.volume import Volume  # noqa: E402


def line(label: str, result, seconds: float) -> str:
    return (f"  {label:38} {result.changed_dirs:5,} dirs encoded {result.objects_posted:6,} objects "
            f"{result.posted_bytes / 1e6:8.2f} MB posted {seconds:7.2f} s")


async def main(files: int, root: Path, server: InnServer) -> None:
    home = Home(root / "config", root / "data", root / "cache")
    volume = Volume.create(home, "vol", servers=[server.url], group=GROUP, passphrase=PASSPHRASE, log_n=10)
    settings = volume.load()
    keys = volume.unlock(PASSPHRASE)
    index = Index.create(volume.index_file, scope_id=bytes.fromhex(settings.volume_id))
    rng = random.Random(1)
    started = time.monotonic()
    for d in range(-(-files // 1000)):
        parent = index.make_node(ROOT_INODE, b"album %05d" % d, DIR, 1000, 1000)
        add_files(index, rng, parent.id, min(1000, files - d * 1000))
    segments = index.stats().segments[2]
    print(f"index: {files:,} files, {segments:,} segments, built in {time.monotonic() - started:.1f} s")
    share = ShareFiles(volume, "all")
    share.create("/", "open", expires=None, hint=make_hint(server.url, GROUP))
    config = ServerConfig(server.host, server.port)

    async with NNTPClient(config, PoolOptions(max_connections=8)) as client:
        async def step(label: str) -> None:
            started = time.monotonic()
            result = await publish(share, share.load(), index, keys, settings, client, is_dirty=lambda ino: False)
            print(line(label, result, time.monotonic() - started))

        await step("1. first publish")
        await step("2. nothing changed")
        album = index.lookup(ROOT_INODE, b"album 00003")
        add_files(index, rng, album, 1, first_name=5_000_001)
        await step("3. one new file in a 1,000-file dir")
        fresh = index.make_node(ROOT_INODE, b"album new", DIR, 1000, 1000)
        add_files(index, rng, fresh.id, 100)
        await step("4. 100 files in a new dir")

        cap = share.load().capability()
        sub = Subscription(Home(root / "sub/config", root / "sub/data", root / "sub/cache"), cap.share_id)
        sub.ensure()
        started = time.monotonic()
        _, changes = await subscribe(sub, cap, Access(), config)
        print(f"  5. subscriber's first fetch            {changes.dirs_visited:5,} dirs applied "
              f"{changes.objects_fetched:6,} objects fetched {time.monotonic() - started:7.2f} s "
              f"(mirror {sub.mirror_file.stat().st_size / 1e6:.1f} MB)")

        add_files(index, rng, album, 1, first_name=5_000_011)
        add_files(index, rng, fresh.id, 100, first_name=7_000_000)
        await step("6a. one file + 100 files, publish")
        started = time.monotonic()
        _, changes = await subscribe(sub, cap, Access(), config)
        print(f"  6b. the subscriber's refresh           {changes.dirs_visited:5,} dirs applied "
              f"{changes.objects_fetched:6,} objects fetched {time.monotonic() - started:7.2f} s")
    index.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-share-") as scratch:
        root = Path(scratch)
        root.chmod(0o755)
        (root / "inn").mkdir()
        (root / "inn").chmod(0o777)
        inn = InnServer(root / "inn", groups=(GROUP,))
        inn.start()
        try:
            trio.run(main, args.files, root, inn)
        finally:
            inn.stop()
