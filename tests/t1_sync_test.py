"""Level 1: the pure parts of `usenetfs sync`: what it decides for one name
(usenetfs/sync/compare.py), the content-digest record kept in user.usenetfs.sha256, and
its progress line (files and bytes with their rates)."""

from __future__ import annotations

import hashlib
import io
import stat

import pytest

from usenetfs.cli.progress import SyncProgress
from usenetfs.index import InodeRow
from usenetfs.sync import compare as C
from usenetfs.sync.control import FILE_COST, work
from usenetfs.sync.engine import SyncStats
from usenetfs.sync.source import SourceEntry

ROOT = C.Owner(True, 0, 0)
USER = C.Owner(False, 1000, 100)


def src(name=b"f", kind=stat.S_IFREG, mode=0o644, size=10, mtime=5_000, uid=0, gid=0, target=None, xattrs=None,
        nlink=1) -> SourceEntry:
    return SourceEntry(name, kind | mode, uid, gid, size, 1_000, mtime, 1, 77, nlink, target, xattrs)


def dest(kind=stat.S_IFREG, mode=0o644, size=10, mtime=5_000, uid=0, gid=0, target=None, xattrs=None,
         ctime=9_000, ino=42) -> C.DestEntry:
    row = InodeRow(ino, kind | mode, uid, gid, size, 1_000, mtime, ctime, 1, 0, 0, None)
    return C.DestEntry(row, target, xattrs or {})


def test_a_name_only_in_the_source_is_new():
    assert C.decide(src(), None, ROOT).kind == C.NEW


def test_equal_size_and_mtime_is_unchanged_whatever_the_atime_or_ctime():
    assert C.decide(src(), dest(ctime=1), ROOT).kind == C.SAME


@pytest.mark.parametrize("change", [{"size": 11}, {"mtime": 5_001}])
def test_a_different_size_or_mtime_means_the_content_is_copied_again(change):
    assert C.decide(src(**change), dest(), ROOT).kind == C.DATA


def test_checksum_compares_contents_whenever_sizes_match():
    assert C.decide(src(mtime=1), dest(), ROOT, checksum=True).kind == C.CHECK
    assert C.decide(src(), dest(), ROOT, checksum=True).kind == C.CHECK
    assert C.decide(src(size=3), dest(), ROOT, checksum=True).kind == C.DATA  # no need to hash


def test_after_checksum_equal_contents_only_fix_the_attributes():
    decision = C.after_checksum(src(mtime=7_000), dest(), ROOT, equal=True)
    assert decision.kind == C.ATTRS and decision.fields == {"mtime_ns": 7_000, "atime_ns": 1_000}
    assert C.after_checksum(src(), dest(), ROOT, equal=True).kind == C.SAME
    assert C.after_checksum(src(), dest(), ROOT, equal=False).kind == C.DATA


def test_a_type_change_replaces_the_entry():
    assert C.decide(src(kind=stat.S_IFDIR), dest(), ROOT).kind == C.RETYPE
    assert C.decide(src(), dest(kind=stat.S_IFLNK, target=b"x"), ROOT).kind == C.RETYPE


def test_symlinks_compare_their_targets_then_their_times():
    link = dict(kind=stat.S_IFLNK, mode=0o777, size=1)
    assert C.decide(src(target=b"a", **link), dest(target=b"a", **link), ROOT).kind == C.SAME
    retarget = C.decide(src(target=b"b", mtime=6_000, **link), dest(target=b"a", **link), ROOT)
    assert retarget.kind == C.RETARGET and retarget.fields["mtime_ns"] == 6_000
    # A symlink's permission bits mean nothing: never compared.
    assert C.decide(src(target=b"a", **{**link, "mode": 0o755}), dest(target=b"a", **link), ROOT).kind == C.SAME


def test_attributes_mode_owner_and_extended_attributes():
    decision = C.decide(src(mode=0o600, uid=5, gid=6, xattrs={b"user.a": b"1", b"user.b": b"2"}),
                        dest(xattrs={b"user.a": b"0", b"user.c": b"3", C.DIGEST_XATTR: b"x 1"}), ROOT)
    assert decision.kind == C.ATTRS
    assert decision.fields == {"mode": stat.S_IFREG | 0o600, "uid": 5, "gid": 6}
    assert decision.xattr_set == {b"user.a": b"1", b"user.b": b"2"}
    assert decision.xattr_remove == [b"user.c"]  # never usenetfs's own digest


def test_owner_is_kept_only_when_running_as_root():
    assert C.decide(src(uid=5, gid=6), dest(uid=1000, gid=100), USER).kind == C.SAME
    decision = C.decide(src(uid=5, gid=6), dest(uid=5, gid=6), USER)
    assert decision.kind == C.ATTRS and decision.fields == {"uid": 1000, "gid": 100}


def test_directory_times_are_left_for_the_end():
    directory = dict(kind=stat.S_IFDIR, mode=0o755)
    assert C.decide(src(mtime=1, **directory), dest(mtime=2, **directory), ROOT).kind == C.SAME
    assert C.decide(src(mode=0o700, kind=stat.S_IFDIR), dest(**directory), ROOT).kind == C.ATTRS


def test_a_digest_record_holds_while_the_ctime_is_the_recorded_one():
    digest = hashlib.sha256(b"content").digest()
    record = C.digest_record(digest, 9_000)
    assert record == digest.hex().encode() + b" 9000"
    assert C.recorded_digest(dest(xattrs={C.DIGEST_XATTR: record}, ctime=9_000)) == digest
    # Anything done to the file through the mount moves its ctime: the record is stale.
    assert C.recorded_digest(dest(xattrs={C.DIGEST_XATTR: record}, ctime=9_001)) is None
    assert C.recorded_digest(dest()) is None
    for damaged in (b"", b"zz 9000", b"abcd 9000", record + b" extra", digest.hex().encode() + b" x"):
        assert C.recorded_digest(dest(xattrs={C.DIGEST_XATTR: damaged}, ctime=9_000)) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_shows_files_bytes_and_their_rates(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    out, clock = io.StringIO(), Clock()
    stats = SyncStats(scanned=5_000, to_copy_files=4_000, to_copy_bytes=40_000_000)
    with SyncProgress(stream=out, tty=True, clock=clock) as progress:
        clock.now += 2
        stats.copied_files, stats.copied_bytes = 1_000, 10_000_000
        progress.line({"done": work(stats)[0], "total": work(stats)[1], "stats": stats.as_dict()})
        clock.now += 2
        stats.scan_done, stats.copied_files, stats.copied_bytes = True, 2_000, 20_000_000
        progress.sync_update(stats.as_dict(), *work(stats))
    scanning, done = out.getvalue().split("\r")[1:]
    # While the source is still being scanned the totals grow: "+", and no time left.
    assert "25% 1,000 of 4,000+ files (10.0 MB of 40.0 MB+), 5,000 checked, 500 files/s, 5.0 MB/s" in scanning
    assert "left" not in scanning
    assert "50% 2,000 of 4,000 files (20.0 MB of 40.0 MB), 5,000 checked, 500 files/s, 5.0 MB/s, 4 s left" in done
    assert work(stats) == (20_000_000 + 2_000 * FILE_COST, 40_000_000 + 4_000 * FILE_COST)
