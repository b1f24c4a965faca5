"""End-to-end filesystem figures against ceilings measured in the same run.

1. cp SIZE MiB into the mount + `usenetfs umount` (waits until posted and verified)
   vs raw POST of the same number of 716,800-byte articles with the same connections,
   and vs what POST and BODY of them cost together (every upload is read back).
2. cold sequential read after `cache clear` + remount vs raw BODY of those articles.
3. warm read (a file that fits the caches, read a second time) vs benchmarks/memfs.py.
4. creating 2,000 small files vs the same in memfs (after a flush, so no upload runs).
5. (no goal) the cold read again through a fresh mount with `-o disk_cache`, after two reads
   filled that cache: what the on-disk segment cache gives against raw BODY (here a loopback
   INN; a provider is slower).
6. (no goal) the bound on step 1 for any filesystem here: cp of the same file into a FUSE
   filesystem that does no work at all (memfs.py --sink) while the raw client POSTs and
   reads back by BODY the same number of articles, on the same connections. The two share
   this machine's cores with INN as usenetfs's copy and upload do; what the bound leaves out
   is everything a filesystem must do besides (staging, encryption, yEnc, an index).

Steps 2 and 4 and the raw BODY ceiling are each measured ROUNDS (3) times in the run and
compared by their medians (every figure is printed): single runs of them moved by ±15% on
these shared machines.

    python benchmarks/bench_fs.py [--size-mb 1024] [--connections 4] [--touch-memory GIB]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_nntp import copy_beside_post_and_body, make_articles, raw_run  # noqa: E402
from common import Volume, random_source, timed, touch_memory  # noqa: E402
import memfs  # noqa: E402
from usenetfs.innserver import InnServer  # noqa: E402


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def small_files(directory: Path, count: int = 2000) -> None:
    directory.mkdir()
    payload = b"x" * 2048
    for i in range(count):
        with open(directory / f"f{i:05d}", "wb") as f:
            f.write(payload)


ROUNDS = 3


def median_time(fn, rounds: int = ROUNDS, before=None) -> tuple[float, list[float]]:
    """The median of `rounds` timings of `fn` (`before()` runs untimed before each), and all of them."""
    times = []
    for i in range(rounds):
        if before is not None:
            before(i)
        times.append(timed(lambda: fn(i)))
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--warm-mb", type=int, default=128)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--touch-memory", type=int, default=0, metavar="GIB",
                        help="touch this much memory first (common.touch_memory: comparable runs on a VM)")
    args = parser.parse_args()
    if args.touch_memory:
        print(f"  (touched {args.touch_memory} GiB of memory first: {touch_memory(args.touch_memory):.1f} s)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-fs-"))
    os.chmod(tmp, 0o755)
    class Rows(list):
        def append(self, row) -> None:  # print as measured, so a late failure loses nothing
            super().append(row)
            name, ours, ceiling, what, goal = row
            target = f">= {goal}" if goal else "(no goal)"
            print(f"{name:38}{ours:10.1f}{ceiling:10.1f}  {what:10}{ours / ceiling:7.2f}  {target}",
                  flush=True)

    rows = Rows()
    print(f"\n{'':38}{'usenetfs':>10}{'ceiling':>10}  {'ceiling is':10}{'ratio':>7}  goal")
    try:
        with InnServer(tmp / "inn") as server, random_source(args.size_mb << 20, "bench-fs") as source:
            articles = make_articles(max(1, (args.size_mb << 20) // 716_800))
            nbytes = sum(len(a) for _, a in articles)
            # POST once: more would put gigabytes more into INN's spool, and dirty pages
            # waiting for the disk slow the copy that follows.
            raw_post = nbytes / raw_run(server.host, server.port, args.connections,
                                        lambda c, a: c.post(a[1]), articles) / 1e6
            bodies = [nbytes / raw_run(server.host, server.port, args.connections,
                                       lambda c, a: c.body(a[0]), articles) / 1e6 for _ in range(ROUNDS)]
            raw_body = statistics.median(bodies)
            print(f"  (raw BODY {', '.join(f'{x:.0f}' for x in bodies)} MB/s)")

            volume = Volume(tmp, server.url, args.connections)
            mnt = volume.mnt
            volume.mount()
            size = source.stat().st_size
            os.sync()  # the raw steps left INN's spool writes waiting: not the copy's to pay
            cp_s, umount_s = volume.copy_and_umount(source, "big")
            write_s = cp_s + umount_s
            print(f"  (cp alone: {size / cp_s / 1e6:.0f} MB/s; then umount until posted and read back)")
            rows.append(("cp + umount (posted, verified)", size / write_s / 1e6, raw_post, "raw POST", 0.8))
            rows.append(("  the same against POST+BODY", size / write_s / 1e6,
                          1 / (1 / raw_post + 1 / raw_body), "POST+BODY", 0.8))

            def cold_mount(i: int) -> None:
                if i:
                    volume.umount()
                volume.cache_clear()
                volume.mount()

            cold_s, colds = median_time(lambda i: read_file(mnt / "big"), before=cold_mount)
            print(f"  (cold reads {', '.join(f'{size / t / 1e6:.0f}' for t in colds)} MB/s)")
            rows.append(("cold sequential read", size / cold_s / 1e6, raw_body, "raw BODY", 0.7))
            warm = mnt / "warm"
            warm.write_bytes(os.urandom(args.warm_mb << 20))
            # Measured alone, as memfs's are: the warm file's upload (about a second of both
            # cores) must not run meanwhile, nor during the small files.
            volume.run("flush", str(mnt))
            read_file(warm)
            warm_s = timed(lambda: read_file(warm))
            create_s, creates = median_time(lambda i: small_files(mnt / f"small{i}"))
            volume.umount()

            with memfs.mounted(tmp / "memfs") as mem:
                (mem / "warm").write_bytes(os.urandom(args.warm_mb << 20))
                read_file(mem / "warm")
                mem_warm_s = timed(lambda: read_file(mem / "warm"))
                mem_create_s, mem_creates = median_time(lambda i: small_files(mem / f"small{i}"))
            warm_bytes = args.warm_mb << 20
            rows.append(("warm read", warm_bytes / warm_s / 1e6, warm_bytes / mem_warm_s / 1e6, "memfs", 0.8))
            print(f"  (small files/s: usenetfs {', '.join(f'{2000 / t:.0f}' for t in creates)}; "
                  f"memfs {', '.join(f'{2000 / t:.0f}' for t in mem_creates)})")
            rows.append(("create 2,000 small files (files/s)", 2000 / create_s, 2000 / mem_create_s, "memfs", 0.5))

            disk_cache = ("-o", f"disk_cache={2 * args.size_mb + 64}M")
            for _ in range(2):  # a fast read may outrun the cache's writer: the second fills the gaps
                volume.mount(*disk_cache)
                read_file(mnt / "big")  # from the server, kept on disk in the background
                volume.umount()
            volume.mount(*disk_cache)
            disk_s = timed(lambda: read_file(mnt / "big"))
            volume.umount()
            rows.append(("cold read from the disk cache", size / disk_s / 1e6, raw_body, "raw BODY", None))

            with memfs.mounted(tmp / "sink", sink=True) as sink:
                bound_s = copy_beside_post_and_body(source, sink, server.host, server.port,
                                                    args.connections, make_articles(len(articles)))
            print(f"  (the bound: cp into a no-op FUSE filesystem beside a raw POST + BODY of as many "
                  f"articles: {bound_s:.2f} s)")
            rows.append(("  the bound on cp + umount", size / bound_s / 1e6, raw_post, "raw POST", None))
            rows.append(("  cp + umount against that bound", size / write_s / 1e6, size / bound_s / 1e6,
                         "the bound", None))
    finally:
        subprocess.run(["fusermount3", "-uz", str(tmp / "mnt")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)



if __name__ == "__main__":
    main()
