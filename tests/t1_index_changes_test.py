"""Level 1: the pages of the index file written since a backup, read from SQLite's WAL
(index/changes.py, `Index.track_changes`, `Index.freeze`).

The truth is the file itself: at each "backup" the index is frozen (every commit copied
into the file), the file is compared page by page with the image of the previous one, and
every page that differs must be among the pages the tracker reports. Real SQLite files,
real checkpoints, including ones forced by a long WAL.
"""

from __future__ import annotations

import random
import sqlite3
import stat

import pytest

from usenetfs.index import ROOT_INODE, VOLUME_SCOPE, Index, extent
from usenetfs.index import store as index_store
from usenetfs.index.changes import PageChanges, chunks_of

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
SEG = 716_800


def image(path) -> bytes:
    return path.read_bytes()


def backup_point(index: Index, path) -> tuple[set[int], bytes]:
    """What a backup does to the tracker: freeze, take the pages written since the last
    backup, read the file (the snapshot), thaw."""
    assert index.freeze()
    try:
        return index.changes.take(), image(path)
    finally:
        index.thaw()


@pytest.fixture
def tracked(tmp_path):
    """A new index tracking the pages written, as a mount holds it, and its file."""
    path = tmp_path / "index.sqlite"
    index = Index.create(path)
    index.track_changes()
    yield index, path
    index.close()


def assert_reported_since(index: Index, path, before: bytes) -> bytes:
    """A backup point: every page that differs from the image `before` was reported, and
    the tracker is not lost. Returns the new image."""
    reported, after = backup_point(index, path)
    assert not index.changes.lost
    assert changed_pages(before, after, index.page_size) <= reported
    return after


def changed_pages(before: bytes, after: bytes, page_size: int) -> set[int]:
    """Pages (numbered from 1) that differ between two images of a database file."""
    pages = set()
    for offset in range(0, max(len(before), len(after)), page_size):
        if before[offset:offset + page_size] != after[offset:offset + page_size]:
            pages.add(offset // page_size + 1)
    return pages


def churn(index: Index, rng: random.Random, folders: list[int], files: list[tuple[int, bytes]]) -> None:
    """One burst of what a mount does: new folders and files with segments, renames,
    xattrs, deletions; some in batches, some one commit each."""
    for _ in range(rng.randint(1, 4)):
        with index.batch():
            if rng.random() < 0.3 or not folders:
                folders.append(index.make_node(ROOT_INODE, b"d%06d" % rng.getrandbits(30), DIR, 0, 0).id)
            parent = rng.choice(folders)
            for _ in range(rng.randint(1, 60)):
                name = b"f%08d" % rng.getrandbits(30)
                node = index.make_node(parent, name, REG, 0, 0)
                first = index.new_segment_run(VOLUME_SCOPE, 1, SEG, 3000)
                index.mark_posted(first, 0, 3100, 7)
                index.update_inode(node.id, size=3000)
                index.set_extents(node.id, [extent(0, 3000, first, 0, SEG)])
                files.append((parent, name))
    for _ in range(rng.randint(0, 15)):  # one commit each
        if not files:
            break
        parent, name = files.pop(rng.randrange(len(files)))
        action = rng.random()
        if action < 0.4:
            index.unlink(parent, name)
        elif action < 0.7:
            new = b"r%08d" % rng.getrandbits(30)
            index.rename(parent, name, parent, new)
            files.append((parent, new))
        else:
            index.set_xattr(index.lookup(parent, name), b"user.note", rng.randbytes(rng.randint(1, 300)))
            files.append((parent, name))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_page_written_between_two_backups_is_reported(tracked, monkeypatch, seed):
    # A short WAL limit: the index's own stand-in for auto-checkpoints runs often, and
    # the log restarts many times between two backups.
    monkeypatch.setattr(index_store, "WAL_AUTOCHECKPOINT_PAGES", 40)
    monkeypatch.setattr(index_store, "_WAL_LOOK_EVERY", 3)
    index, path = tracked
    changes = index.changes
    rng = random.Random(seed)
    folders: list[int] = []
    files: list[tuple[int, bytes]] = []
    _, before = backup_point(index, path)
    reported_total = actual_total = 0
    for _ in range(12):
        for _ in range(rng.randint(1, 6)):
            churn(index, rng, folders, files)
            if rng.random() < 0.3:
                index.checkpoint(rng.choice(["PASSIVE", "TRUNCATE"]))
        assert index.freeze()
        reported = changes.take()
        after = image(path)
        actual = changed_pages(before, after, index.page_size)
        assert actual, "the churn changed nothing?"
        assert actual <= reported, f"pages written but not reported: {sorted(actual - reported)[:10]}"
        assert not changes.lost
        reported_total += len(reported)
        actual_total += len(actual)
        # Frozen: commits go on into the WAL, the file stays as it was.
        churn(index, rng, folders, files)
        assert image(path) == after
        assert index.checkpoint() == (1, 1, 0)
        index.thaw()
        before = after
    # Not everything: the tracker is worth having only if it reports few pages more
    # than were written (pages written twice with the same bytes, the restarted logs).
    assert reported_total <= 1.5 * actual_total


def test_tracking_goes_on_across_a_close_and_reopen(tmp_path):
    """What a mount carries to the next: the pages written since the last backup."""
    path = tmp_path / "index.sqlite"
    rng = random.Random(7)
    folders: list[int] = []
    files: list[tuple[int, bytes]] = []
    index = Index.create(path)
    changes = index.track_changes()
    _, before = backup_point(index, path)
    churn(index, rng, folders, files)
    index.close()  # the close's checkpoint copies frames the tracker must have read first
    carried = set(changes.pages)
    assert not changes.lost
    index = Index.open(path)
    try:
        index.track_changes(carried)
        churn(index, rng, folders, files)
        assert_reported_since(index, path, before)
    finally:
        index.close()


def test_a_checkpoint_by_another_connection_loses_the_tracker(tracked):
    index, path = tracked
    changes = index.changes
    churn(index, random.Random(1), [], [])
    other = sqlite3.connect(path)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # frames copied that we never read
    other.close()
    churn(index, random.Random(2), [], [])  # restarts the log
    index.checkpoint()
    assert changes.lost
    # A backup that reads the whole file (freeze, take, and `found` once it is posted)
    # makes the set exact again from its snapshot on.
    losses = changes.losses
    _, before = backup_point(index, path)
    churn(index, random.Random(3), [], [])
    changes.found(losses)
    assert_reported_since(index, path, before)


def test_a_commit_by_another_connection_loses_the_tracker(tracked):
    index, path = tracked
    other = sqlite3.connect(path)
    other.execute("UPDATE inodes SET mtime_ns = mtime_ns + 1 WHERE id = ?", (ROOT_INODE,))
    other.commit()
    other.close()
    churn(index, random.Random(4), [], [])
    assert index.changes.lost


def test_a_backup_that_failed_gives_its_pages_back(tracked):
    index, path = tracked
    changes = index.changes
    churn(index, random.Random(5), [], [])
    taken, _ = backup_point(index, path)
    churn(index, random.Random(6), [], [])
    index.checkpoint()
    later = set(changes.pages)
    changes.give_back(taken)
    assert changes.pages == taken | later and taken and later


def test_a_rolled_back_transaction_is_read_again_when_overwritten(tracked):
    """Frames past the last commit frame belong to a transaction in progress or rolled
    back; the next transaction writes over them, so the scan must not skip past them."""
    index, path = tracked
    changes = index.changes
    _, before = backup_point(index, path)
    churn(index, random.Random(9), [], [])  # frames not checkpointed: the log goes on (no restart)
    changes.scan()
    db = sqlite3.connect(path, isolation_level=None)  # a second writer, kept in step below
    db.execute("PRAGMA cache_size=1")  # spill pages into the WAL before the commit
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE scratch(x)")
    db.executemany("INSERT INTO scratch VALUES (?)", [(b"x" * 500,) for _ in range(400)])
    changes.scan()  # reads the spilled frames, stops before them (no commit frame)
    db.execute("ROLLBACK")
    db.close()
    churn(index, random.Random(8), [], [])
    assert_reported_since(index, path, before)


def test_a_missing_or_foreign_wal(tmp_path):
    changes = PageChanges(tmp_path / "none-wal")
    changes.scan()
    assert not changes.lost and changes.pages == set()
    (tmp_path / "junk-wal").write_bytes(b"\0" * 100)
    junk = PageChanges(tmp_path / "junk-wal")
    junk.scan()
    assert junk.lost
    assert PageChanges(tmp_path / "none-wal", None).lost  # nothing known to start from


def test_chunks_of_pages():
    assert chunks_of([1, 2, 64, 65, 129], 4096, 256 * 1024) == {0, 1, 2}
    assert chunks_of([], 4096, 32 * 1024) == set()
    assert chunks_of([9], 4096, 32 * 1024) == {1}


def test_a_restarted_log_is_read_up_to_its_own_end(tracked):
    """After a complete checkpoint the next writer restarts the log from its start, over
    the old frames (PASSIVE leaves the file long). The scan must stop where the old frames
    begin, or it would jump past the frames the next commits write over them."""
    index, path = tracked
    churn(index, random.Random(10), [], [])
    churn(index, random.Random(11), [], [])  # a long log
    _, before = backup_point(index, path)  # all of it copied: the next write restarts it
    index.set_xattr(ROOT_INODE, b"user.a", b"1")  # a short new log over the old one
    index.changes.scan()  # as every 64 commits: to its end, not to the old frames' end
    for k in range(3):  # these land where old frames still were
        index.set_xattr(ROOT_INODE, b"user.b%d" % k, bytes(3000))
    assert_reported_since(index, path, before)


def test_hold_lock_keeps_every_other_connection_out_until_close(tracked):
    index, path = tracked
    index.hold_lock()
    churn(index, random.Random(12), [], [])  # writes, checkpoints and backups go on
    backup_point(index, path)
    other = sqlite3.connect(path, timeout=0.1)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("SELECT count(*) FROM inodes").fetchone()
    other.close()
    count = index.stats().inodes
    index.close()
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM inodes").fetchone()[0] == count
    other.close()
