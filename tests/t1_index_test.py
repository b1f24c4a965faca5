"""t1: the segment index (usenetfs.index) on plain SQLite files in tmp_path.

Every test that uses the `ix` fixture ends with fsck: the index must be clean after it.
Recounts here use their own sqlite3 connection and SQL, independent of fsck's code.
"""

from __future__ import annotations

import errno
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from usenetfs.codec.segment import KIND_DATA, SegmentId
from usenetfs.index import (
    DEAD,
    MISSING,
    PENDING,
    POSTED,
    ROOT_INODE,
    VERIFIED,
    BatchAborted,
    Exists,
    ExtentRow,
    FormatError,
    Index,
    InvalidMove,
    IsADirectory,
    NoSuchAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    extent,
    locate,
)
from usenetfs.index import layout, schema

MiB = 1 << 20
DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777
SCOPE = bytes(range(16))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture
def ix(path: Path):
    index = Index.create(path, scope_id=SCOPE)
    yield index
    problems = index.fsck()
    index.close()
    assert problems == []


def mkfile(ix: Index, name: bytes, size: int = 0, parent: int = ROOT_INODE) -> int:
    ino = ix.make_node(parent, name, REG, 1000, 1000).id
    if size:
        ix.update_inode(ino, size=size)
    return ino


def write_run(ix: Index, ino: int, offset: int, length: int, stride: int, *, post: bool = True) -> int:
    """Write [offset, offset+length) as a fresh run of segments; returns the first id."""
    count = -(-length // stride)
    last = length - (count - 1) * stride
    with ix.batch():
        first = ix.new_segment_run(1, count, stride, last)
        if ix.get_inode(ino).size < offset + length:
            ix.update_inode(ino, size=offset + length)
        ix.set_extents(ino, [extent(offset, length, first, 0, stride)])
    if post:
        for seg in range(first, first + count):
            assert ix.mark_posted(seg, 0, ix.segment(seg).payload_size + 100, seg)
    return first


def recount(path: Path) -> dict:
    """The statfs numbers by brute force, through a separate connection."""
    with sqlite3.connect(path) as db:
        inodes, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM inodes").fetchone()
        by_state = dict.fromkeys(range(5), 0)
        stored = garbage = 0
        std = int(db.execute("SELECT value FROM meta WHERE key = 'segment_size'").fetchone()[0])
        for state, n, size in db.execute(
            "SELECT state, count(*), coalesce(sum(coalesce(payload_size, ?) + stored_extra), 0) FROM segments "
            "GROUP BY state",
            (std,),
        ):
            by_state[state] = n
            if state == DEAD:
                garbage += size
            else:
                stored += size
    return {
        "inodes": inodes,
        "total_bytes": total,
        "garbage_bytes": garbage,
        "segments": tuple(by_state[s] for s in range(5)),
        "stored_bytes": stored,
    }


def row_refcounts(ix: Index, inodes) -> dict[int, int]:
    counts: dict[int, int] = {}
    for ino in inodes:
        for row in ix.extents(ino):
            for seg in range(row.segment, row.last_segment + 1):
                counts[seg] = counts.get(seg, 0) + 1
    return counts


def byte_map(rows: list[ExtentRow], size: int) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for piece in locate(rows, 0, size):
        for k in range(piece.length):
            out.append(None if piece.segment is None else (piece.segment, piece.segment_offset + k))
    return out


# ---------------------------------------------------------------------------- lifecycle


def test_create_makes_root_scope_and_wal(ix: Index, path: Path):
    root = ix.get_inode(ROOT_INODE)
    assert root.mode == DIR and root.nlink == 2 and root.parent == ROOT_INODE and root.size == 0
    assert ix.volume_id == SCOPE
    assert [(s.id, s.scope_id, s.root_inode, s.kind) for s in ix.scopes()] == [(1, SCOPE, 1, "volume")]
    assert ix.format_version == schema.FORMAT_VERSION
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(db.execute("SELECT key, value FROM meta"))["format_version"] == str(schema.FORMAT_VERSION)
    assert ix.stats() == (1, 0, 0, (0, 0, 0, 0, 0), 0)
    assert ix.stats() == tuple(recount(path).values())


def test_create_refuses_existing_and_open_refuses_non_index(tmp_path: Path, path: Path):
    Index.create(path).close()
    with pytest.raises(FormatError):
        Index.create(path)
    with pytest.raises(FormatError):
        Index.open(tmp_path / "nope.db")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(FormatError, match="not a usenetfs index"):
        Index.open(other)


def test_open_refuses_newer_format(path: Path):
    Index.create(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(schema.FORMAT_VERSION + 1),))
    with pytest.raises(FormatError, match="newer"):
        Index.open(path)


def test_migration_runs_each_step_once(path: Path, monkeypatch: pytest.MonkeyPatch):
    Index.create(path).close()
    calls = []

    def step(conn):
        calls.append(1)
        conn.exec_driver_sql("ALTER TABLE inodes ADD COLUMN flags INTEGER")

    monkeypatch.setattr(schema, "FORMAT_VERSION", schema.FORMAT_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, schema.FORMAT_VERSION - 1, step)
    with Index.open(path) as ix:
        assert ix.format_version == schema.FORMAT_VERSION
    with Index.open(path) as ix:  # already migrated: no second run
        assert ix.get_inode(ROOT_INODE).id == ROOT_INODE
    assert calls == [1]
    with sqlite3.connect(path) as db:
        assert "flags" in [r[1] for r in db.execute("PRAGMA table_info(inodes)")]


def _as_format_2(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE inodes DROP COLUMN alloc_next")
        db.execute("ALTER TABLE inodes DROP COLUMN alloc_end")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'format_version'")


def test_format_1_gets_the_orphans_index(path: Path):
    Index.create(path).close()
    _as_format_2(path)
    with sqlite3.connect(path) as db:  # what a format-1 index looks like
        db.execute("DROP INDEX inodes_orphans")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    with Index.open(path) as ix:
        assert ix.format_version == schema.FORMAT_VERSION
    with sqlite3.connect(path) as db:
        plan = db.execute("EXPLAIN QUERY PLAN SELECT id FROM inodes WHERE nlink = 0").fetchall()
    assert "inodes_orphans" in str(plan)  # the mount's orphan check is not a scan


def test_format_2_gets_inode_id_blocks(path: Path):
    with Index.create(path) as ix:
        d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0)
        a = mkfile(ix, b"a", 10, parent=d.id)
        ix.checkpoint("TRUNCATE")
    _as_format_2(path)
    with Index.open(path) as ix:
        assert ix.format_version == 3
        # Existing directories have no block yet: the next entry takes a first one.
        b = mkfile(ix, b"b", 10, parent=d.id)
        c = mkfile(ix, b"c", 10, parent=d.id)
        assert b > a and c == b + 1
        assert ix.fsck() == []


def test_engine_target_in_memory():
    engine = create_engine("sqlite://", poolclass=StaticPool)
    ix = Index.create(engine)
    f = mkfile(ix, b"a", 10)
    assert ix.lookup(ROOT_INODE, b"a") == f
    assert ix.fsck() == []
    ix.close()


# ---------------------------------------------------------------------------- inodes


def test_a_directorys_entries_take_ids_from_its_own_blocks(ix: Index, path: Path):
    from usenetfs.index.store import ENTRY_BLOCK, FIRST_BLOCK

    a = ix.make_node(ROOT_INODE, b"a", DIR, 0, 0).id
    b = ix.make_node(ROOT_INODE, b"b", DIR, 0, 0).id
    # Files arriving in the two folders alternately, as two copies running at once.
    ids: dict[int, list[int]] = {a: [], b: []}
    for k in range(FIRST_BLOCK + ENTRY_BLOCK + 3):
        for d in (a, b):
            ids[d].append(mkfile(ix, b"f%d" % k, parent=d))
    for d in (a, b):
        got = ids[d]
        runs = [got[:FIRST_BLOCK], got[FIRST_BLOCK:FIRST_BLOCK + ENTRY_BLOCK], got[FIRST_BLOCK + ENTRY_BLOCK:]]
        for run in runs:
            assert run == list(range(run[0], run[0] + len(run)))  # consecutive within a block
    every = ids[a] + ids[b] + [a, b]
    assert len(set(every)) == len(every)
    # A failed create (the name exists) takes nothing: the next one gets the next id.
    last = ids[a][-1]
    with pytest.raises(Exists):
        ix.make_node(a, b"f0", REG, 0, 0)
    assert mkfile(ix, b"new", parent=a) == last + 1
    # Also when it would have taken a new block: the counter comes back with the rollback.
    c = ix.make_node(ROOT_INODE, b"c", DIR, 0, 0).id
    for k in range(FIRST_BLOCK):
        mkfile(ix, b"f%d" % k, parent=c)
    before = ix._c["next_inode"]
    with pytest.raises(Exists):
        ix.make_node(c, b"f0", REG, 0, 0)
    assert ix._c["next_inode"] == before
    assert mkfile(ix, b"next", parent=c) == before
    # The block is in the index, not in memory: another Index (a later mount) goes on with it.
    with Index.open(path) as again:
        assert mkfile(again, b"after", parent=a) == last + 2
        assert again.fsck() == []


def test_fsck_drops_damaged_inode_id_blocks(ix: Index, path: Path):
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    e = ix.make_node(ROOT_INODE, b"e", DIR, 0, 0).id
    f = mkfile(ix, b"f", parent=d)
    mkfile(ix, b"g", parent=e)
    with sqlite3.connect(path) as db:
        block_e = db.execute("SELECT alloc_next, alloc_end FROM inodes WHERE id = ?", (e,)).fetchone()
        db.execute("UPDATE inodes SET alloc_next = ?, alloc_end = ? WHERE id = ?", (*block_e, d))  # shared
        db.execute("UPDATE inodes SET alloc_next = 7 WHERE id = ?", (f,))  # on a file
        db.execute("UPDATE inodes SET alloc_next = ?, alloc_end = ? WHERE id = 1", (f, f + 2))  # holds f
        db.execute("UPDATE counters SET next_inode = ?", (block_e[1] - 1,))  # behind a block
    problems = "\n".join(ix.fsck())
    assert "overlaps another" in problems
    assert f"inode {f}: malformed inode id block" in problems
    assert f"holds inode {f}" in problems
    assert "counter next_inode" in problems
    ix.fsck(repair=True)
    assert ix.fsck() == []
    used = {r[0] for r in sqlite3.connect(path).execute("SELECT id FROM inodes")}
    for parent in (ROOT_INODE, d, e):
        assert mkfile(ix, b"new", parent=parent) not in used


def test_inode_create_get_update(ix: Index):
    row = ix.create_inode(REG, 5, 6, now_ns=123)
    assert (row.mode, row.uid, row.gid, row.size, row.nlink, row.atime_ns, row.parent) == (REG, 5, 6, 0, 0, 123, None)
    assert ix.get_inode(row.id) == row
    new = ix.update_inode(row.id, uid=7, mtime_ns=99, mode=stat.S_IFREG | 0o600, size=42)
    assert new == ix.get_inode(row.id)
    assert (new.uid, new.mtime_ns, new.mode, new.size) == (7, 99, stat.S_IFREG | 0o600, 42)
    assert ix.stats().total_bytes == 42
    with pytest.raises(ValueError):
        ix.update_inode(row.id, nlink=3)
    with pytest.raises(ValueError):
        ix.update_inode(row.id, mode=DIR)
    with pytest.raises(NotFound) as e:
        ix.get_inode(999)
    assert e.value.errno == errno.ENOENT
    ix.link(ROOT_INODE, b"f", row.id)
    d = ix.create_inode(DIR, 0, 0)
    assert d.nlink == 1 and d.parent is None  # its own '.', not linked yet
    ix.link(ROOT_INODE, b"d", d.id)
    assert ix.get_inode(d.id).nlink == 2 and ix.get_inode(d.id).parent == ROOT_INODE
    assert ix.get_inode(ROOT_INODE).nlink == 3


def test_inode_ids_are_never_reused(ix: Index):
    a = ix.create_inode(REG, 0, 0).id
    ix.delete_inode(a)
    b = ix.create_inode(REG, 0, 0).id
    assert b > a
    ix.delete_inode(b)


def test_delete_inode_removes_everything(ix: Index):
    f = mkfile(ix, b"f")
    ix.set_xattr(f, b"user.a", b"1")
    first = write_run(ix, f, 0, 4 * MiB, MiB)
    assert ix.stats().stored_bytes == 4 * (MiB + 100)
    with pytest.raises(ValueError):
        ix.delete_inode(f)  # still linked
    assert ix.unlink(ROOT_INODE, b"f") == f
    assert ix.get_inode(f).nlink == 0
    ix.delete_inode(f)
    with pytest.raises(NotFound):
        ix.get_inode(f)
    assert ix.list_xattrs(f) == [] and ix.extents(f) == []
    for seg in range(first, first + 4):
        assert ix.segment(seg).state == DEAD and ix.segment(seg).refcount == 0
    s = ix.stats()
    assert s.garbage_bytes == 4 * (MiB + 100) and s.stored_bytes == 0 and s.segments == (0, 0, 0, 0, 4)
    assert s.total_bytes == 0 and s.inodes == 1
    with pytest.raises(ValueError):
        ix.delete_inode(ROOT_INODE)


def test_delete_symlink_inode(ix: Index):
    s = ix.make_node(ROOT_INODE, b"s", LNK, 0, 0, target=b"/x/y").id
    ix.unlink(ROOT_INODE, b"s")
    ix.delete_inode(s)
    with pytest.raises(NotFound):
        ix.get_symlink(s)


# ---------------------------------------------------------------------------- directory entries


def test_make_node_kinds_and_errors(ix: Index):
    d = ix.make_node(ROOT_INODE, b"d", DIR, 1, 2)
    assert (d.nlink, d.parent) == (2, ROOT_INODE)
    f = ix.make_node(d.id, b"f", REG, 1, 2)
    assert (f.nlink, f.parent) == (1, None)
    s = ix.make_node(d.id, b"s", LNK, 1, 2, target=b"../f")
    assert ix.get_symlink(s.id) == b"../f" and s.size == 4
    n = ix.make_node(d.id, b"fifo", stat.S_IFIFO | 0o600, 1, 2, rdev=0)
    assert ix.lookup(d.id, b"fifo") == n.id
    assert ix.get_inode(ROOT_INODE).nlink == 3
    assert ix.get_inode(d.id).nlink == 2
    with pytest.raises(Exists) as e:
        ix.make_node(d.id, b"f", REG, 0, 0)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(NotADirectory):
        ix.make_node(f.id, b"x", REG, 0, 0)
    with pytest.raises(NotFound):
        ix.make_node(999, b"x", REG, 0, 0)
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(ValueError):
            ix.make_node(d.id, bad, REG, 0, 0)
    with pytest.raises(ValueError):
        ix.make_node(d.id, b"l", LNK, 0, 0)  # symlink without target
    assert ix.stats().inodes == 5


def test_lookup_link_unlink(ix: Index):
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    f = mkfile(ix, b"f", parent=d)
    assert ix.lookup(d, b"f") == f and ix.lookup(d, b"g") is None
    assert ix.lookup_entry(d, b"f") == ix.get_inode(f) and ix.lookup_entry(d, b"g") is None
    row = ix.link(ROOT_INODE, b"hard", f, now_ns=5)
    assert row.nlink == 2 and row.ctime_ns == 5 and ix.get_inode(f) == row
    root = ix.get_inode(ROOT_INODE)
    assert root.mtime_ns == 5 and root.ctime_ns == 5
    with pytest.raises(Exists):
        ix.link(d, b"f", f)
    with pytest.raises(NotPermitted) as e:
        ix.link(ROOT_INODE, b"d2", d)
    assert e.value.errno == errno.EPERM
    with pytest.raises(NotADirectory):
        ix.link(f, b"x", f)
    with pytest.raises(NotFound):
        ix.link(ROOT_INODE, b"x", 999)
    with pytest.raises(NotEmpty) as e2:
        ix.unlink(ROOT_INODE, b"d")
    assert e2.value.errno == errno.ENOTEMPTY
    assert ix.unlink(d, b"f") == f and ix.get_inode(f).nlink == 1
    assert ix.unlink(ROOT_INODE, b"hard") == f and ix.get_inode(f).nlink == 0
    with pytest.raises(NotFound):
        ix.unlink(d, b"f")
    assert ix.is_empty_dir(d) and not ix.is_empty_dir(ROOT_INODE)
    assert ix.parent_of(d) == ROOT_INODE and ix.parent_of(ROOT_INODE) == ROOT_INODE
    assert ix.unlink(ROOT_INODE, b"d") == d
    assert ix.get_inode(d).nlink == 0 and ix.get_inode(ROOT_INODE).nlink == 2
    with pytest.raises(NotFound):
        ix.parent_of(d)
    ix.delete_inode(d)
    ix.delete_inode(f)


def test_rename_simple_and_cross_directory(ix: Index):
    a = ix.make_node(ROOT_INODE, b"a", DIR, 0, 0).id
    b = ix.make_node(ROOT_INODE, b"b", DIR, 0, 0).id
    sub = ix.make_node(a, b"sub", DIR, 0, 0).id
    f = mkfile(ix, b"f", parent=a)
    cookie = ix.readdir(a)[-1][0]
    assert ix.rename(a, b"f", a, b"g", now_ns=7) is None
    assert ix.lookup(a, b"f") is None and ix.lookup(a, b"g") == f
    assert ix.readdir(a)[-1][0] == cookie  # the cookie follows the entry
    assert ix.get_inode(f).ctime_ns == 7 and ix.get_inode(a).mtime_ns == 7
    assert ix.rename(a, b"sub", b, b"moved") is None
    assert ix.get_inode(sub).parent == b
    assert ix.get_inode(a).nlink == 2 and ix.get_inode(b).nlink == 3
    assert ix.rename(a, b"g", a, b"g") is None  # same name: nothing
    with pytest.raises(NotFound):
        ix.rename(a, b"nope", a, b"x")
    with pytest.raises(InvalidMove) as e:
        ix.rename(ROOT_INODE, b"b", sub, b"loop")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(InvalidMove):
        ix.rename(ROOT_INODE, b"b", b, b"self")
    with pytest.raises(NotADirectory):
        ix.rename(a, b"g", f, b"x")


def test_rename_replaces_target(ix: Index):
    f = mkfile(ix, b"f")
    g = mkfile(ix, b"g")
    first = write_run(ix, g, 0, 2 * MiB, MiB)
    target_cookie = [c for c, n, _ in ix.readdir(ROOT_INODE) if n == b"g"][0]
    with pytest.raises(Exists):
        ix.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", replace=False)
    assert ix.rename(ROOT_INODE, b"f", ROOT_INODE, b"g") == g
    assert ix.lookup(ROOT_INODE, b"g") == f and ix.lookup(ROOT_INODE, b"f") is None
    # The target's entry keeps its cookie: a listing in progress sees "g" once.
    assert [(c, n) for c, n, _ in ix.readdir(ROOT_INODE)] == [(target_cookie, b"g")]
    assert ix.get_inode(g).nlink == 0
    ix.delete_inode(g)
    assert ix.segment(first).state == DEAD
    # hard links of one inode: rename is a no-op
    ix.link(ROOT_INODE, b"h", f)
    assert ix.rename(ROOT_INODE, b"h", ROOT_INODE, b"g") is None
    assert ix.lookup(ROOT_INODE, b"h") == f and ix.get_inode(f).nlink == 2


def test_rename_directory_rules(ix: Index):
    d1 = ix.make_node(ROOT_INODE, b"d1", DIR, 0, 0).id
    d2 = ix.make_node(ROOT_INODE, b"d2", DIR, 0, 0).id
    full = ix.make_node(ROOT_INODE, b"full", DIR, 0, 0).id
    mkfile(ix, b"x", parent=full)
    f = mkfile(ix, b"f")
    with pytest.raises(NotADirectory):
        ix.rename(ROOT_INODE, b"d1", ROOT_INODE, b"f")
    with pytest.raises(IsADirectory) as e:
        ix.rename(ROOT_INODE, b"f", ROOT_INODE, b"d1")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(NotEmpty):
        ix.rename(ROOT_INODE, b"d1", ROOT_INODE, b"full")
    assert ix.get_inode(ROOT_INODE).nlink == 5
    assert ix.rename(ROOT_INODE, b"d1", ROOT_INODE, b"d2") == d2
    assert ix.get_inode(d2).nlink == 0 and ix.get_inode(ROOT_INODE).nlink == 4
    ix.delete_inode(d2)
    # replace an empty directory in another parent
    e2 = ix.make_node(full, b"e", DIR, 0, 0).id
    assert ix.rename(ROOT_INODE, b"d2", full, b"e") == e2
    assert ix.get_inode(d1).parent == full
    assert ix.get_inode(full).nlink == 3 and ix.get_inode(ROOT_INODE).nlink == 3
    ix.delete_inode(e2)
    assert ix.lookup(ROOT_INODE, b"f") == f


def test_readdir_pages_and_joins(ix: Index):
    names = [b"n%03d" % i for i in range(10)]
    inos = [mkfile(ix, n) for n in names]
    got = []
    cookie = 0
    while page := ix.readdir(ROOT_INODE, cookie, limit=3):
        got.extend(page)
        cookie = page[-1][0]
    assert [n for _, n, _ in got] == names
    assert [r.id for _, _, r in got] == inos
    assert all(r == ix.get_inode(r.id) for _, _, r in got)
    assert ix.readdir(999) == []


def test_readdir_stable_under_concurrent_changes(ix: Index):
    """Between two pages, entries are removed (seen and unseen), added and renamed.
    No inode is listed twice, and every entry present throughout is listed."""
    for i in range(30):
        mkfile(ix, b"a%02d" % i)
    throughout = {ix.lookup(ROOT_INODE, b"a%02d" % i) for i in range(30)}
    listed: list[int] = []
    cookies: list[int] = []
    cookie, step = 0, 0
    while page := ix.readdir(ROOT_INODE, cookie, limit=4):
        listed.extend(row.id for _, _, row in page)
        cookies.extend(c for c, _, _ in page)
        cookie = page[-1][0]
        step += 1
        names = [n for _, n, _ in ix.readdir(ROOT_INODE, 0, limit=1000)]
        unseen = [n for n in names if ix.lookup(ROOT_INODE, n) not in listed]
        seen = [n for n in names if ix.lookup(ROOT_INODE, n) in listed]
        for name in seen[:1] + unseen[-1:]:
            ino = ix.unlink(ROOT_INODE, name)
            ix.delete_inode(ino)
            throughout.discard(ino)
        if step <= 6:  # (adding forever would keep the listing going forever)
            mkfile(ix, b"new%02d" % step)
            mkfile(ix, b"new%02dx" % step)
        if len(unseen) > 2:  # a rename in place keeps the cookie: listed once, new name
            ix.rename(ROOT_INODE, unseen[0], ROOT_INODE, unseen[0] + b".renamed")
    assert len(listed) == len(set(listed)), "an entry was listed twice"
    assert cookies == sorted(cookies)
    assert throughout <= set(listed), "an entry present throughout was skipped"
    assert step > 6


# ---------------------------------------------------------------------------- symlinks, xattrs


def test_symlink_and_xattrs(ix: Index):
    s = ix.make_node(ROOT_INODE, b"s", LNK, 0, 0, target=b"a").id
    ix.set_symlink(s, b"longer/target")
    assert ix.get_symlink(s) == b"longer/target" and ix.get_inode(s).size == 13
    assert ix.stats().total_bytes == 13
    f = mkfile(ix, b"f")
    with pytest.raises(ValueError):
        ix.set_symlink(f, b"x")
    with pytest.raises(NotFound):
        ix.get_symlink(f)
    ix.set_xattr(f, b"user.b", b"2")
    ix.set_xattr(f, b"user.a", b"1")
    ix.set_xattr(f, b"user.a", b"one")
    assert ix.get_xattr(f, b"user.a") == b"one"
    assert ix.list_xattrs(f) == [b"user.a", b"user.b"]
    ix.remove_xattr(f, b"user.a")
    with pytest.raises(NoSuchAttribute) as e:
        ix.get_xattr(f, b"user.a")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(NoSuchAttribute):
        ix.remove_xattr(f, b"user.a")
    with pytest.raises(NotFound):
        ix.set_xattr(999, b"user.a", b"x")
    assert ix.list_xattrs(f) == [b"user.b"]


# ---------------------------------------------------------------------------- segments


def test_segment_lifecycle(ix: Index):
    f = mkfile(ix, b"f", 100)
    seg = ix.new_segment(1, 100)
    row = ix.segment(seg)
    assert (row.state, row.generation, row.refcount, row.stored_size, row.crc32, row.posted_s, row.checked_s) == (
        PENDING, 0, 0, None, None, None, None
    )
    assert row.payload_size == 100
    ix.set_extents(f, [extent(0, 100, seg)])
    assert ix.mark_failed(seg) == 1 and ix.mark_failed(seg) == 2
    assert ix.mark_posted(seg, 0, 140, 0xFFFFFFFF, now_ns=(ix.epoch_s + 600) * 10**9)
    row = ix.segment(seg)
    assert (row.state, row.stored_size, row.crc32, row.attempts, row.posted_s) == (
        POSTED, 140, 0xFFFFFFFF, 0, ix.epoch_s + 600
    )
    assert ix.stats().segments == (0, 1, 0, 0, 0) and ix.stats().stored_bytes == 140
    assert ix.mark_verified(seg, 0, now_ns=(ix.epoch_s + 725) * 10**9)
    assert ix.segment(seg).state == VERIFIED
    assert ix.segment(seg).checked_s == ix.epoch_s + 720  # minute resolution
    assert not ix.mark_missing(seg, generation=5)  # stale generation
    assert ix.mark_missing(seg, 0)
    row = ix.segment(seg)
    assert (row.state, row.generation) == (MISSING, 1)
    assert not ix.mark_verified(seg)  # not posted again yet
    assert not ix.mark_posted(seg, 0, 150, 1)  # a late 240 of generation 0: stale
    assert ix.mark_posted(seg, 1, 150, 2)
    assert ix.stats().stored_bytes == 150
    assert ix.mark_verified(seg) and ix.mark_verified(seg)  # re-verification is fine
    assert ix.segment_ident(ix.segment(seg)) == SegmentId(SCOPE, KIND_DATA, seg)
    assert ix.stats().segments == (0, 0, 1, 0, 0)
    with pytest.raises(NotFound):
        ix.segment(999)
    with pytest.raises(NotFound):
        ix.mark_posted(999, 0, 1, 1)
    with pytest.raises(NotFound):
        ix.new_segment(7, 100)
    with pytest.raises(ValueError):
        ix.mark_posted(seg, 1, 1, 1 << 32)


def test_segment_run_ids_are_consecutive(ix: Index):
    f = mkfile(ix, b"f", 25)
    first = ix.new_segment_run(1, 3, 10, 5)
    assert [ix.segment(s).payload_size for s in range(first, first + 3)] == [10, 10, 5]
    nxt = ix.new_segment(1, 7)
    assert nxt == first + 3
    ix.set_extents(f, [extent(0, 25, first, 0, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 25, first, 0, 3, 10)]
    assert ix.discard_segment(nxt) and ix.segment(nxt).state == DEAD
    assert not ix.discard_segment(first)  # referenced: stays


def test_discard_unreferenced_buries_only_the_unreferenced_of_a_run(ix: Index):
    # An upload of 4 segments committed after its file shrank to the first 1.5: the last
    # two got no extent. They die (their posted bytes garbage); the referenced ones stay.
    f = mkfile(ix, b"f", 40)
    first = ix.new_segment_run(1, 4, 10)
    for seg in range(first, first + 4):
        ix.mark_posted(seg, 0, 30, 1)
        ix.mark_verified(seg)
    ix.truncate(f, 15)
    ix.set_extents(f, [extent(0, 15, first, 0, 10)])
    assert ix.stats().stored_bytes == 120 and ix.stats().garbage_bytes == 0
    ix.discard_unreferenced(first, first + 3)
    assert [ix.segment(s).state for s in range(first, first + 4)] == [VERIFIED, VERIFIED, DEAD, DEAD]
    assert ix.stats().stored_bytes == 60 and ix.stats().garbage_bytes == 60
    ix.discard_unreferenced(first, first + 3)  # counted once
    assert ix.stats().garbage_bytes == 60
    assert ix.fsck() == []


def test_compact_segment_encoding(ix: Index, path: Path):
    """Standard-size payloads are stored as NULL, stored sizes as the small overhead; the
    API still reports the real numbers."""
    std = ix.segment_size
    assert std == schema.DEFAULT_SEGMENT_SIZE
    f = mkfile(ix, b"f", std + 10)
    first = ix.new_segment_run(1, 2, std, 10)
    ix.set_extents(f, [extent(0, std + 10, first, 0, std)])
    ix.mark_posted(first, 0, std + 37, 1)
    ix.mark_posted(first + 1, 0, 10 + 37, 2)
    with sqlite3.connect(path) as db:
        raw = db.execute("SELECT payload_size, stored_extra FROM segments ORDER BY id").fetchall()
    assert raw == [(None, 37), (10, 37)]
    assert [(ix.segment(s).payload_size, ix.segment(s).stored_size) for s in (first, first + 1)] == [
        (std, std + 37), (10, 47)
    ]
    assert ix.stats().stored_bytes == std + 37 + 47
    ix.truncate(f, 0)
    assert ix.stats().garbage_bytes == std + 37 + 47 and ix.stats().stored_bytes == 0


def test_pending_segments_queue(ix: Index):
    f = mkfile(ix, b"f", 50)
    first = ix.new_segment_run(1, 5, 10)
    ix.set_extents(f, [extent(0, 50, first, 0, 10)])
    ix.mark_posted(first, 0, 20, 1)
    ix.mark_posted(first + 1, 0, 20, 1)
    ix.mark_verified(first + 1)
    ix.mark_posted(first + 2, 0, 20, 1)
    ix.mark_verified(first + 2)
    ix.mark_missing(first + 2)
    got = ix.pending_segments()
    assert [(s.id, s.state) for s in got] == [(first, POSTED), (first + 2, MISSING), (first + 3, PENDING),
                                             (first + 4, PENDING)]
    assert [s.id for s in ix.pending_segments(limit=2)] == [first, first + 2]
    assert [s.id for s in ix.pending_segments(limit=2, after=first + 2)] == [first + 3, first + 4]


def test_posted_after_death_counts_as_garbage(ix: Index):
    f = mkfile(ix, b"f", 10)
    seg = ix.new_segment(1, 10)
    ix.set_extents(f, [extent(0, 10, seg)])
    ix.truncate(f, 0)  # the upload is still in flight
    assert ix.segment(seg).state == DEAD and ix.stats().garbage_bytes == 0
    assert not ix.mark_posted(seg, 0, 60, 9)
    assert ix.stats().garbage_bytes == 60
    assert not ix.mark_posted(seg, 0, 60, 9)  # counted once
    assert ix.stats().garbage_bytes == 60 and ix.segment(seg).state == DEAD


def test_pending_segment_survives_a_crash(path: Path):
    """The intent row is committed before the POST: a process killed right after
    (no close, no checkpoint: the row is only in the WAL) leaves it for the uploader."""
    code = f"""
import os
from usenetfs.index import Index, extent
ix = Index.create({str(path)!r})
f = ix.make_node(1, b"f", 0o100644, 0, 0).id
ix.update_inode(f, size=10)
seg = ix.new_segment(1, 10)
ix.set_extents(f, [extent(0, 10, seg)])
with ix.batch():
    ix.new_segment(1, 10)
    print(seg, flush=True)
    os._exit(0)  # dies inside a batch: that one must not survive
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seg = int(out.stdout)
    assert Path(str(path) + "-wal").stat().st_size > 0
    with Index.open(path) as again:
        assert [(s.id, s.state) for s in again.pending_segments()] == [(seg, PENDING)]
        assert again.stats().segments == (1, 0, 0, 0, 0)
        assert again.fsck() == []
        assert again.new_segment(1, 5) == seg + 1
        again.discard_segment(seg + 1)


# ---------------------------------------------------------------------------- extents


def test_overwrite_inside_a_run(ix: Index):
    f = mkfile(ix, b"f")
    first = write_run(ix, f, 0, 10 * MiB, MiB)
    assert ix.extents(f) == [ExtentRow(f, 0, 10 * MiB, first, 0, 10, MiB)]
    assert all(ix.segment(s).refcount == 1 for s in range(first, first + 10))
    new = write_run(ix, f, 3 * MiB, MiB, MiB)
    assert ix.extents(f) == [
        ExtentRow(f, 0, 3 * MiB, first, 0, 3, MiB),
        ExtentRow(f, 3 * MiB, MiB, new, 0, 1, MiB),
        ExtentRow(f, 4 * MiB, 6 * MiB, first + 4, 0, 6, MiB),
    ]
    assert ix.segment(first + 3).state == DEAD and ix.segment(first + 3).refcount == 0
    assert all(ix.segment(s).refcount == 1 for s in range(first, first + 10) if s != first + 3)
    s = ix.stats()
    assert s.garbage_bytes == MiB + 100
    assert s.stored_bytes == 10 * (MiB + 100)
    assert s.segments == (0, 10, 0, 0, 1)
    assert ix.extent_at(f, 3 * MiB + 5) == ExtentRow(f, 3 * MiB, MiB, new, 0, 1, MiB)
    assert ix.extent_at(f, 0).segment == first


def test_overwrite_unaligned_keeps_shared_segments(ix: Index):
    stride = 716_800
    f = mkfile(ix, b"f")
    first = write_run(ix, f, 0, 10 * MiB, stride)
    count = -(-10 * MiB // stride)
    before = ix.extents(f)
    new = write_run(ix, f, 3 * MiB, MiB, stride)
    rows = ix.extents(f)
    assert len(rows) == 3
    # the split run still maps every old byte where it was
    for start, end in ((0, 3 * MiB), (4 * MiB, 10 * MiB), (3 * MiB - 7, 3 * MiB)):
        assert locate(rows, start, end) == locate(before, start, end)
    assert locate(rows, 3 * MiB, 4 * MiB) == [
        layout.Piece(3 * MiB, stride, new, 0),
        layout.Piece(3 * MiB + stride, MiB - stride, new + 1, 0),
    ]
    # segments 4 and 5 of the run hold bytes on both sides of the hole: still live
    counts = row_refcounts(ix, [f])
    for seg in range(first, first + count):
        assert ix.segment(seg).refcount == counts.get(seg, 0)
        assert (ix.segment(seg).state == DEAD) == (seg not in counts)
    assert ix.stats().garbage_bytes == 0  # no segment of the run lost all its bytes


def test_sequential_pieces_merge_into_one_row(ix: Index):
    f = mkfile(ix, b"f", 40)
    first = ix.new_segment_run(1, 4, 10)
    for k in range(4):  # written segment by segment, as a write-back flush would
        ix.set_extents(f, [extent(10 * k, 10, first + k, 0, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 40, first, 0, 4, 10)]
    assert [ix.segment(s).refcount for s in range(first, first + 4)] == [1, 1, 1, 1]
    # two pieces written into one packed segment, in order, also merge
    g = mkfile(ix, b"g", 8)
    seg = ix.new_segment(1, 64)
    ix.set_extents(g, [extent(0, 5, seg, 20, 64)])
    ix.set_extents(g, [extent(5, 3, seg, 25, 64)])
    assert ix.extents(g) == [ExtentRow(g, 0, 8, seg, 20, 1, 64)]
    assert ix.segment(seg).refcount == 1


def test_packed_small_files_share_a_segment(ix: Index):
    seg = ix.new_segment(1, 300)
    files = []
    for k in range(3):
        f = mkfile(ix, b"s%d" % k, 100)
        ix.set_extents(f, [extent(0, 100, seg, 100 * k, 300)])
        files.append(f)
    assert ix.segment(seg).refcount == 3
    ix.mark_posted(seg, 0, 340, 1)
    for k, f in enumerate(files):
        ix.unlink(ROOT_INODE, b"s%d" % k)
        ix.delete_inode(f)
        assert ix.segment(seg).refcount == 2 - k
        assert (ix.segment(seg).state == DEAD) == (k == 2)
    assert ix.stats().garbage_bytes == 340


def test_replace_extents_is_the_whole_map(ix: Index):
    f = mkfile(ix, b"f", 40)
    first = ix.new_segment_run(1, 4, 10)
    ix.set_extents(f, [extent(0, 40, first, 0, 10)])
    fresh = ix.new_segment(1, 10)
    # keep segment `first` for bytes 0..10, new data at 20..30, holes elsewhere
    ix.replace_extents(f, [extent(20, 10, fresh, 0, 10), extent(0, 10, first, 0, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 10, first, 0, 1, 10), ExtentRow(f, 20, 10, fresh, 0, 1, 10)]
    assert [ix.segment(s).state for s in range(first, first + 4)] == [PENDING, DEAD, DEAD, DEAD]
    assert ix.segment(first).refcount == 1 and ix.segment(fresh).refcount == 1
    # contiguous pieces given separately are stored as one row
    ix.replace_extents(f, [extent(0, 5, first, 0, 10), extent(5, 5, first, 5, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 10, first, 0, 1, 10)]
    assert ix.segment(fresh).state == DEAD
    with pytest.raises(ValueError, match="overlap"):
        ix.replace_extents(f, [extent(0, 5, first, 0, 10), extent(4, 5, first, 4, 10)])
    with pytest.raises(ValueError, match="dead"):
        ix.replace_extents(f, [extent(0, 10, fresh, 0, 10)])
    ix.replace_extents(f, [])
    assert ix.extents(f) == [] and ix.segment(first).state == DEAD
    assert ix.stats().segments == (0, 0, 0, 0, 5)


def test_replace_extent_range_touches_only_its_range(ix: Index):
    f = mkfile(ix, b"f", 60)
    old = ix.new_segment_run(1, 6, 10)
    ix.set_extents(f, [extent(0, 60, old, 0, 10)])
    # A streamed upload committed [0, 30); the rest [30, 60) follows as its own run, which
    # the allocator placed right after: the two runs merge into one row.
    part1 = ix.new_segment_run(1, 3, 10)
    ix.replace_extent_range(f, 0, 30, [extent(0, 30, part1, 0, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 30, part1, 0, 3, 10), ExtentRow(f, 30, 30, old + 3, 0, 3, 10)]
    assert [ix.segment(s).state for s in range(old, old + 6)] == [DEAD] * 3 + [PENDING] * 3
    part2 = ix.new_segment_run(1, 3, 10)
    assert part2 == part1 + 3
    ix.replace_extent_range(f, 30, 1 << 40, [extent(30, 30, part2, 0, 10)])
    assert ix.extents(f) == [ExtentRow(f, 0, 60, part1, 0, 6, 10)]
    assert ix.stats().segments[4] == 6  # the whole old run is garbage now
    # A range with no rows is a hole; rows outside the range are refused.
    ix.replace_extent_range(f, 10, 20, [])
    assert [(r.offset, r.length) for r in ix.extents(f)] == [(0, 10), (20, 40)]
    with pytest.raises(ValueError, match="outside"):
        ix.replace_extent_range(f, 10, 20, [extent(0, 30, part1, 0, 10)])
    assert ix.fsck() == []


def test_punch_hole(ix: Index):
    f = mkfile(ix, b"f", 40)
    first = ix.new_segment_run(1, 4, 10)
    ix.set_extents(f, [extent(0, 40, first, 0, 10)])
    ix.punch_hole(f, 5, 25)
    assert ix.extents(f) == [ExtentRow(f, 0, 5, first, 0, 1, 10), ExtentRow(f, 25, 15, first + 2, 5, 2, 10)]
    assert [ix.segment(s).state for s in range(first, first + 4)] == [PENDING, DEAD, PENDING, PENDING]
    assert ix.get_inode(f).size == 40
    ix.punch_hole(f, 7, 7)  # empty: nothing
    ix.punch_hole(f, 0, 100)
    assert ix.extents(f) == [] and ix.stats().segments == (0, 0, 0, 0, 4)
    with pytest.raises(ValueError):
        ix.punch_hole(f, 5, 4)


def test_set_extents_validation(ix: Index):
    f = mkfile(ix, b"f", 10)
    seg = ix.new_segment(1, 10)
    with pytest.raises(ValueError, match="beyond the size"):
        ix.set_extents(f, [extent(0, 20, seg, 0, 20)])
    with pytest.raises(NotFound):
        ix.set_extents(f, [extent(0, 10, seg + 1)])
    with pytest.raises(NotFound):
        ix.set_extents(999, [extent(0, 10, seg)])
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    with pytest.raises(ValueError):
        ix.set_extents(d, [extent(0, 10, seg)])
    with pytest.raises(ValueError):
        ix.set_extents(f, [ExtentRow(f, 0, 10, seg, 0, 2, 10)])  # wrong run
    ix.set_extents(f, [extent(0, 10, seg)])
    ix.truncate(f, 0)
    ix.truncate(f, 10)
    with pytest.raises(ValueError, match="dead"):
        ix.set_extents(f, [extent(0, 10, seg)])


def test_truncate(ix: Index):
    f = mkfile(ix, b"f")
    first = write_run(ix, f, 0, 10 * MiB, MiB)
    row = ix.truncate(f, 5 * MiB + 10, mtime_ns=3)
    assert row.size == 5 * MiB + 10 and row.mtime_ns == 3 and ix.get_inode(f) == row
    assert ix.extents(f) == [ExtentRow(f, 0, 5 * MiB + 10, first, 0, 6, MiB)]
    assert [ix.segment(s).state == DEAD for s in range(first, first + 10)] == [False] * 6 + [True] * 4
    assert ix.stats().garbage_bytes == 4 * (MiB + 100)
    ix.truncate(f, 20 * MiB)  # growing leaves a hole, drops nothing
    assert ix.extents(f) == [ExtentRow(f, 0, 5 * MiB + 10, first, 0, 6, MiB)]
    assert ix.extent_at(f, 6 * MiB) is None
    pieces = locate(ix.extents(f), 5 * MiB, 5 * MiB + 20)
    assert pieces == [layout.Piece(5 * MiB, 10, first + 5, 0), layout.Piece(5 * MiB + 10, 10, None, 0)]
    ix.update_inode(f, size=0)
    assert ix.extents(f) == []
    assert ix.stats().segments == (0, 0, 0, 0, 10) and ix.stats().total_bytes == 0


# ---------------------------------------------------------------------------- transactions


def test_batch_is_one_transaction(ix: Index, path: Path):
    with ix.batch():
        f = mkfile(ix, b"f", 5)
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT count(*) FROM inodes").fetchone()[0] == 1  # not visible yet
        with pytest.raises(Exists):
            mkfile(ix, b"f")  # a domain error before any write: the batch goes on
        g = mkfile(ix, b"g", 5)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT count(*) FROM inodes").fetchone()[0] == 3
    assert ix.lookup(ROOT_INODE, b"g") == g and ix.lookup(ROOT_INODE, b"f") == f


def test_batch_rolls_back_on_exception(ix: Index):
    before = ix.stats()
    with pytest.raises(RuntimeError):
        with ix.batch():
            mkfile(ix, b"f", 100)
            ix.new_segment_run(1, 5, 10)
            raise RuntimeError("boom")
    assert ix.lookup(ROOT_INODE, b"f") is None
    assert ix.stats() == before
    assert ix.new_segment(1, 10) == 1  # the rolled-back allocation is not lost track of
    ix.discard_segment(1)


def test_failure_after_a_write_dooms_the_batch(ix: Index, monkeypatch: pytest.MonkeyPatch):
    before = ix.stats()
    real = ix._apply_refcounts

    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(BatchAborted):
        with ix.batch():
            f = mkfile(ix, b"f", 10)
            seg = ix.new_segment(1, 10)
            monkeypatch.setattr(ix, "_apply_refcounts", broken)
            try:
                ix.set_extents(f, [extent(0, 10, seg)])  # fails after writing the extent row
            except sqlite3.OperationalError:
                pass  # swallowed by the caller: the batch must still not commit
            monkeypatch.setattr(ix, "_apply_refcounts", real)
    assert ix.lookup(ROOT_INODE, b"f") is None and ix.stats() == before


def test_counters_follow_another_writer(path: Path):
    a = Index.create(path)
    b = Index.open(path)
    mkfile(a, b"x", 10)
    mkfile(b, b"y", 20)  # b reloads the counters a committed
    mkfile(a, b"z", 30)
    assert a.stats() == b.stats() == tuple(recount(path).values())
    assert a.stats().inodes == 4 and a.stats().total_bytes == 60
    b.close()
    assert a.fsck() == []
    a.close()


# ---------------------------------------------------------------------------- query plans


def test_hot_queries_use_indexes(ix: Index):
    # enough rows that a bad plan would show: a few hundred entries, extents and segments
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    with ix.batch():
        for i in range(200):
            f = mkfile(ix, b"f%d" % i, 100, parent=d)
            seg = ix.new_segment(1, 100)
            ix.set_extents(f, [extent(0, 50, seg, 0, 100), extent(50, 30, seg, 60, 100)])
    for analyzed in (False, True):  # the index never runs ANALYZE, but someone might
        if analyzed:
            ix._q("ANALYZE")
        for name in ("get_inode", "lookup", "lookup_entry", "entry", "readdir", "has_children", "extent_at",
                     "extents", "extents_near", "segment", "pending_segments", "segment_range_check", "dying",
                     "get_xattr"):
            plan = ix.query_plan(name)
            assert plan, name
            for step in plan:
                assert not step.startswith("SCAN"), (name, analyzed, plan)
        assert any("dentries_readdir" in s for s in ix.query_plan("readdir"))
        assert any("segments_queue" in s for s in ix.query_plan("pending_segments"))
        assert any("PRIMARY KEY (inode=? AND offset<?)" in s for s in ix.query_plan("extent_at"))
        assert ix.query_plan("lookup") == ["SEARCH dentries USING PRIMARY KEY (parent=? AND name=?)"]


def test_every_statement_a_mount_runs_is_an_index_search(ix: Index):
    """Not only the named hot statements: every one the Index runs for the calls a mount
    makes (traced while they run) reads rows through an index, never a table scan nor a
    sort of what it read. At 30M segments and 3.3M inodes either is seconds a call."""
    import re

    SEG = ix.segment_size

    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    with ix.batch():  # enough rows that a bad plan would show
        for i in range(200):
            f = mkfile(ix, b"f%d" % i, 100, parent=d)
            seg = ix.new_segment(1, 100)
            ix.set_extents(f, [extent(0, 50, seg, 0, 100), extent(50, 30, seg, 60, 100)])
    statements: dict[str, str] = {}

    def trace(sql: str) -> None:
        shape = re.sub(r"X'[0-9A-Fa-f]*'|'[^']*'|\b\d+\b", "?", sql)
        statements.setdefault(shape, sql)

    ix._db.set_trace_callback(trace)
    try:
        # what the FUSE operations, the uploader and the mount's start and end call
        sub = ix.make_node(d, b"sub", DIR, 0, 0).id
        f = ix.make_node(sub, b"file", REG, 0, 0).id
        ix.lookup_entry(sub, b"file"), ix.lookup(sub, b"file"), ix.get_inode(f), ix.parent_of(sub)
        ix.readdir(d, 0, 50), ix.readdir(d, 5, 50), ix.is_empty_dir(sub)
        ix.update_inode(f, mode=REG | 0o600, mtime_ns=5)
        first = ix.new_segment_run(1, 3, SEG, 100)
        ix.mark_failed(first)
        for seg in range(first, first + 3):
            ix.mark_stored(seg, 0, 1, SEG + 40, 7)
            ix.mark_verified(seg, 1)
        ix.mark_missing(first + 2, 1)
        ix.mark_posted(first + 2, 2, SEG + 40, 9)
        ix.segment(first), ix.pending_segments(100), ix.pending_segments(100, first)
        ix.update_inode(f, size=2 * SEG + 100)
        with ix.batch():
            ix.set_extents(f, [extent(0, 2 * SEG + 100, first, 0, SEG)])
        ix.extents(f), ix.extent_at(f, SEG + 5)
        ix.punch_hole(f, 10, 20)
        ix.truncate(f, SEG)
        ix.replace_extents(f, [extent(0, 100, first, 0, SEG)])
        ix.set_xattr(f, b"user.a", b"1"), ix.get_xattr(f, b"user.a"), ix.list_xattrs(f)
        ix.remove_xattr(f, b"user.a")
        link = ix.make_node(sub, b"link", LNK, 0, 0, target=b"file")
        ix.get_symlink(link.id)
        ix.link(d, b"hard", f)
        ix.rename(d, b"hard", sub, b"moved")
        ix.rename(sub, b"link", sub, b"moved")  # over an existing name
        ix.rename(d, b"sub", ROOT_INODE, b"sub2")  # a directory elsewhere
        spare = ix.new_segment(1, 10)
        ix.discard_segment(spare)
        for name in (b"file", b"moved"):
            ix.unlink(sub, name)
        ix.orphans()
        for ino in ix.orphans():
            ix.delete_inode(ino)
        ix.unlink(ROOT_INODE, b"sub2")
        ix.delete_inode(sub)
        ix.stats()
    finally:
        ix._db.set_trace_callback(None)
    checked = 0
    for sql in statements.values():
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")):
            continue  # BEGIN, COMMIT, PRAGMA
        plan = [row[3] for row in ix._q("EXPLAIN QUERY PLAN " + sql)]
        checked += 1
        for step in plan:
            # the orphans index holds only unlinked inodes: walking it is the point
            assert not step.startswith("SCAN") or "inodes_orphans" in step, (sql, plan)
            # The upload queue's page sorts at most `limit` rows per queued state: SQLite
            # stops reading each IN value once its LIMIT sorter is full (measured: a walk
            # of a 200,000-row queue in pages of 1,000 takes 0.2 s, linear).
            if "segments_queue" not in sql:
                assert "TEMP B-TREE FOR ORDER BY" not in step, (sql, plan)
    assert checked > 40


# ---------------------------------------------------------------------------- fsck


def test_fsck_detects_and_repairs_broken_refcount(ix: Index, path: Path):
    f = mkfile(ix, b"f")
    first = write_run(ix, f, 0, 3 * MiB, MiB)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE segments SET refcount = 5 WHERE id = ?", (first + 1,))
    problems = ix.fsck()
    assert problems == [f"segment {first + 1}: refcount 5, referenced by 1 extent(s)"]
    assert ix.fsck(repair=True) == problems
    assert ix.segment(first + 1).refcount == 1
    assert ix.fsck() == []


def test_fsck_repairs_namespace_damage(ix: Index, path: Path):
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    f = mkfile(ix, b"f", 10, parent=d)
    g = mkfile(ix, b"g", 10)
    orphan = ix.create_inode(REG, 0, 0).id  # unlinked while open at a "crash"
    seg = ix.new_segment(1, 10)
    ix.update_inode(orphan, size=10)
    ix.set_extents(orphan, [extent(0, 10, seg)])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO dentries (parent, name, id, inode) VALUES (1, 'dangling', 900, 777)")
        db.execute("DELETE FROM dentries WHERE inode = ?", (g,))  # g is lost: nlink 1, no name
        db.execute("UPDATE inodes SET nlink = 9 WHERE id = ?", (f,))
        db.execute("INSERT INTO xattrs VALUES (888, 'user.x', 'v')")
        db.execute("UPDATE counters SET inodes = 42")
    problems = ix.fsck()
    text = "\n".join(problems)
    assert "missing inode 777" in text
    assert f"inode {orphan} is orphaned" in text
    assert f"inode {g} has nlink 1 but no name" in text
    assert f"inode {f}: nlink 9" in text
    assert "xattrs rows of missing inode 888" in text
    assert "counter inodes is 42" in text
    ix.fsck(repair=True)
    assert ix.fsck() == []
    lf = ix.lookup(ROOT_INODE, b"lost+found")
    assert ix.lookup(lf, b"#%d" % g) == g
    with pytest.raises(NotFound):
        ix.get_inode(orphan)
    assert ix.segment(seg).state == DEAD
    assert ix.stats() == tuple(recount(path).values())


def test_fsck_repairs_extent_and_segment_damage(ix: Index, path: Path):
    f = mkfile(ix, b"f")
    first = write_run(ix, f, 0, 4 * MiB, MiB)
    stray = ix.new_segment(1, 10)  # intent never used: no extents
    with sqlite3.connect(path) as db:
        db.execute("UPDATE inodes SET size = ? WHERE id = ?", (2 * MiB + 1, f))  # extents beyond EOF
        db.execute("UPDATE segments SET state = 4 WHERE id = ?", (first,))  # referenced but dead
        db.execute("INSERT INTO inodes SELECT ?, mode, uid, gid, 5, atime_ns, mtime_ns, ctime_ns, 1, 0, 0, "
                   "NULL, NULL, NULL FROM inodes WHERE id = ?", (f + 100, f))
        db.execute("INSERT INTO dentries VALUES (1, 'h', 1000, ?)", (f + 100,))
        db.execute("UPDATE counters SET next_inode = ?, next_dentry = 1001", (f + 101,))
        db.execute("INSERT INTO extents VALUES (?, 0, 5, 99999, 0, 1, 5)", (f + 100,))
    problems = "\n".join(ix.fsck())
    assert f"pending segment {stray} has no extents" in problems
    assert "beyond the size" in problems
    assert f"dead segment {first} is referenced" in problems
    assert "missing segments" in problems
    ix.fsck(repair=True)
    assert ix.fsck() == []
    assert ix.segment(stray).state == DEAD
    assert ix.segment(first).state == POSTED  # back to the upload queue for a read-back
    assert ix.segment(first + 2).state == POSTED and ix.segment(first + 3).state == DEAD
    assert ix.extents(f + 100) == [] and ix.extents(f) == [ExtentRow(f, 0, 2 * MiB + 1, first, 0, 3, MiB)]
    assert ix.stats() == tuple(recount(path).values())


def test_fsck_breaks_directory_cycles(ix: Index, path: Path):
    a = ix.make_node(ROOT_INODE, b"a", DIR, 0, 0).id
    b = ix.make_node(a, b"b", DIR, 0, 0).id
    with sqlite3.connect(path) as db:  # a's entry moves under b: a <-> b, detached
        db.execute("UPDATE dentries SET parent = ? WHERE inode = ?", (b, a))
    assert any("directory cycle" in p for p in ix.fsck())
    ix.fsck(repair=True)
    assert ix.fsck() == []
    lf = ix.lookup(ROOT_INODE, b"lost+found")
    assert {ix.get_inode(a).parent, ix.get_inode(b).parent} >= {lf}


# ---------------------------------------------------------------------------- layout (pure)


def test_layout_locate_and_deltas():
    rows = [ExtentRow(1, 0, 25, 10, 0, 3, 10), ExtentRow(1, 30, 5, 20, 7, 2, 10)]
    assert locate(rows, 0, 40) == [
        layout.Piece(0, 10, 10, 0), layout.Piece(10, 10, 11, 0), layout.Piece(20, 5, 12, 0),
        layout.Piece(25, 5, None, 0), layout.Piece(30, 3, 20, 7), layout.Piece(33, 2, 21, 0),
        layout.Piece(35, 5, None, 0),
    ]
    assert locate(rows, 22, 23) == [layout.Piece(22, 1, 12, 2)]
    assert layout.net_deltas([(1, 10, -1), (1, 3, 1), (8, 10, 1)]) == [(4, 7, -1)]
    assert layout.net_deltas([(5, 5, 1), (5, 5, 1), (6, 7, 2)]) == [(5, 7, 2)]
    assert layout.net_deltas([(1, 2, 1), (1, 2, -1)]) == []
    assert extent(0, 10, 5, 25, 10) == ExtentRow(0, 0, 10, 7, 5, 2, 10)  # offset normalised


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_layout_splice_matches_a_byte_model(data):
    size = 60
    model: list[tuple[int, int] | None] = [None] * size
    rows: list[ExtentRow] = []
    next_seg = 1
    for _ in range(data.draw(st.integers(1, 8))):
        start = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(1, size - start))
        stride = data.draw(st.sampled_from([4, 7, 16]))
        inner = data.draw(st.integers(0, stride - 1))
        new = extent(start, length, next_seg, inner, stride, inode=1)
        next_seg += new.run
        old = [r for r in rows if r.end >= new.offset and r.offset <= new.end]
        rows = sorted([r for r in rows if r not in old] + layout.splice(old, new))
        for p in range(start, start + length):
            v = inner + (p - start)
            model[p] = (new.segment + v // stride, v % stride)
        assert byte_map(rows, size) == model
        for a, b in zip(rows, rows[1:]):
            assert a.end <= b.offset and not layout.contiguous(a, b)
        for r in rows:
            layout.check(r)
        cut = data.draw(st.integers(0, size))
        assert byte_map(layout.truncated(rows, cut), cut) == model[:cut]


# ---------------------------------------------------------------------------- random operations


class IndexMachine(RuleBasedStateMachine):
    """Random namespace and write/truncate/upload operations against a byte model.

    After every step: each file's bytes map where the model says, refcounts equal the
    rows covering each segment, a segment is dead exactly when nothing covers it, the
    incremental counters equal a brute-force recount, and fsck finds nothing.
    """

    @initialize()
    def setup(self):
        self.engine = create_engine("sqlite://", poolclass=StaticPool)
        self.ix = Index.create(self.engine)
        self.files: dict[bytes, int] = {}
        self.model: dict[int, list[tuple[int, int] | None]] = {}
        self.segments: list[int] = []
        self.dirs = [ROOT_INODE]

    def teardown(self):
        if hasattr(self, "ix"):
            self.ix.close()

    @rule(name=st.sampled_from([b"a", b"b", b"c", b"d", b"e"]), in_dir=st.booleans())
    def create(self, name, in_dir):
        if name in self.files:
            return
        parent = self.dirs[-1] if in_dir else ROOT_INODE
        if in_dir and len(self.dirs) == 1:
            parent = self.ix.make_node(ROOT_INODE, b"dir%d" % len(self.dirs), DIR, 0, 0).id
            self.dirs.append(parent)
        ino = self.ix.make_node(parent, name, REG, 0, 0).id
        self.files[name] = ino
        self.model[ino] = []

    @precondition(lambda self: self.files)
    @rule(data=st.data(), stride=st.sampled_from([4, 8, 13]))
    def write(self, data, stride):
        name = data.draw(st.sampled_from(sorted(self.files)))
        ino = self.files[name]
        start = data.draw(st.integers(0, 40))
        length = data.draw(st.integers(1, 24))
        inner = data.draw(st.integers(0, stride - 1))
        reuse = [s for s in self.segments if self.ix.segment(s).state != DEAD]
        with self.ix.batch():
            if reuse and data.draw(st.booleans()):
                seg = data.draw(st.sampled_from(reuse))  # pack into an existing segment
                row = extent(start, length, seg, inner, stride)
                if self.ix._q(
                    "SELECT count(*) FROM segments WHERE id BETWEEN ? AND ? AND state != 4",
                    (row.segment, row.last_segment),
                ).fetchone()[0] != row.run:
                    return
            else:
                count = -(-(inner + length) // stride)
                first = self.ix.new_segment_run(1, count, stride)
                self.segments.extend(range(first, first + count))
                row = extent(start, length, first, inner, stride)
            size = self.ix.get_inode(ino).size
            if start + length > size:
                self.ix.update_inode(ino, size=start + length)
            self.ix.set_extents(ino, [row])
        m = self.model[ino]
        m.extend([None] * (start + length - len(m)))
        for p in range(start, start + length):
            v = row.segment_offset + (p - start)
            m[p] = (row.segment + v // stride, v % stride)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def truncate(self, data):
        ino = self.files[data.draw(st.sampled_from(sorted(self.files)))]
        size = data.draw(st.integers(0, 70))
        self.ix.truncate(ino, size)
        m = self.model[ino]
        self.model[ino] = (m + [None] * size)[:size]

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def punch(self, data):
        ino = self.files[data.draw(st.sampled_from(sorted(self.files)))]
        start = data.draw(st.integers(0, 60))
        end = data.draw(st.integers(start, 70))
        self.ix.punch_hole(ino, start, end)
        m = self.model[ino]
        for p in range(start, min(end, len(m))):
            m[p] = None

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def replace(self, data):
        """A new whole map: a random subset of the current rows (their segments must
        survive) plus, sometimes, a fresh run over a range they leave free."""
        ino = self.files[data.draw(st.sampled_from(sorted(self.files)))]
        rows = self.ix.extents(ino)
        keep = [r for r in rows if data.draw(st.booleans())]
        m = self.model[ino]
        new_m: list[tuple[int, int] | None] = [None] * len(m)
        for r in keep:
            new_m[r.offset : r.end] = m[r.offset : r.end]
        with self.ix.batch():
            free_end = len(m)
            free_start = keep[-1].end if keep else 0
            if free_end > free_start and data.draw(st.booleans()):
                count = -(-(free_end - free_start) // 8)
                first = self.ix.new_segment_run(1, count, 8)
                self.segments.extend(range(first, first + count))
                keep.append(extent(free_start, free_end - free_start, first, 0, 8))
                for p in range(free_start, free_end):
                    v = p - free_start
                    new_m[p] = (first + v // 8, v % 8)
            self.ix.replace_extents(ino, keep)
        self.model[ino] = new_m

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def remove(self, data):
        name = data.draw(st.sampled_from(sorted(self.files)))
        ino = self.files.pop(name)
        parent = ROOT_INODE if self.ix.lookup(ROOT_INODE, name) == ino else self.dirs[-1]
        assert self.ix.unlink(parent, name) == ino
        self.ix.delete_inode(ino)
        del self.model[ino]

    @precondition(lambda self: self.files)
    @rule(data=st.data(), new=st.sampled_from([b"a", b"b", b"c", b"d", b"e"]))
    def rename(self, data, new):
        name = data.draw(st.sampled_from(sorted(self.files)))
        ino = self.files[name]
        parent = ROOT_INODE if self.ix.lookup(ROOT_INODE, name) == ino else self.dirs[-1]
        if new in self.files:
            victim = self.files[new]
            new_parent = ROOT_INODE if self.ix.lookup(ROOT_INODE, new) == victim else self.dirs[-1]
        else:
            victim, new_parent = None, parent
        replaced = self.ix.rename(parent, name, new_parent, new)
        if victim is not None and victim != ino:
            assert replaced == victim
            self.ix.delete_inode(victim)
            del self.model[victim]
        del self.files[name]
        self.files[new] = ino

    @precondition(lambda self: self.segments)
    @rule(data=st.data())
    def upload(self, data):
        seg = data.draw(st.sampled_from(self.segments))
        row = self.ix.segment(seg)
        action = data.draw(st.sampled_from(["post", "verify", "missing", "fail"]))
        if action == "post":
            self.ix.mark_posted(seg, row.generation, row.payload_size + data.draw(st.integers(30, 40)), seg)
        elif action == "verify":
            self.ix.mark_verified(seg)
        elif action == "missing":
            self.ix.mark_missing(seg)
        else:
            self.ix.mark_failed(seg)

    @invariant()
    def consistent(self):
        if not hasattr(self, "ix"):
            return
        ix = self.ix
        for ino, m in self.model.items():
            assert ix.get_inode(ino).size == len(m)
            assert byte_map(ix.extents(ino), len(m)) == m
        counts = row_refcounts(ix, self.model)
        for seg in self.segments:
            row = ix.segment(seg)
            assert row.refcount == counts.get(seg, 0)
            assert (row.state == DEAD) == (seg not in counts)
        db = ix._q
        inodes, total = db("SELECT count(*), coalesce(sum(size), 0) FROM inodes").fetchone()
        by_state = dict(db("SELECT state, count(*) FROM segments GROUP BY state").fetchall())
        std = ix.segment_size
        garbage = db(
            "SELECT coalesce(sum(coalesce(payload_size, ?) + stored_extra), 0) FROM segments WHERE state = 4", (std,)
        ).fetchone()[0]
        stored = db(
            "SELECT coalesce(sum(coalesce(payload_size, ?) + stored_extra), 0) FROM segments WHERE state != 4", (std,)
        ).fetchone()[0]
        s = ix.stats()
        assert (s.inodes, s.total_bytes, s.garbage_bytes, s.stored_bytes) == (inodes, total, garbage, stored)
        assert s.segments == tuple(by_state.get(k, 0) for k in range(5))
        assert ix.fsck() == []


IndexMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_operations = IndexMachine.TestCase


def test_orphans_are_listed_for_deletion_at_mount(tmp_path):
    index = Index.create(tmp_path / "orphans.sqlite")
    kept = index.make_node(ROOT_INODE, b"kept", stat.S_IFREG | 0o644, 0, 0)
    gone = index.make_node(ROOT_INODE, b"gone", stat.S_IFREG | 0o644, 0, 0)
    index.unlink(ROOT_INODE, b"gone")  # still open when the mount crashed
    assert index.orphans() == [gone.id]
    index.delete_inode(gone.id)
    assert index.orphans() == [] and index.get_inode(kept.id).nlink == 1
    assert index.fsck() == []
    index.close()
