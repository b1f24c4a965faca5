"""Index measurements (not a test).

  python benchmarks/bench_index.py api DIR      1M+ segments through the Index API: rates, bytes/row, latencies
  python benchmarks/bench_index.py full DIR     full-scale synthetic index (30M segments, 3.3M inodes): size, latencies
  python benchmarks/bench_index.py fsck DIR     fsck (check only) of the full-scale index
"""

from __future__ import annotations

import os
import random
import stat
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usenetfs.index import Index, extent  # noqa: E402

SEG = 716_800
REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()


def dbstat(ix: Index) -> dict[str, int]:
    return dict(ix._q("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))


def lat(fn, args_list, repeat=3) -> float:
    """Median over `repeat` passes of the mean µs per call."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        for a in args_list:
            fn(*a)
        out.append((time.perf_counter() - t) / len(args_list) * 1e6)
    return median(out)


def api(d: Path) -> None:
    path = d / "api.db"
    fresh(path)
    ix = Index.create(path)
    rng = random.Random(1)
    n_runs, run_len = 1000, 1000
    t = time.perf_counter()
    for _ in range(n_runs):
        ix.new_segment_run(1, run_len, SEG, 123_456)
    dt = time.perf_counter() - t
    print(f"new_segment_run: {n_runs * run_len / dt:,.0f} segments/s ({n_runs} runs of {run_len}, one transaction each)")
    n = 100_000
    t = time.perf_counter()
    for k in range(0, n, 1000):
        with ix.batch():
            for _ in range(1000):
                ix.new_segment(1, SEG)
    dt = time.perf_counter() - t
    print(f"new_segment in batches of 1000: {n / dt:,.0f} segments/s")
    t = time.perf_counter()
    m = 5000
    for _ in range(m):
        ix.new_segment(1, SEG)
    dt = time.perf_counter() - t
    print(f"new_segment, one transaction each: {m / dt:,.0f}/s ({dt / m * 1e6:.0f} µs)")
    total = ix.stats().segments[0]
    t = time.perf_counter()
    for k in range(1, total + 1, 1000):
        with ix.batch():
            for s in range(k, min(k + 1000, total + 1)):
                ix.mark_posted(s, 0, SEG + 37, rng.getrandbits(32))
                ix.mark_verified(s, 0)
    dt = time.perf_counter() - t
    print(f"mark_posted + mark_verified in batches of 1000: {total / dt:,.0f} segments/s")
    # namespace: 100K files in 1000 directories, each one extent inside a packed segment
    files = []
    t = time.perf_counter()
    with ix.batch():
        dirs = [ix.make_node(1, b"album-%06d" % k, DIR, 1000, 1000).id for k in range(1000)]
    for k in range(100):
        with ix.batch():
            for j in range(1000):
                ino = ix.make_node(dirs[j], b"IMG_%08d.jpg" % (k * 1000 + j), REG, 1000, 1000).id
                files.append((dirs[j], b"IMG_%08d.jpg" % (k * 1000 + j), ino))
    dt = time.perf_counter() - t
    print(f"make_node in batches of 1000: {len(files) / dt:,.0f} files/s")
    big = ix.make_node(1, b"big.mkv", REG, 0, 0).id
    ix.update_inode(big, size=n_runs * run_len * SEG)
    t = time.perf_counter()
    with ix.batch():
        ix.set_extents(big, [extent(0, n_runs * run_len * SEG, 1, 0, SEG)])
    print(f"set_extents of one {n_runs * run_len}-segment run: {(time.perf_counter() - t) * 1e3:.0f} ms")
    first_small = n_runs * run_len + 1
    t = time.perf_counter()
    for k in range(0, len(files), 1000):
        with ix.batch():
            for j, (_, _, ino) in enumerate(files[k : k + 1000]):
                i = k + j
                size = rng.randrange(1000, 60_000)
                ix.update_inode(ino, size=size)
                ix.set_extents(ino, [extent(0, size, first_small + i // 10, (i % 10) * 60_000, SEG)])
    dt = time.perf_counter() - t
    print(f"update_inode(size) + set_extents (packed) in batches of 1000: {len(files) / dt:,.0f} files/s")
    ix.checkpoint("TRUNCATE")
    ix.close()
    ix = Index.open(path)
    st = dbstat(ix)
    nseg = ix._q("SELECT count(*) FROM segments").fetchone()[0]
    next_ = ix._q("SELECT count(*) FROM extents").fetchone()[0]
    nino = ix._q("SELECT count(*) FROM inodes").fetchone()[0]
    nden = ix._q("SELECT count(*) FROM dentries").fetchone()[0]
    print(f"\nrows: {nseg:,} segments, {next_:,} extents, {nino:,} inodes, {nden:,} dentries; "
          f"file {path.stat().st_size / 1e6:,.1f} MB")
    print(f"segments: {st['segments'] / nseg:.1f} B/row table, queue index {st.get('segments_queue', 0)} B total")
    print(f"extents: {st['extents'] / next_:.1f} B/row")
    print(f"inodes: {st['inodes'] / nino:.1f} B/row")
    print(f"dentries: {st['dentries'] / nden:.1f} B/row + readdir index {st['dentries_readdir'] / nden:.1f} B/row")
    # latencies (warm cache)
    sample = rng.sample(files, 2000)
    print("\nlatency, µs per call (warm):")
    print(f"  lookup(parent, name)        {lat(ix.lookup, [(p, nm) for p, nm, _ in sample]):6.1f}")
    print(f"  lookup_entry(parent, name)  {lat(ix.lookup_entry, [(p, nm) for p, nm, _ in sample]):6.1f}")
    print(f"  get_inode(ino)              {lat(ix.get_inode, [(i,) for _, _, i in sample]):6.1f}")
    pos = [(big, rng.randrange(n_runs * run_len * SEG)) for _ in range(2000)]
    print(f"  extent_at(big run, pos)     {lat(ix.extent_at, pos):6.1f}")
    print(f"  extent_at(small file, 0)    {lat(ix.extent_at, [(i, 0) for _, _, i in sample]):6.1f}")
    print(f"  extents(small file)         {lat(ix.extents, [(i,) for _, _, i in sample]):6.1f}")
    print(f"  segment(id)                 {lat(ix.segment, [(rng.randrange(1, nseg),) for _ in range(2000)]):6.1f}")
    print(f"  readdir(dir, 0, 100) [100]  {lat(ix.readdir, [(p, 0, 100) for p in rng.sample(dirs, 200)]):6.1f}")
    print(f"  pending_segments(1000) [0]  {lat(ix.pending_segments, [(1000,)] * 200):6.1f}")
    print(f"  stats()                     {lat(ix.stats, [()] * 2000):6.1f}")
    ix.close()


def full(d: Path) -> None:
    """30M segments, 300K directories, 3M files, ~3.1M extents: realistic final-state rows
    written with raw executemany into the schema Index.create made."""
    path = d / "full.db"
    fresh(path)
    ix = Index.create(path)
    epoch_min = 0
    rng = random.Random(2)
    db = ix._db
    t0 = time.perf_counter()
    n_dirs_top, n_sub = 550, 545  # 299,750 subdirectories + 550 top dirs
    files_per_dir = 10
    now = time.time_ns()
    inode_rows = []
    dentries = []
    ino = 2
    dentry_id = 1
    tops = []
    for a in range(n_dirs_top):
        inode_rows.append((ino, DIR, 1000, 1000, 0, now, now, now, 2 + n_sub, 0, 0, 1))
        dentries.append((1, b"collection-%04d" % a, dentry_id, ino))
        tops.append(ino)
        ino += 1
        dentry_id += 1
    subdirs = []
    for top in tops:
        for b in range(n_sub):
            inode_rows.append((ino, DIR, 1000, 1000, 0, now, now, now, 2, 0, 0, top))
            dentries.append((top, b"album %05d - some title" % b, dentry_id, ino))
            subdirs.append(ino)
            ino += 1
            dentry_id += 1
    # files: 90% small (packed, one run=1 extent), 10% big (runs); 30M segments in all
    n_files = len(subdirs) * files_per_dir
    n_big = n_files // 10
    n_small = n_files - n_big
    small_per_seg = 7
    small_segs = -(-n_small // small_per_seg)
    big_segs_total = 30_000_000 - small_segs
    per_big = big_segs_total // n_big
    seg = 1
    extent_rows = []
    segment_refs = {}
    file_inos = []
    k = 0
    for sd in subdirs:
        for j in range(files_per_dir):
            is_big = k % 10 == 9
            if is_big:
                count = per_big + (1 if k // 10 < big_segs_total - per_big * n_big else 0)
                size = (count - 1) * SEG + rng.randrange(1, SEG)
                if rng.random() < 0.1:  # some files were partly overwritten: 3 rows
                    cut1, cut2 = SEG * (count // 3), SEG * (count // 3) + SEG
                    extent_rows.append((ino, 0, cut1, seg, 0, count // 3, SEG))
                    extent_rows.append((ino, cut1, SEG, seg + count - 1, 0, 1, SEG))  # reuses last seg id range
                    extent_rows.append((ino, cut2, size - cut2, seg + count // 3 + 1, 0, count - count // 3 - 1, SEG))
                else:
                    extent_rows.append((ino, 0, size, seg, 0, count, SEG))
                seg += count
            else:
                size = rng.randrange(1000, SEG // small_per_seg)
                s_id = 30_000_000 - small_segs + 1 + (k - k // 10) // small_per_seg
                extent_rows.append((ino, 0, size, s_id, ((k - k // 10) % small_per_seg) * (SEG // small_per_seg), 1, SEG))
            inode_rows.append((ino, REG, 1000, 1000, size, now, now, now, 1, 0, 0, None))
            dentries.append((sd, b"IMG_%08d.jpg" % k, dentry_id, ino))
            file_inos.append((sd, b"IMG_%08d.jpg" % k, ino, is_big, size))
            ino += 1
            dentry_id += 1
            k += 1
    print(f"built rows in memory: {time.perf_counter() - t0:.0f} s; {len(inode_rows):,} inodes, "
          f"{len(extent_rows):,} extents")
    t = time.perf_counter()
    db.execute("BEGIN")
    db.executemany("INSERT INTO inodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", inode_rows)
    rng.shuffle(dentries)  # names arrive in no particular order: realistic b-tree fill
    db.executemany("INSERT INTO dentries (parent, name, id, inode) VALUES (?,?,?,?)", dentries)
    db.executemany("INSERT INTO extents VALUES (?,?,?,?,?,?,?)", extent_rows)
    db.execute("COMMIT")
    print(f"namespace + extents inserted: {time.perf_counter() - t:.0f} s")
    del inode_rows, dentries
    t = time.perf_counter()
    total = 30_000_000
    batch = 500_000
    for start in range(1, total + 1, batch):
        rows = []
        for s in range(start, min(start + batch, total + 1)):
            m = rng.randrange(0, 525_600)  # posted within a year of the epoch (minutes)
            c = rng.getrandbits(32)
            first_small = 30_000_000 - small_segs + 1
            refs = 1 if s < first_small else min(small_per_seg, n_small - (s - first_small) * small_per_seg)
            # standard payload (NULL), 37 bytes of AEAD+header overhead, verified 3 minutes after the POST
            rows.append((s, 1, 0, 2, None, 37, c - (1 << 32) if c >= 1 << 31 else c, refs, 0, m, 3))
        db.execute("BEGIN")
        db.executemany("INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        db.execute("COMMIT")
    dt = time.perf_counter() - t
    print(f"30M segments inserted (raw executemany): {dt:.0f} s, {total / dt:,.0f} rows/s")
    # the partly overwritten big files and the counters are left for fsck --repair to settle
    ix.close()
    ix = Index.open(path)
    t = time.perf_counter()
    problems = ix.fsck(repair=True)
    print(f"fsck --repair to settle refcounts/counters: {time.perf_counter() - t:.0f} s, {len(problems):,} fixes")
    ix.checkpoint("TRUNCATE")
    st = dbstat(ix)
    size = path.stat().st_size
    print(f"\nFULL SCALE: file {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)")
    for name, b in sorted(st.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {b / 1e6:9.1f} MB")
    counts = {t: ix._q(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("segments", "extents", "inodes", "dentries")}
    print("  rows:", counts)
    print(f"  segments {st['segments'] / counts['segments']:.1f} B/row, extents {st['extents'] / counts['extents']:.1f}, "
          f"inodes {st['inodes'] / counts['inodes']:.1f}, dentries {st['dentries'] / counts['dentries']:.1f} "
          f"+ readdir index {st['dentries_readdir'] / counts['dentries']:.1f}")
    print(ix.stats())
    sample = rng.sample(file_inos, 5000)
    bigs = [f for f in file_inos if f[3]]
    print("\nlatency at full scale, µs per call (first pass cold-ish, then warm median):")
    for label, fn, args in (
        ("lookup(parent, name)", ix.lookup, [(p, n) for p, n, *_ in sample]),
        ("lookup_entry(parent, name)", ix.lookup_entry, [(p, n) for p, n, *_ in sample]),
        ("get_inode(ino)", ix.get_inode, [(i,) for _, _, i, *_ in sample]),
        ("extent_at(big file, pos)", ix.extent_at, [(f[2], rng.randrange(f[4])) for f in rng.sample(bigs, 5000)]),
        ("extents(file)", ix.extents, [(i,) for _, _, i, *_ in sample]),
        ("segment(id)", ix.segment, [(rng.randrange(1, 30_000_000),) for _ in range(5000)]),
        ("readdir(dir, 0, 256) [10]", ix.readdir, [(p, 0, 256) for p, *_ in sample[:2000]]),
        ("pending_segments(1000) [0]", ix.pending_segments, [(1000,)] * 500),
    ):
        t = time.perf_counter()
        for a in args:
            fn(*a)
        cold = (time.perf_counter() - t) / len(args) * 1e6
        print(f"  {label:30s} cold {cold:7.1f}   warm {lat(fn, args):7.1f}")
    ix.close()


def fsck(d: Path) -> None:
    ix = Index.open(d / "full.db")
    t = time.perf_counter()
    problems = ix.fsck()
    print(f"fsck (check only) at full scale: {time.perf_counter() - t:.0f} s, {len(problems)} problems")
    ix.close()


if __name__ == "__main__":
    cmd, d = sys.argv[1], Path(sys.argv[2])
    d.mkdir(parents=True, exist_ok=True)
    {"api": api, "full": full, "fsck": fsck}[cmd](d)
