"""Level 3: `usenetfs sync`'s engine (usenetfs/sync/) on a real Index and a real FileData
over a LocalSegmentStore (real codec and encryption), with the volume unmounted
(OfflineTarget): the scan and comparison, batches, staging through FileData's
write-back path, --checksum records, --delete, --dry-run, interruption and backpressure;
and the data layer's part (copy_into, stage_copies). Every test ends with a clean fsck.
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from usenetfs.data import FileData
from usenetfs.data.copyin import SourceChanged, copy_into, file_digest
from usenetfs.errors import UserError
from usenetfs.index import ROOT_INODE, Index, listing
from usenetfs.sync import OfflineTarget, Sync, SyncOptions
from usenetfs.sync.compare import DIGEST_XATTR

from t3_filedata_test import index, keys, store  # noqa: F401 - fixtures

SEG = 64 * 1024
FAST = dict(segment_size=SEG, pack_threshold=16 * 1024, idle_seconds=0.2, release_delay=0.05,
            retry_base=0.05, retry_max=0.2, sync_delay=0.05, commit_interval=0.05)


@asynccontextmanager
async def running(index, store, cache_dir, **options):
    """A FileData with its uploader running, as in a mount or an offline sync."""
    data = FileData(index, store, cache_dir, **{**FAST, **options})
    await data.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(data.run)
        try:
            yield data
        finally:
            nursery.cancel_scope.cancel()
    data.close()


async def sync(index, data, source, dest="/dest", **options):
    items: list[str] = []
    stats = await Sync(index, data, OfflineTarget(index, data), source, dest, SyncOptions(**options),
                       on_item=items.append).run()
    stats.items = items
    return stats


def lookup(index: Index, path: str) -> int:
    ino = ROOT_INODE
    for part in path.strip("/").split("/"):
        if part:
            row = index.lookup_entry(ino, part.encode())
            assert row is not None, path
            ino = row.id
    return ino


async def volume_tree(index: Index, data: FileData, path: str) -> dict:
    """What the volume holds under `path`, in the form of `source_tree`."""
    out = {}
    links: dict[int, str] = {}

    async def walk(ino: int, rel: str) -> None:
        for _, name, row in index.readdir(ino, 0, 100_000):
            child = f"{rel}/{name.decode()}" if rel else name.decode()
            kind = stat.S_IFMT(row.mode)
            if kind == stat.S_IFDIR:
                out[child] = ("dir", oct(row.mode), row.mtime_ns, row.uid, row.gid, _xattrs(index, row.id))
                await walk(row.id, child)
            elif kind == stat.S_IFLNK:
                out[child] = ("link", index.get_symlink(row.id), row.mtime_ns)
            elif kind == stat.S_IFREG:
                size = data.dirty_size(row.id)
                size = row.size if size is None else size
                content = await data.read(row.id, 0, size, size) if size else b""
                first = links.setdefault(row.id, child) if row.nlink > 1 else None
                out[child] = ("file", hashlib.sha256(content).hexdigest(), size, oct(row.mode), row.mtime_ns,
                              _xattrs(index, row.id), first)
            else:
                out[child] = ("other", oct(row.mode), row.mtime_ns)

    await walk(lookup(index, path), "")
    root = index.get_inode(lookup(index, path))
    out["."] = ("dir", oct(root.mode), root.mtime_ns)
    return out


def _xattrs(index: Index, ino: int) -> dict:
    return {n: index.get_xattr(ino, n) for n in index.list_xattrs(ino) if not n.startswith(b"user.usenetfs.")}


def source_tree(root: Path) -> dict:
    out = {}
    links: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.fsencode(os.readlink(path)), st.st_mtime_ns)
        elif path.is_dir():
            out[rel] = ("dir", oct(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, _os_xattrs(path))
        elif stat.S_ISREG(st.st_mode):
            first = links.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, oct(st.st_mode),
                        st.st_mtime_ns, _os_xattrs(path), first)
        else:
            out[rel] = ("other", oct(st.st_mode), st.st_mtime_ns)
    st = root.stat()
    out["."] = ("dir", oct(st.st_mode), st.st_mtime_ns)
    return out


def _os_xattrs(path: Path) -> dict:
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path)
            if n.startswith("user.")}


def make_tree(root: Path) -> None:
    (root / "sub/deeper/deepest").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello usenet\n")
    for i in range(30):
        (root / "sub" / f"note{i:02d}.txt").write_text(f"small file {i}\n" * (i + 1))
    (root / "sub/deeper/big.bin").write_bytes(os.urandom(5 * SEG + 123))
    with open(root / "sparse.img", "wb") as f:
        f.truncate(3_000_000)
        f.seek(1_500_000)
        f.write(b"middle")
    os.symlink("small.txt", root / "link-to-small")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "small.txt", root / "sub/hardlink.txt")
    os.mkfifo(root / "pipe")
    os.setxattr(root / "small.txt", "user.comment", b"kept")
    os.setxattr(root / "sub", "user.dir-note", b"on a directory")
    os.chmod(root / "sub/note01.txt", 0o600)
    os.chmod(root / "sub/deeper", 0o700)
    os.utime(root / "sub/note02.txt", ns=(1_000_000_000, 2_000_000_000))


# ---------------------------------------------------------------------- the data layer's part


def test_copy_into_keeps_holes_and_hashes_the_content(tmp_path):
    source = tmp_path / "sparse"
    with open(source, "wb") as f:
        f.truncate(5_000_000)
        f.seek(2_000_000)
        f.write(b"x" * 70_000)
    copied = copy_into(source, tmp_path / "copy", digest=True)
    content = source.read_bytes()
    assert (tmp_path / "copy").read_bytes() == content
    assert copied.size == 5_000_000 and copied.stable
    assert copied.digest == hashlib.sha256(content).digest() == file_digest(source)[0]
    assert (tmp_path / "copy").stat().st_blocks * 512 < 1_000_000  # the holes stayed holes
    assert copied.mtime_ns == source.stat().st_mtime_ns


def test_copy_into_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "target").write_text("x")
    os.symlink("target", tmp_path / "link")
    with pytest.raises(OSError):  # O_NOFOLLOW: a symlink is not followed
        copy_into(tmp_path / "link", tmp_path / "copy")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SourceChanged):
        copy_into(tmp_path / "fifo", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


async def test_stage_copies_reports_a_vanished_source_and_leaves_nothing(index, store, tmp_path):
    (tmp_path / "here").write_bytes(b"12345")
    async with running(index, store, tmp_path / "cache") as data:
        missing, present = await data.stage_copies([(tmp_path / "gone", 10), (tmp_path / "here", 5)])
        assert isinstance(missing, FileNotFoundError)
        assert present.copied.size == 5 and present.path.read_bytes() == b"12345"
        assert data.staging.used == present.reserved
        data.discard_copy(present)
        assert data.staging.used == 0
        assert [n for n in os.listdir(tmp_path / "cache" / "staging") if not n.startswith("spare-")] == []


def test_directory_listing_queries_use_indexes(index):
    for name in listing.SQL:
        plan = " ".join(listing.query_plan(index, name))
        assert "SCAN" not in plan, (name, plan)


# ---------------------------------------------------------------------- sync


async def test_sync_copies_a_tree_and_a_second_run_changes_nothing(index, store, tmp_path):
    source = tmp_path / "src"
    make_tree(source)
    expected = source_tree(source)
    async with running(index, store, tmp_path / "cache") as data:
        stats = await sync(index, data, source, "/backup/photos", batch_files=7)
        assert (stats.new_files, stats.hard_links, stats.symlinks, stats.others) == (34, 1, 2, 1)
        assert stats.new_dirs == 4 + 1  # the tree's, and DEST itself (its parent /backup too, unreported)
        assert stats.errors == 0 and stats.batches > 3
        assert stats.copied_bytes == sum(v[2] for k, v in expected.items() if v[0] == "file" and v[6] in (None, k))
        assert await volume_tree(index, data, "/backup/photos") == expected
        assert index.get_inode(lookup(index, "/backup")).mode == stat.S_IFDIR | 0o755
        small, hard = lookup(index, "/backup/photos/small.txt"), lookup(index, "/backup/photos/sub/hardlink.txt")
        assert small == hard and index.get_inode(small).nlink == 2

        again = await sync(index, data, source, "/backup/photos")
        assert (again.new_files, again.changed_files, again.attributes, again.deleted, again.batches) == (0, 0, 0, 0, 0)
        assert again.unchanged == again.scanned == len(expected) - 1
        assert again.items == []
        await data.flush_all()
    # The bytes really come from the store: a new FileData with nothing staged or cached.
    async with running(index, store, tmp_path / "cache2") as fresh:
        assert await volume_tree(index, fresh, "/backup/photos") == expected


async def test_only_what_changed_is_copied_again(index, store, tmp_path):
    source = tmp_path / "src"
    make_tree(source)
    async with running(index, store, tmp_path / "cache") as data:
        await sync(index, data, source)
        old_big = lookup(index, "/dest/sub/deeper/big.bin")
        (source / "sub/note03.txt").write_text("same length?\n" * 4)  # size differs
        st = (source / "sub/note04.txt").stat()
        (source / "sub/note04.txt").write_text("x" * st.st_size)  # same size, new mtime
        os.chmod(source / "sub/note05.txt", 0o640)  # attributes only
        os.setxattr(source / "sub/note06.txt", "user.tag", b"new")
        (source / "new.txt").write_text("a new file\n")
        os.unlink(source / "link-to-small")
        os.symlink("empty", source / "link-to-small")  # retargeted
        (source / "sub/note07.txt").unlink()  # gone: kept without --delete
        stats = await sync(index, data, source)
        assert (stats.new_files, stats.changed_files, stats.attributes, stats.symlinks, stats.deleted) == (1, 2, 2, 1, 0)
        assert stats.copied_files == 3
        assert sorted(stats.items) == sorted([
            "new file      new.txt", "changed       sub/note03.txt", "changed       sub/note04.txt",
            "attrs         sub/note05.txt", "attrs         sub/note06.txt", "changed       link-to-small"])
        assert lookup(index, "/dest/sub/deeper/big.bin") == old_big  # untouched: not even re-linked
        assert index.lookup(lookup(index, "/dest/sub"), b"note07.txt") is not None

        deleted = await sync(index, data, source, delete=True)
        assert (deleted.deleted, deleted.new_files, deleted.changed_files) == (1, 0, 0)
        assert await volume_tree(index, data, "/dest") == source_tree(source)


async def test_a_changed_type_replaces_the_entry_but_a_full_directory_needs_delete(index, store, tmp_path):
    source = tmp_path / "src"
    (source / "was-dir").mkdir(parents=True)
    (source / "was-dir/inside").write_text("x")
    (source / "was-file").write_text("y")
    async with running(index, store, tmp_path / "cache") as data:
        await sync(index, data, source)
        (source / "was-file").unlink()
        (source / "was-file").mkdir()
        (source / "was-file/now-inside").write_text("z")
        (source / "was-dir/inside").unlink()
        (source / "was-dir").rmdir()
        (source / "was-dir").write_text("now a file")
        stats = await sync(index, data, source)
        assert stats.errors == 1 and "is a non-empty directory in the volume" in stats.error_lines[0]
        assert index.get_inode(lookup(index, "/dest/was-dir")).is_dir  # left alone
        assert index.get_inode(lookup(index, "/dest/was-file")).is_dir  # a file may be replaced
        stats = await sync(index, data, source, delete=True)
        assert stats.errors == 0
        assert await volume_tree(index, data, "/dest") == source_tree(source)


async def test_checksum_finds_changes_size_and_mtime_miss_and_records_digests(index, store, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for i in range(5):
        (source / f"f{i}").write_bytes(os.urandom(1000 + i))
    async with running(index, store, tmp_path / "cache") as data:
        await sync(index, data, source)
        await data.flush_all()
        # Same size, same mtime, other bytes: invisible to size + mtime.
        st = (source / "f1").stat()
        (source / "f1").write_bytes(os.urandom(st.st_size))
        os.utime(source / "f1", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (await sync(index, data, source)).changed_files == 0
        first = await sync(index, data, source, checksum=True)
        assert (first.changed_files, first.checksummed, first.read_back) == (1, 5, 5)  # nothing recorded yet
        await data.flush_all()
        second = await sync(index, data, source, checksum=True)
        assert (second.changed_files, second.read_back, second.batches) == (0, 0, 0)  # the records hold
        record = index.get_xattr(lookup(index, "/dest/f1"), DIGEST_XATTR)
        assert record.split(b" ")[0] == hashlib.sha256((source / "f1").read_bytes()).hexdigest().encode()

        os.utime(source / "f2", ns=(1, 3_000_000_000))  # only the mtime: no copy, and the record stays true
        touched = await sync(index, data, source, checksum=True)
        assert (touched.changed_files, touched.attributes, touched.read_back) == (0, 1, 0)
        assert (await sync(index, data, source, checksum=True)).read_back == 0

        # A change made through the mount (a write, its ctime) makes the record stale.
        ino = lookup(index, "/dest/f3")
        size = index.get_inode(ino).size
        await data.open_for_write(ino, size, truncate=False)
        await data.write(ino, 0, b"changed in the volume")
        index.update_inode(ino, mtime_ns=index.get_inode(ino).mtime_ns, ctime_ns=index.get_inode(ino).ctime_ns + 1)
        data.release(ino, lookup(index, "/dest"))
        await data.flush_all()
        stale = await sync(index, data, source, checksum=True)
        assert (stale.read_back, stale.changed_files) == (1, 1)
        assert await volume_tree(index, data, "/dest") == source_tree(source)


async def test_dry_run_lists_changes_and_changes_nothing(index, store, tmp_path):
    source = tmp_path / "src"
    make_tree(source)
    async with running(index, store, tmp_path / "cache") as data:
        before = index.stats()
        stats = await sync(index, data, source, dry_run=True)
        assert index.stats() == before and index.lookup(ROOT_INODE, b"dest") is None
        assert stats.new_files == 34 and stats.copied_files == 34
        assert "new dir       ." in stats.items and "new file      sub/deeper/big.bin" in stats.items
        assert "new hard link sub/hardlink.txt" in stats.items
        await sync(index, data, source)
        (source / "small.txt").unlink()
        stats = await sync(index, data, source, dry_run=True, delete=True)
        assert stats.items == ["delete        small.txt"] and stats.deleted == 1
        assert index.lookup(lookup(index, "/dest"), b"small.txt") is not None


async def test_an_interrupted_sync_leaves_the_volume_consistent_and_a_rerun_finishes(index, store, tmp_path):
    source = tmp_path / "src"
    for d in range(6):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (source / f"d{d}/f{f}").write_bytes(os.urandom(2000 + f))
    expected = source_tree(source)
    async with running(index, store, tmp_path / "cache") as data:
        with trio.CancelScope() as scope:
            def stop_midway(stats):
                if stats.copied_files >= 20:  # some batches committed, one being copied
                    scope.cancel()

            await Sync(index, data, OfflineTarget(index, data), source, "/dest",
                       SyncOptions(batch_files=8, copy_group_files=2), progress=stop_midway).run()
        assert scope.cancelled_caught
        await data.flush_all()  # (uploads in flight hold pending segments fsck would report)
        assert index.fsck() == []
        staged = os.listdir(tmp_path / "cache" / "staging")
        assert not [name for name in staged if name.startswith("sync-")]  # the copies in flight went
        done = len([k for k in (await volume_tree(index, data, "/dest")) if k.count("/") == 1])
        assert 0 < done < 60
        stats = await sync(index, data, source)
        assert stats.new_files == 60 - done
        assert await volume_tree(index, data, "/dest") == expected


async def test_a_full_staging_area_makes_the_sync_wait_not_fail(index, store, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for i in range(40):
        (source / f"f{i:02d}").write_bytes(os.urandom(50_000))
    highest = []
    async with running(index, store, tmp_path / "cache", staging_limit=256 * 1024) as data:
        stats = await Sync(index, data, OfflineTarget(index, data), source, "/dest",
                           SyncOptions(copy_group_files=2, copy_threads=2),
                           progress=lambda s: highest.append(data.staging.used)).run()
        assert stats.errors == 0 and stats.copied_files == 40
        # Bounded: the limit, plus what one batch (a quarter of it) takes before it waits.
        assert max(highest) <= 2 * 256 * 1024
        await data.flush_all()
        assert data.staging.used == 0
        assert await volume_tree(index, data, "/dest") == source_tree(source)


async def test_bad_sources_and_destinations_are_one_line_errors(index, store, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "src").mkdir()
    async with running(index, store, tmp_path / "cache") as data:
        with pytest.raises(UserError, match="does not exist"):
            await sync(index, data, tmp_path / "missing")
        with pytest.raises(UserError, match="is not a directory"):
            await sync(index, data, tmp_path / "a-file")
        await sync(index, data, tmp_path, "/top")  # /top/a-file is a file in the volume
        with pytest.raises(UserError, match=r"destination /top/a-file is not a directory in the volume"):
            await sync(index, data, tmp_path / "src", "/top/a-file/below")
        with pytest.raises(UserError, match=r"'\.\.' is not allowed"):
            await sync(index, data, tmp_path / "src", "/top/../x")
