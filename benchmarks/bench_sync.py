"""`usenetfs sync` against `rsync -a` into the mount, on the same tree, both until posted.

A tree of small files (1-8 KiB of random bytes each, 100 per directory) is generated
under /var/tmp. Two volumes on one private INN server, each mounted; the same tree goes
into one with `rsync -a SRC/ MNT/rsync/` and into the other with `usenetfs sync SRC
MNT/sync`, each followed by `usenetfs flush MNT` (everything posted and read back).
Reported: files/s of each (copy-in phase, and until posted) and the ratio. The source is
read once before either run so both find it in the page cache.

    python benchmarks/bench_sync.py            # 100,000 files in 1,000 directories
    python benchmarks/bench_sync.py --quick    # 10,000 files in 100 directories
    python benchmarks/bench_sync.py --files N --per-dir M --connections C --keep
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from usenetfs.innserver import InnServer  # noqa: E402

PASSPHRASE = "benchmark passphrase"


def usenetfs(home: Path, *args: str, capture: bool = False) -> str:
    env = {**os.environ, "USENETFS_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "usenetfs.cli.main", *args], env=env, check=True,
                            timeout=7200, stdout=subprocess.PIPE if capture else None, text=True)
    return result.stdout or ""


def generate(root: Path, files: int, per_dir: int, seed: int = 1) -> int:
    """files of 1-8 KiB (random bytes) in files/per_dir directories, two levels deep."""
    rng = random.Random(seed)
    total = 0
    dirs = max(1, files // per_dir)
    made = 0
    for d in range(dirs):
        directory = root / f"group{d // 32:03d}" / f"dir{d:05d}"
        directory.mkdir(parents=True)
        for f in range(per_dir if d < dirs - 1 else files - made):
            size = rng.randint(1024, 8192)
            (directory / f"file{f:04d}.dat").write_bytes(os.urandom(size))
            total += size
            made += 1
    return total


def warm(root: Path) -> None:
    subprocess.run(["tar", "-cf", "/dev/null", "-C", str(root), "."], check=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 files in 100 directories")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree and volumes")
    args = parser.parse_args()
    files = args.files or (10_000 if args.quick else 100_000)

    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-", dir="/var/tmp"))
    os.chmod(tmp, 0o755)
    mounts: list[Path] = []
    try:
        source = tmp / "src"
        started = time.perf_counter()
        nbytes = generate(source, files, args.per_dir)
        print(f"tree: {files:,} files, {nbytes / 1e6:.1f} MB in {max(1, files // args.per_dir):,} directories "
              f"(generated in {time.perf_counter() - started:.1f} s)", flush=True)
        (tmp / "pass").write_text(PASSPHRASE)
        with InnServer(tmp / "inn") as server:
            results = {}
            for tool in ("rsync", "sync"):
                home, mnt = tmp / f"home-{tool}", tmp / f"mnt-{tool}"
                mnt.mkdir()
                usenetfs(home, "init", tool, "--server", server.url, "--group", "alt.binaries.test",
                         "--connections", str(args.connections), "--passphrase-file", str(tmp / "pass"),
                         "--kdf-log-n", "10")
                usenetfs(home, "mount", tool, str(mnt), "--passphrase-file", str(tmp / "pass"))
                mounts.append(mnt)
                warm(source)
                if tool == "rsync":
                    copy = lambda: subprocess.run(["rsync", "-a", f"{source}/", str(mnt / "tree")], check=True)  # noqa: E731
                else:
                    copy = lambda: usenetfs(home, "sync", str(source), str(mnt / "tree"), capture=True)  # noqa: E731
                copy_s = timed(copy)
                flush_s = timed(lambda: usenetfs(home, "flush", str(mnt), capture=True))
                copied = count_files(mnt / "tree")
                if copied != files:
                    raise SystemExit(f"{tool}: {copied} files in the mount, expected {files}")
                results[tool] = (copy_s, flush_s)
                print(f"{tool:6} copy-in {copy_s:7.1f} s ({files / copy_s:8,.0f} files/s), "
                      f"+ flush {flush_s:6.1f} s: until posted {copy_s + flush_s:7.1f} s "
                      f"({files / (copy_s + flush_s):7,.0f} files/s)", flush=True)
                usenetfs(home, "umount", str(mnt))
                mounts.remove(mnt)
        (r_copy, r_flush), (s_copy, s_flush) = results["rsync"], results["sync"]
        print(f"\n{'':28}{'rsync -a':>12}{'usenetfs sync':>15}{'ratio':>8}")
        print(f"{'copy-in (files/s)':28}{files / r_copy:12,.0f}{files / s_copy:15,.0f}{r_copy / s_copy:8.2f}")
        total_r, total_s = r_copy + r_flush, s_copy + s_flush
        print(f"{'until posted (files/s)':28}{files / total_r:12,.0f}{files / total_s:15,.0f}"
              f"{total_r / total_s:8.2f}   goal >= 3")
    finally:
        for mnt in mounts:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
