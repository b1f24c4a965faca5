"""t1: the index's batched scans for verify and status (usenetfs.index.audit), and
`Index.mark_stored`, on plain SQLite files. Every test ends with a clean fsck."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from usenetfs.index import MISSING, POSTED, ROOT_INODE, VERIFIED, Index, audit, extent

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644


@pytest.fixture
def ix(tmp_path: Path):
    index = Index.create(tmp_path / "index.db")
    yield index
    problems = index.fsck()
    index.close()
    assert problems == []


def make_file(ix: Index, parent: int, name: bytes, segments: int, stride: int = 100) -> tuple[int, int]:
    """A file of `segments` posted and verified segments in one run: (inode, first segment)."""
    ino = ix.make_node(parent, name, REG, 0, 0).id
    with ix.batch():
        first = ix.new_segment_run(1, segments, stride)
        ix.update_inode(ino, size=segments * stride)
        ix.set_extents(ino, [extent(0, segments * stride, first, 0, stride)])
        for seg in range(first, first + segments):
            ix.mark_posted(seg, 0, stride + 40, seg)
            ix.mark_verified(seg, 0)
    return ino, first


def test_data_segments_are_referenced_posted_ones(ix: Index):
    _, first = make_file(ix, ROOT_INODE, b"a", 3)
    pending = ix.new_segment(1, 100)  # an upload's intent: nothing on the server to check
    _, second = make_file(ix, ROOT_INODE, b"b", 2)
    assert ix.mark_missing(second + 1, 0)
    dead_ino, dead_first = make_file(ix, ROOT_INODE, b"c", 1)
    ix.unlink(ROOT_INODE, b"c")
    ix.delete_inode(dead_ino)  # its segment is garbage now
    ix.discard_segment(pending)

    end = audit.segment_id_end(ix)
    assert end == dead_first + 1
    rows = audit.data_segments_between(ix, 1, end - 1)
    assert [r.id for r in rows] == [first, first + 1, first + 2, second, second + 1]
    assert [r.state for r in rows][-2:] == [VERIFIED, MISSING]
    assert [r.id for r in audit.data_segments_between(ix, first + 1, second)] == [first + 1, first + 2, second]
    assert [r.id for r in audit.data_segments_in(ix, [second + 1, pending, dead_first, first])] == [first, second + 1]
    with pytest.raises(ValueError):
        audit.data_segments_in(ix, list(range(audit.MAX_IDS_PER_QUERY + 1)))


def test_files_holding_walks_extents_in_batches(ix: Index):
    d = ix.make_node(ROOT_INODE, b"dir", DIR, 0, 0).id
    big, first = make_file(ix, d, b"big", 5)
    # two small files packed into one segment
    packed = ix.new_segment(1, 100)
    small = []
    for i, (offset, length) in enumerate(((0, 60), (60, 40))):
        ino = ix.make_node(d, b"small%d" % i, REG, 0, 0).id
        ix.update_inode(ino, size=length)
        ix.set_extents(ino, [extent(0, length, packed, offset, 100)])
        small.append(ino)
    ix.mark_posted(packed, 0, 140, 1)

    wanted = sorted([first + 3, packed])
    found: dict[int, set[int]] = {}
    after, batches = (0, -1), 0
    while after is not None:  # batches of one row: the resume key must not skip or repeat
        part, after = audit.files_holding(ix, wanted, after, limit=1)
        for ino, segs in part.items():
            found.setdefault(ino, set()).update(segs)
        batches += 1
    assert found == {big: {first + 3}, small[0]: {packed}, small[1]: {packed}}
    assert batches >= 3


def test_paths_of_inodes_and_directories(ix: Index):
    a = ix.make_node(ROOT_INODE, b"a", DIR, 0, 0).id
    b = ix.make_node(a, b"b", DIR, 0, 0).id
    f, _ = make_file(ix, b, b"f.txt", 1)
    ix.link(ROOT_INODE, b"hard", f)
    g, _ = make_file(ix, ROOT_INODE, b"g", 1)

    entries, after = [], (0, b"")
    while after is not None:
        part, after = audit.entries_of(ix, {f}, after, limit=2)
        entries.extend(part)
    assert sorted(entries) == sorted([(b, b"f.txt", f), (ROOT_INODE, b"hard", f)])
    known: dict[int, bytes] = {}
    assert audit.dir_path(ix, ROOT_INODE, known) == b"/"
    assert audit.dir_path(ix, b, known) == b"/a/b"
    assert known == {a: b"/a", b: b"/a/b"}
    assert audit.dir_path(ix, a) == b"/a"
    assert g not in {e[2] for e in entries}


def test_mark_stored_records_abandoned_generations(ix: Index):
    _, seg = make_file(ix, ROOT_INODE, b"f", 1)
    assert ix.mark_missing(seg, 0)  # generation 1 is to be posted
    # post_verified found generation 1 missing after its POST and moved on to 2
    assert ix.mark_stored(seg, 1, 2, 140, 7)
    row = ix.segment(seg)
    assert (row.state, row.generation, row.stored_size) == (POSTED, 2, 140)
    assert ix.mark_verified(seg, 2)
    assert not ix.mark_stored(seg, 1, 1, 140, 7)  # stale: changes nothing
    assert ix.segment(seg).state == VERIFIED


def test_audit_queries_use_keys_not_scans(ix: Index):
    d = ix.make_node(ROOT_INODE, b"d", DIR, 0, 0).id
    for i in range(50):
        make_file(ix, d, b"f%d" % i, 2)
    for analyzed in (False, True):
        if analyzed:
            ix._q("ANALYZE")
        plans = {name: [r[3] for r in ix._q("EXPLAIN QUERY PLAN " + sql, (1,) * sql.count("?"))]
                 for name, sql in audit.SQL.items()}
        for name, plan in plans.items():
            assert plan and not any(step.startswith("SCAN") for step in plan), (name, plan)
        assert "PRIMARY KEY ((inode,offset)>(?,?))" in plans["extents_after"][0]
        assert "PRIMARY KEY ((parent,name)>(?,?))" in plans["dentries_after"][0]
        assert "COVERING INDEX dentries_readdir" in plans["name_in_parent"][0]
