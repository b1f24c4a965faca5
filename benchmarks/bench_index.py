"""Index measurements (not a test).

  python benchmarks/bench_index.py api DIR      1M+ segments through the Index API: rates, bytes/row, latencies
  python benchmarks/bench_index.py full DIR     full-scale synthetic index (30M segments, 3.3M inodes): size, latencies
                                                (`generate()` also builds the volumes of bench_scale.py)
  python benchmarks/bench_index.py fsck DIR     fsck (check only) of the full-scale index
"""

from __future__ import annotations

import random
import sqlite3
import stat
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usenetfs.index import Index, extent  # noqa: E402
from usenetfs.index.store import entry_inode_id  # noqa: E402

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


# ---------------------------------------------------------------------- the synthetic volume

FULL_SHAPE = {"dirs": 300_000, "files": 3_000_000, "segments": 30_000_000}
BIG_FOLDER_FILES = 10_000  # one folder of this many files, at every scale
SMALL_PER_SEGMENT = 7  # small files packed into one segment
DEEP_CHAIN = 25  # depth of the deep folder chains (1% of the folders)
YEAR_NS = 365 * 86400 * 10**9
GENERATOR_VERSION = 5  # bump when the generated shape changes (invalidates cached files)


def generate(path: Path, scale: float, *, scope_id: bytes | None = None, seed: int = 2) -> dict:
    """Write a synthetic volume of the 20 TB target shape, times `scale`, into a new index
    at `path`, and return its shape (counts, sample paths).

    At scale 1: 300,000 folders, 3,000,000 files, 30,000,000 segments (~21 TB). Folders:
    one of BIG_FOLDER_FILES files at every scale, 1% in chains DEEP_CHAIN deep, the rest
    two levels (collections of albums, about as many of each). Files: 90% small (1-100
    KB), packed SMALL_PER_SEGMENT to a segment in the order they were written; 10% big,
    of ~85 segments on average, 0.5% of them of thousands; one big file in ten was partly
    overwritten (3 extent rows, one dead segment). Segments are verified (posted a while
    ago, read back). Names arrive in random order (realistic b-tree fill); inode ids come
    from per-directory blocks, as Index.make_node hands them out (`entry_inode_id`).

    Final-state rows written with executemany under bulk-load PRAGMAs into the schema
    Index.create made, with every refcount and counter computed exactly: `Index.fsck()`
    finds nothing (checked by bench_scale at 1/100).
    """
    rng = random.Random(seed)
    n_dirs = max(200, round(FULL_SHAPE["dirs"] * scale))
    n_files = max(BIG_FOLDER_FILES * 2, round(FULL_SHAPE["files"] * scale))
    n_segments = round(FULL_SHAPE["segments"] * scale)
    now = time.time_ns()
    ix = Index.create(path, scope_id=scope_id, uid=1000, gid=1000, now_ns=now - YEAR_NS)
    epoch_s, seg_size = ix.epoch_s, ix.segment_size
    ix.close()
    t0 = time.perf_counter()

    # -- folders
    inode_rows: list[tuple] = []
    dentries: list[tuple] = []  # (parent, name, cookie, inode); cookies in creation order
    nlink = {1: 2}
    dir_path = {1: ""}
    next_ino = 2
    blocks: dict[int, tuple[int | None, int | None]] = {}  # directory -> (alloc_next, alloc_end)

    def new_id(parent: int) -> int:
        """The id Index.make_node would give a new entry of `parent` (per-directory blocks)."""
        nonlocal next_ino
        ino, lo, hi, next_ino = entry_inode_id(*blocks.get(parent, (None, None)), next_ino)
        blocks[parent] = (lo, hi)
        return ino

    def mkdir(parent: int, name: bytes) -> int:
        ino = new_id(parent)
        t = now - rng.randrange(YEAR_NS)
        inode_rows.append([ino, DIR, 1000, 1000, 0, t, t, t, 2, 0, 0, parent, None, None])
        dentries.append((parent, name, len(dentries) + 1, ino))
        nlink[parent] += 1
        nlink[ino] = 2
        dir_path[ino] = dir_path[parent] + "/" + name.decode()
        return ino

    big_folder = mkdir(1, b"big folder")
    n_deep = max(1, n_dirs // 100 // DEEP_CHAIN)
    leaf_dirs = []
    for c in range(n_deep):
        parent = mkdir(1, b"deep-%03d" % c)
        leaf_dirs.append(parent)
        for level in range(1, DEEP_CHAIN):
            parent = mkdir(parent, b"level-%02d" % level)
            leaf_dirs.append(parent)
    rest = n_dirs - 1 - n_deep * DEEP_CHAIN
    n_top = max(1, round(rest ** 0.5))
    tops = [mkdir(1, b"collection-%04d" % a) for a in range(n_top)]
    for k in range(rest - n_top):
        leaf_dirs.append(mkdir(tops[k % n_top], b"album %05d - some longer title %d" % (k, rng.randrange(1000))))

    # -- files: which folder, small or big, how many segments each big one has
    homes = [big_folder] * BIG_FOLDER_FILES + [rng.choice(leaf_dirs) for _ in range(n_files - BIG_FOLDER_FILES)]
    rng.shuffle(homes)  # written in no particular order: packing and cookies interleave
    is_big = [rng.random() < 0.1 for _ in range(n_files)]
    n_big = sum(is_big)
    n_small = n_files - n_big
    small_segs = -(-n_small // SMALL_PER_SEGMENT)
    overwritten = [rng.random() < 0.1 for _ in range(n_big)]
    big_segs = n_segments - small_segs - sum(overwritten)  # each overwrite adds one dead segment
    weights = [rng.uniform(1500, 4500) if rng.random() < 0.005 else rng.uniform(1, 130) for _ in range(n_big)]
    factor = big_segs / sum(weights)
    counts = [max(3, int(w * factor)) for w in weights]
    excess = sum(counts) - big_segs  # bring the total to exactly big_segs
    order = sorted(range(n_big), key=lambda i: -counts[i])
    k = 0
    while excess:
        i = order[k % n_big]
        step = 1 if excess > 0 else -1
        if counts[i] - step >= 3:
            counts[i] -= step
            excess -= step
        k += 1

    extent_rows: list[tuple] = []
    payload_fix: list[tuple[int, int]] = []  # (payload_size, segment): segments not of the standard size
    small_fix: list[tuple[int, int, int]] = []  # (payload_size, refcount, segment) of packed segments
    dead: list[int] = []
    seg = 1
    packing, pack_fill, pack_refs = 0, 0, 0
    slot = seg_size // SMALL_PER_SEGMENT
    total_bytes = 0
    stored_payload = 0
    samples: list[str] = []
    big_index = 0
    for k, parent in enumerate(homes):
        ino = new_id(parent)
        if is_big[k]:
            count = counts[big_index]
            size = (count - 1) * seg_size + rng.randrange(1, seg_size)
            last = size - (count - 1) * seg_size
            if overwritten[big_index]:
                c3 = count // 3
                extent_rows.append((ino, 0, c3 * seg_size, seg, 0, c3, seg_size))
                extent_rows.append((ino, c3 * seg_size, seg_size, seg + count, 0, 1, seg_size))
                rest_len = size - (c3 + 1) * seg_size
                extent_rows.append((ino, (c3 + 1) * seg_size, rest_len, seg + c3 + 1, 0, count - c3 - 1, seg_size))
                dead.append(seg + c3)
                allocated = count + 1
            else:
                extent_rows.append((ino, 0, size, seg, 0, count, seg_size))
                allocated = count
            payload_fix.append((last, seg + count - 1))
            stored_payload += size
            seg += allocated
            big_index += 1
            name = b"video %07d.mkv" % k
        else:
            if pack_refs == 0:
                packing = seg
                seg += 1
            size = rng.randrange(1000, slot)
            extent_rows.append((ino, 0, size, packing, pack_refs * slot, 1, seg_size))
            pack_fill = pack_refs * slot + size
            pack_refs += 1
            if pack_refs == SMALL_PER_SEGMENT or k == n_files - 1:
                small_fix.append((pack_fill, pack_refs, packing))
                stored_payload += pack_fill
                pack_refs = 0
            name = b"IMG_%08d.jpg" % k
        if pack_refs and k == n_files - 1:
            small_fix.append((pack_fill, pack_refs, packing))
            stored_payload += pack_fill
        total_bytes += size
        t = now - rng.randrange(YEAR_NS)
        inode_rows.append((ino, REG, 1000, 1000, size, t, t, t, 1, 0, 0, None, None, None))
        dentries.append((parent, name, len(dentries) + 1, ino))
        if len(samples) < 50_000 and rng.random() < 50_000 / n_files * 1.2:
            samples.append(dir_path[parent] + "/" + name.decode())
    assert seg - 1 == n_segments, (seg - 1, n_segments)
    for row in inode_rows:
        if row[1] == DIR:
            row[8] = nlink[row[0]]
            row[12], row[13] = blocks.get(row[0], (None, None))
    n_dead = len(dead)
    log_rows = f"{len(inode_rows):,} inodes, {len(dentries):,} names, {len(extent_rows):,} extents"
    print(f"  rows built in memory: {time.perf_counter() - t0:.0f} s ({log_rows})", flush=True)

    # -- bulk load: no journal, no sync, a big page cache; WAL again at the end
    t = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-2000000")
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN")
    # In creation order, as a mount would insert them: with per-directory id blocks that
    # is not id order, and the b-tree pages fill as they would in use.
    db.executemany("INSERT INTO inodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", inode_rows)
    rng.shuffle(dentries)  # names arrive in no particular order: realistic b-tree fill
    db.executemany("INSERT INTO dentries (parent, name, id, inode) VALUES (?,?,?,?)", dentries)
    db.executemany("INSERT INTO extents VALUES (?,?,?,?,?,?,?)", extent_rows)
    # Every segment verified: posted within the year since the epoch, read back 3 minutes
    # later, 37 bytes of AEAD and header overhead, a random CRC (signed 32-bit). The rows
    # that differ (partial payloads, packed and dead segments) come from a side table in
    # the same pass: updating them afterwards would grow rows in place and split pages.
    db.execute("CREATE TEMP TABLE fix (id INTEGER PRIMARY KEY, payload INTEGER, refcount INTEGER, state INTEGER)")
    db.executemany("INSERT INTO fix VALUES (?, ?, 1, 2)", [(s, p) for p, s in payload_fix])
    db.executemany("INSERT OR REPLACE INTO fix VALUES (?, nullif(?, ?), ?, 2)",
                   [(s, p, seg_size, r) for p, r, s in small_fix])
    db.executemany("INSERT OR REPLACE INTO fix VALUES (?, NULL, 0, 4)", [(s,) for s in dead])
    db.execute(
        "WITH RECURSIVE ids(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM ids WHERE x < ?) "
        "INSERT INTO segments SELECT x, 1, 0, coalesce(f.state, 2), f.payload, 37, random() >> 32, "
        "coalesce(f.refcount, 1), 0, abs(random()) % 525000, 3 FROM ids LEFT JOIN fix f ON f.id = x",
        (n_segments,),
    )
    db.execute("DROP TABLE fix")
    counters = {
        "inodes": len(inode_rows) + 1, "total_bytes": total_bytes,
        "stored_bytes": stored_payload + 37 * (n_segments - n_dead),
        "garbage_bytes": (seg_size + 37) * n_dead,
        "seg_pending": 0, "seg_posted": 0, "seg_verified": n_segments - n_dead, "seg_missing": 0,
        "seg_dead": n_dead, "next_inode": next_ino, "next_dentry": len(dentries) + 1,
        "next_segment": n_segments + 1,
    }
    db.execute("UPDATE counters SET " + ", ".join(f"{k} = ?" for k in counters) + " WHERE id = 1",
               list(counters.values()))
    db.execute("UPDATE inodes SET nlink = ?, alloc_next = ?, alloc_end = ? WHERE id = 1", (nlink[1], *blocks[1]))
    db.execute("COMMIT")
    db.execute("PRAGMA locking_mode=NORMAL")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    print(f"  inserted: {time.perf_counter() - t:.0f} s", flush=True)
    file_samples = samples[:]
    rng.shuffle(file_samples)
    return {
        "scale": scale, "epoch_s": epoch_s, "dirs": n_dirs, "files": n_files, "segments": n_segments,
        "dead_segments": n_dead, "extents": len(extent_rows), "inodes": len(inode_rows) + 1,
        "entries": len(dentries), "total_bytes": total_bytes, "big_folder": dir_path[big_folder],
        "big_folder_files": BIG_FOLDER_FILES, "top_dirs": sorted(dir_path[d] for d in tops),
        "deep_dirs": [dir_path[d] for d in leaf_dirs[:n_deep * DEEP_CHAIN:DEEP_CHAIN]],
        "sample_files": file_samples, "largest_file_segments": max(counts),
    }


def full(d: Path) -> None:
    """The full-scale synthetic volume (`generate(…, 1.0)`): size per table, latencies."""
    path = d / "full.db"
    fresh(path)
    rng = random.Random(3)
    t = time.perf_counter()
    shape = generate(path, 1.0)
    print(f"generated in {time.perf_counter() - t:.0f} s")
    ix = Index.open(path)
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
    files = []
    for p in shape["sample_files"][:5000]:
        parent = 1
        *dirs, name = p.strip("/").split("/")
        for part in dirs:
            parent = ix.lookup(parent, part.encode())
        files.append((parent, name.encode(), ix.lookup(parent, name.encode())))
    bigs = [r for r in (ix.get_inode(i) for _, _, i in files) if r.size > 10 * SEG]
    print("\nlatency at full scale, µs per call (first pass cold-ish, then warm median):")
    for label, fn, args in (
        ("lookup(parent, name)", ix.lookup, [(p, n) for p, n, _ in files]),
        ("lookup_entry(parent, name)", ix.lookup_entry, [(p, n) for p, n, _ in files]),
        ("get_inode(ino)", ix.get_inode, [(i,) for _, _, i in files]),
        ("extent_at(big file, pos)", ix.extent_at, [(r.id, rng.randrange(r.size)) for r in bigs]),
        ("extents(file)", ix.extents, [(i,) for _, _, i in files]),
        ("segment(id)", ix.segment, [(rng.randrange(1, shape["segments"]),) for _ in range(5000)]),
        ("readdir(dir, 0, 256) [10]", ix.readdir, [(p, 0, 256) for p, *_ in files[:2000]]),
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
