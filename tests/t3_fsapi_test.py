"""t3: the filesystem API (usenetfs.fs.Operations) called directly, without a kernel.

Runs over a real Index file and a FileData on a LocalSegmentStore (real codec, real
encryption), in tmp_path. The `fs` fixture ends every test by unmounting the model
(forgetting what the kernel would still hold) and requiring a clean `Index.fsck()`.

Stand-ins for what the kernel provides: a request context is any object with uid, gid,
pid and umask; SetattrFields a namespace of update_* flags; readdir_reply is replaced by a
collector with a capacity (monkeypatched on the pyfuse3 module, which is where
Operations looks it up).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
from pyfuse3 import FUSEError

from usenetfs.data import DataUnavailable, FileData
from usenetfs.fs import Operations, fuse_options
from usenetfs.fs.model import XATTR_HEALTH, XATTR_STATE
from usenetfs.index import ROOT_INODE, Index, NotFound
from usenetfs.store import LocalSegmentStore

UID, GID = 1000, 1000
CTX = SimpleNamespace(uid=UID, gid=GID, pid=os.getpid(), umask=0o022)
ROOT_CTX = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)
OTHER_CTX = SimpleNamespace(uid=2000, gid=2000, pid=os.getpid(), umask=0o022)
SEGMENT = 64 * 1024  # small segments so a few hundred KiB span several


def fields(**set_) -> SimpleNamespace:
    names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
    unknown = set(set_) - set(names)
    assert not unknown, unknown
    return SimpleNamespace(**{f"update_{n}": bool(set_.get(n)) for n in names})


def attr(**values) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    for k, v in values.items():
        setattr(a, k, v)
    return a


def errno_of(excinfo) -> int:
    return excinfo.value.errno


# --------------------------------------------------------------------- fixtures


@pytest.fixture
def allow_logs() -> list[str]:
    """Substrings of WARNING+ log messages the test expects (append to the list)."""
    return []


@pytest.fixture(autouse=True)
def no_unexpected_logs(caplog, allow_logs):
    """Fail a test that logs an unexpected WARNING or worse (a swallowed bug shows there)."""
    caplog.set_level(logging.INFO)
    yield
    bad = [
        r
        for phase in ("setup", "call", "teardown")
        for r in caplog.get_records(phase)
        if r.levelno >= logging.WARNING and not any(a in r.getMessage() for a in allow_logs)
    ]
    assert not bad, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad]


def make_filedata(index: Index, store_dir: Path, cache_dir: Path):

    store = LocalSegmentStore(store_dir)
    return FileData(
        index, store, cache_dir, segment_size=SEGMENT, pack_threshold=SEGMENT // 4, idle_seconds=0.05, sync_delay=0.05
    )


class FS:
    """One mounted volume: the index, the FileData (its uploader running), the Operations."""

    def __init__(self, tmp: Path, nursery: trio.Nursery, cache: str = "cache", **ops_options) -> None:
        self.tmp = tmp
        self.nursery = nursery
        db = tmp / "index.db"
        self.index = Index.open(db) if db.exists() else Index.create(db, uid=UID, gid=GID)
        self.data = make_filedata(self.index, tmp / "store", tmp / cache)
        self.ops = Operations(self.index, self.data, **ops_options)

    async def start(self) -> None:
        self._stopped = trio.Event()
        self._scope = await self.nursery.start(self._run_data)

    async def _run_data(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                await self.data.run(task_status=_Started(task_status, scope))
        finally:
            self._stopped.set()

    # Helpers in the order the kernel would call things.
    async def create(self, name: bytes, data: bytes = b"", parent: int = ROOT_INODE, mode=0o644, flags=os.O_WRONLY):
        fi, a = await self.ops.create(parent, name, stat.S_IFREG | mode, flags | os.O_CREAT, CTX)
        if data:
            assert await self.ops.write(fi.fh, 0, data) == len(data)
        return fi.fh, a.st_ino

    async def put(self, name: bytes, data: bytes, parent: int = ROOT_INODE) -> int:
        """create, write, close: what `cp` does (no FLUSH: the mount answers it ENOSYS, so the
        kernel stops sending it). The kernel keeps its reference (lookup 1)."""
        fh, ino = await self.create(name, data, parent)
        await self.ops.release(fh)
        return ino

    async def cat(self, ino: int, size: int = 1 << 30) -> bytes:
        fi = await self.ops.open(ino, os.O_RDONLY, CTX)
        try:
            return await self.ops.read(fi.fh, 0, size)
        finally:
            await self.ops.release(fi.fh)

    async def lookup(self, name: bytes, parent: int = ROOT_INODE) -> pyfuse3.EntryAttributes:
        a = await self.ops.lookup(parent, name, CTX)
        if a.st_ino == 0:
            raise FUSEError(errno.ENOENT)
        return a

    async def exists(self, name: bytes, parent: int = ROOT_INODE) -> bool:
        return (await self.ops.lookup(parent, name, CTX)).st_ino != 0

    async def getattr(self, ino: int) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(ino, CTX)

    def lookups(self, ino: int) -> int:
        return self.ops.model.lookups(ino)

    def exists_in_index(self, ino: int) -> bool:
        try:
            self.index.get_inode(ino)
            return True
        except NotFound:
            return False

    async def unmount(self) -> list[str]:
        """The umount order: forget what the kernel held, upload everything, stop the
        uploader (its cancelled jobs clean up after themselves), then check."""
        await self.ops.close()
        await self.data.flush_all()
        self._scope.cancel()
        await self._stopped.wait()
        self.data.close()
        return self.index.fsck()


class _Started:
    """task_status for FileData.run that hands our cancel scope to nursery.start."""

    def __init__(self, task_status, scope: trio.CancelScope) -> None:
        self._task_status, self._scope = task_status, scope

    def started(self, value=None) -> None:
        self._task_status.started(self._scope)


@pytest.fixture
async def fs(tmp_path: Path, nursery):
    f = FS(tmp_path, nursery)
    await f.start()
    yield f
    problems = await f.unmount()
    f.index.close()
    assert problems == []


@pytest.fixture
def collect_readdir(monkeypatch):
    """Replace pyfuse3.readdir_reply: a token is a list with a `room` attribute."""

    class Token(list):
        def __init__(self, room: int) -> None:
            super().__init__()
            self.room = room

    def reply(token, name, a, next_id):
        if token.room <= 0:
            return False
        token.room -= 1
        token.append((name, a.st_ino, a.st_mode, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return Token


async def listdir(fs: FS, ino: int, collect, start: int = 0, room: int = 10_000, dots: bool = False):
    """The entries readdir gives from cookie `start` with room for `room` of them, "." and
    ".." left out unless `dots` (they come first, and take room)."""
    token = collect(room)
    fh = await fs.ops.opendir(ino, CTX)
    await fs.ops.readdir(fh, start, token)
    await fs.ops.releasedir(fh)
    return [e for e in token if dots or e[0] not in (b".", b"..")]


# --------------------------------------------------------------------- files


async def test_create_write_read_flush_release(fs: FS):
    payload = os.urandom(200_000)
    fh, ino = await fs.create(b"file", payload)
    assert fs.lookups(ino) == 1
    assert await fs.ops.read(fh, 0, 10) == payload[:10]  # reads through a write-only handle
    # FLUSH has nothing to do: ENOSYS makes the kernel stop sending it (it writes its cached
    # pages back before, and reports their errors to close() itself).
    with pytest.raises(FUSEError) as e:
        await fs.ops.flush(fh)
    assert errno_of(e) == errno.ENOSYS
    with pytest.raises(FUSEError) as e:
        await fs.ops.flush(fh + 1000)
    assert errno_of(e) == errno.EBADF
    a = await fs.getattr(ino)
    assert a.st_size == len(payload)
    assert stat.S_ISREG(a.st_mode) and a.st_mode & 0o777 == 0o644
    assert (a.st_uid, a.st_gid) == (UID, GID)
    assert a.st_blocks == -(-len(payload) // 512)
    assert a.st_blksize >= 131072
    assert a.st_nlink == 1
    await fs.ops.release(fh)
    assert fs.index.get_inode(ino).size == len(payload)  # persisted
    assert await fs.cat(ino) == payload
    a = await fs.lookup(b"file")
    assert a.st_ino == ino and fs.lookups(ino) == 2
    assert a.st_mtime_ns == fs.index.get_inode(ino).mtime_ns > 0  # nanoseconds, as stored
    fi = await fs.ops.open(ino, os.O_RDONLY, CTX)
    assert await fs.ops.read(fi.fh, len(payload) - 5, 100) == payload[-5:]
    assert await fs.ops.read(fi.fh, len(payload), 100) == b""
    await fs.ops.release(fi.fh)


async def test_st_blocks_never_zero_for_non_empty(fs: FS):
    for size, blocks in ((0, 0), (1, 1), (512, 1), (513, 2), (1 << 20, 2048)):
        ino = await fs.put(b"f%d" % size, b"x" * size)
        a = await fs.getattr(ino)
        assert (a.st_size, a.st_blocks) == (size, blocks)
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    assert d.st_blksize >= 131072


async def test_writes_out_of_order_keep_the_largest_size(fs: FS):
    fh, ino = await fs.create(b"f")
    await fs.ops.write(fh, 1000, b"b" * 1000)
    await fs.ops.write(fh, 0, b"a" * 1000)  # a late page below the end: size stays 2000
    assert (await fs.getattr(ino)).st_size == 2000
    await fs.ops.release(fh)
    assert await fs.cat(ino) == b"a" * 1000 + b"b" * 1000


async def test_open_with_o_trunc(fs: FS):
    ino = await fs.put(b"f", b"old contents")
    fi = await fs.ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
    assert (await fs.getattr(ino)).st_size == 0
    await fs.ops.write(fi.fh, 0, b"new")
    await fs.ops.release(fi.fh)
    assert await fs.cat(ino) == b"new"


async def test_truncate_and_extend_with_holes(fs: FS):
    ino = await fs.put(b"f", b"0123456789")
    # Path truncate (no handle): shrink.
    a = await fs.ops.setattr(ino, attr(st_size=4), fields(size=True), None, CTX)
    assert a.st_size == 4
    assert await fs.cat(ino) == b"0123"
    # Extend: the new bytes are a hole reading as zeros.
    a = await fs.ops.setattr(ino, attr(st_size=300_000), fields(size=True), None, CTX)
    assert a.st_size == 300_000 and a.st_blocks == -(-300_000 // 512)
    data = await fs.cat(ino)
    assert data == b"0123" + bytes(300_000 - 4)
    # ftruncate through an open handle, then write past the end: another hole.
    fi = await fs.ops.open(ino, os.O_RDWR, CTX)
    await fs.ops.setattr(ino, attr(st_size=2), fields(size=True), fi.fh, CTX)
    await fs.ops.write(fi.fh, 10, b"end")
    await fs.ops.release(fi.fh)
    assert await fs.cat(ino) == b"01" + bytes(8) + b"end"
    await fs.data.flush_all()
    assert await fs.cat(ino) == b"01" + bytes(8) + b"end"
    # The same on a clean file (its data only in the store): the index cut does it all.
    assert await fs.ops.getxattr(ino, XATTR_STATE, CTX) == b"clean"
    await fs.ops.setattr(ino, attr(st_size=SEGMENT + 5), fields(size=True), None, CTX)
    assert await fs.cat(ino) == b"01" + bytes(8) + b"end" + bytes(SEGMENT + 5 - 13)
    await fs.ops.setattr(ino, attr(st_size=3), fields(size=True), None, CTX)
    assert await fs.cat(ino) == b"01\0"
    # A write into a clean file fetches its content first.
    fi = await fs.ops.open(ino, os.O_WRONLY, CTX)
    await fs.ops.write(fi.fh, 5, b"x")
    await fs.ops.release(fi.fh)
    assert await fs.cat(ino) == b"01\0\0\0x"
    # Directories cannot be truncated.
    with pytest.raises(FUSEError) as e:
        await fs.ops.setattr(ROOT_INODE, attr(st_size=0), fields(size=True), None, ROOT_CTX)
    assert errno_of(e) == errno.EISDIR


async def test_o_append_without_writeback_cache(tmp_path: Path, nursery):
    f = FS(tmp_path, nursery, writeback_cache=False)
    await f.start()
    assert f.ops.enable_writeback_cache is False
    ino = await f.put(b"log", b"first\n")
    fi = await f.ops.open(ino, os.O_WRONLY | os.O_APPEND, CTX)
    await f.ops.write(fi.fh, 0, b"second\n")  # offset ignored: O_APPEND
    await f.ops.write(fi.fh, 3, b"third\n")
    await f.ops.release(fi.fh)
    assert await f.cat(ino) == b"first\nsecond\nthird\n"
    assert await f.unmount() == []
    f.index.close()


async def test_o_append_with_writeback_cache_trusts_the_kernel(fs: FS):
    # With the writeback cache the kernel computes append offsets itself (and may write a
    # dirty page back at any offset): the offsets it sends are used as they are.
    assert Operations.enable_writeback_cache is True and fs.ops.enable_writeback_cache is True
    ino = await fs.put(b"log", b"abcdef")
    fi = await fs.ops.open(ino, os.O_WRONLY | os.O_APPEND, CTX)
    await fs.ops.write(fi.fh, 6, b"gh")
    await fs.ops.write(fi.fh, 0, b"A")
    await fs.ops.release(fi.fh)
    assert await fs.cat(ino) == b"Abcdefgh"


async def test_data_read_back_from_the_store_with_an_empty_cache(tmp_path: Path, nursery):
    f = FS(tmp_path, nursery)
    await f.start()
    big = os.urandom(5 * SEGMENT + 1234)
    small = [os.urandom(n) for n in (1, 100, 5000)]
    ino_big = await f.put(b"big", big)
    d = await f.ops.mkdir(ROOT_INODE, b"dir", 0o755, CTX)
    ino_small = [await f.put(b"s%d" % i, s, d.st_ino) for i, s in enumerate(small)]
    # A sparse file: a hole in the middle must come back as zeros.
    fh, ino_sparse = await f.create(b"sparse")
    await f.ops.write(fh, 0, b"head")
    await f.ops.write(fh, 3 * SEGMENT, b"tail")
    await f.ops.release(fh)
    await f.data.flush_all()
    assert f.data.pending() == {"files": 0, "bytes": 0, "segments": 0}
    assert f.index.extents(ino_big) and f.index.extents(ino_sparse)
    pending, posted, verified, missing, dead = f.index.stats().segments
    assert verified >= 6 and pending == posted == missing == 0
    assert not [p for p in (tmp_path / "cache" / "staging").iterdir() if not p.name.startswith("spare-")]
    assert await f.ops.getxattr(ino_big, XATTR_STATE, CTX) == b"clean"
    assert await f.ops.getxattr(ino_big, XATTR_HEALTH, CTX) == b"ok"
    assert await f.unmount() == []
    f.index.close()

    # Remount: same index and store, a new, empty cache directory.
    g = FS(tmp_path, nursery, cache="cache2")
    await g.start()
    assert await g.data.recover() == 0
    assert await g.cat(ino_big) == big
    for ino, s in zip(ino_small, small):
        assert await g.cat(ino) == s
    assert await g.cat(ino_sparse) == b"head" + bytes(3 * SEGMENT - 4) + b"tail"
    assert await g.unmount() == []
    g.index.close()


async def test_staged_size_wins_over_a_lagging_index_size(fs: FS, allow_logs):
    # After a crash FileData.recover() adopts staging files whose length the index may
    # not have recorded yet: the model repairs the size when the inode comes into use.
    allow_logs.append("taking the staged size")
    fh, ino = await fs.create(b"f", b"0123456789")
    await fs.ops.release(fh)
    await fs.ops.forget([(ino, 1)])
    if fs.data.dirty_size(ino) is None:
        pytest.skip("uploaded already")
    fs.index.update_inode(ino, size=4)  # what a crash before the size commit leaves
    a = await fs.lookup(b"f")
    assert a.st_size == 10 and fs.index.get_inode(ino).size == 10
    assert await fs.cat(ino) == b"0123456789"


# --------------------------------------------------------------------- lookup counts


async def test_unlinked_open_file_lives_until_release_and_forget(fs: FS):
    fh, ino = await fs.create(b"tmp", b"still here")
    await fs.ops.unlink(ROOT_INODE, b"tmp", CTX)
    assert not await fs.exists(b"tmp")
    # Open-unlinked: still readable, writable and stat-able.
    assert (await fs.getattr(ino)).st_nlink == 0
    await fs.ops.write(fh, 10, b"!")
    assert await fs.ops.read(fh, 0, 100) == b"still here!"
    # The kernel forgets the name; the handle still holds the inode.
    await fs.ops.forget([(ino, 1)])
    assert fs.exists_in_index(ino)
    assert await fs.ops.read(fh, 0, 5) == b"still"
    await fs.ops.release(fh)
    assert not fs.exists_in_index(ino)
    assert fs.data.dirty_size(ino) is None
    assert ino not in fs.ops.model.nodes and fs.lookups(ino) == 0


async def test_unlinked_file_dies_at_forget_after_release(fs: FS):
    ino = await fs.put(b"f", b"data")
    await fs.lookup(b"f")
    assert fs.lookups(ino) == 2
    fi = await fs.ops.open(ino, os.O_RDONLY, CTX)
    await fs.ops.unlink(ROOT_INODE, b"f", CTX)
    await fs.ops.release(fi.fh)
    assert fs.exists_in_index(ino)  # the kernel still knows it
    await fs.ops.forget([(ino, 1)])
    assert fs.exists_in_index(ino)
    await fs.ops.forget([(ino, 1)])
    assert not fs.exists_in_index(ino)


async def test_a_new_files_first_write_does_not_read_the_index(fs: FS, monkeypatch):
    # cp's create, write, close: the fs just made the file, so its first write stages it
    # without asking the index what the file holds.
    fh, ino = await fs.create(b"new")
    reads = []
    real_get_inode = fs.index.get_inode
    monkeypatch.setattr(fs.index, "get_inode", lambda ino: reads.append(ino) or real_get_inode(ino))
    await fs.ops.write(fh, 0, b"first")
    await fs.ops.write(fh, 5, b" second")
    assert reads == []
    await fs.ops.release(fh)
    # Resized before its first write (ftruncate, then write at the start): the write must
    # keep the size, so it reads the index like any other file.
    fh, grown = await fs.create(b"grown")
    await fs.ops.setattr(grown, attr(st_size=100_000), fields(size=True), fh, CTX)
    await fs.ops.write(fh, 0, b"head")
    await fs.ops.release(fh)
    monkeypatch.undo()
    assert await fs.cat(ino) == b"first second"
    assert (await fs.getattr(grown)).st_size == 100_000
    assert await fs.cat(grown) == b"head" + bytes(100_000 - 4)
    await fs.data.flush_all()
    assert await fs.cat(grown) == b"head" + bytes(100_000 - 4)


async def test_forgets_look_up_only_inodes_that_lost_a_name(fs: FS, monkeypatch):
    # The kernel may forget millions of inodes (memory pressure after a big `find`): a
    # forget of an inode that still has its names must not cost an index read.
    kept = [await fs.put(b"kept%d" % k, b"x") for k in range(3)]
    gone = await fs.put(b"gone", b"y")
    await fs.ops.unlink(ROOT_INODE, b"gone", CTX)
    reads = []
    real_get_inode = fs.index.get_inode
    monkeypatch.setattr(fs.index, "get_inode", lambda ino: reads.append(ino) or real_get_inode(ino))
    await fs.ops.forget([(ino, 1) for ino in kept])
    assert reads == []
    await fs.ops.forget([(gone, 1)])
    assert set(reads) == {gone}  # looked up (and deleted: it had no name left)
    monkeypatch.undo()
    assert all(fs.exists_in_index(ino) for ino in kept) and not fs.exists_in_index(gone)


async def test_forget_of_a_named_file_only_drops_the_cache(fs: FS, allow_logs):
    allow_logs += ["below zero", "should not know"]
    ino = await fs.put(b"f", b"data")
    await fs.ops.forget([(ino, 1)])
    assert ino not in fs.ops.model.nodes and fs.lookups(ino) == 0 and fs.exists_in_index(ino)
    assert (await fs.lookup(b"f")).st_ino == ino
    # A forget of more than is held, or of an unknown inode, is logged and survives.
    await fs.ops.forget([(ino, 5), (987654, 1)])
    assert fs.exists_in_index(ino)


async def test_rmdir_directory_is_deleted_at_forget(fs: FS):
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await fs.ops.rmdir(ROOT_INODE, b"d", CTX)
    assert (await fs.getattr(d.st_ino)).st_nlink == 0
    await fs.ops.forget([(d.st_ino, 1)])
    assert not fs.exists_in_index(d.st_ino)


async def test_lookup_dot_and_dotdot(fs: FS):
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    assert (await fs.ops.lookup(d.st_ino, b".", CTX)).st_ino == d.st_ino
    assert (await fs.ops.lookup(d.st_ino, b"..", CTX)).st_ino == ROOT_INODE
    assert (await fs.ops.lookup(ROOT_INODE, b"..", CTX)).st_ino == ROOT_INODE
    assert fs.lookups(d.st_ino) == 2
    a = await fs.ops.lookup(ROOT_INODE, b"missing", CTX)
    assert a.st_ino == 0 and a.entry_timeout > 0  # a negative entry the kernel may cache
    with pytest.raises(FUSEError) as e:
        await fs.ops.lookup(ROOT_INODE, b"x" * 256, CTX)
    assert errno_of(e) == errno.ENAMETOOLONG


# --------------------------------------------------------------------- rename


async def test_rename_replaces_an_open_unposted_target(fs: FS):
    fh_old, ino_old = await fs.create(b"target", b"old contents")  # open, dirty, never uploaded
    ino_new = await fs.put(b".target.XXXXXX", b"new contents")  # rsync's temp file
    await fs.ops.rename(ROOT_INODE, b".target.XXXXXX", ROOT_INODE, b"target", 0, CTX)
    assert (await fs.lookup(b"target")).st_ino == ino_new
    assert not await fs.exists(b".target.XXXXXX")
    assert await fs.cat(ino_new) == b"new contents"
    # The replaced file lives on through its handle...
    assert (await fs.getattr(ino_old)).st_nlink == 0
    assert await fs.ops.read(fh_old, 0, 100) == b"old contents"
    await fs.ops.write(fh_old, 0, b"OLD")
    await fs.ops.release(fh_old)
    assert fs.exists_in_index(ino_old)
    # ...and dies when the kernel forgets it; its staged data goes with it.
    await fs.ops.forget([(ino_old, 1)])
    assert not fs.exists_in_index(ino_old)
    assert fs.data.dirty_size(ino_old) is None
    await fs.data.flush_all()
    assert await fs.cat(ino_new) == b"new contents"


async def test_delete_while_uploading(fs: FS):
    fh, ino = await fs.create(b"big", os.urandom(40 * SEGMENT))
    await fs.ops.release(fh)
    with trio.fail_after(10):
        while fs.data.pending()["segments"] == 0:  # the upload has begun
            await trio.sleep(0.005)
    await fs.ops.unlink(ROOT_INODE, b"big", CTX)
    await fs.ops.forget([(ino, 1)])
    assert not fs.exists_in_index(ino) and fs.data.dirty_size(ino) is None
    # The fixture's unmount then requires a clean fsck: no segment of it may be left.


async def test_rename_over_a_file_nobody_holds_deletes_it_at_once(fs: FS):
    ino_a = await fs.put(b"a", b"A")
    ino_b = await fs.put(b"b", b"B")
    await fs.ops.forget([(ino_b, 1)])
    await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0, CTX)
    assert not fs.exists_in_index(ino_b)
    assert await fs.cat(ino_a) == b"A"


async def test_rename_noreplace_and_exchange(fs: FS):
    await fs.put(b"a", b"A")
    ino_b = await fs.put(b"b", b"B")
    with pytest.raises(FUSEError) as e:
        await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", pyfuse3.RENAME_NOREPLACE, CTX)
    assert errno_of(e) == errno.EEXIST
    with pytest.raises(FUSEError) as e:
        await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", pyfuse3.RENAME_EXCHANGE, CTX)
    assert errno_of(e) == errno.EINVAL
    assert (await fs.lookup(b"b")).st_ino == ino_b
    await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"c", pyfuse3.RENAME_NOREPLACE, CTX)
    assert await fs.exists(b"c") and not await fs.exists(b"a")
    with pytest.raises(FUSEError) as e:
        await fs.ops.rename(ROOT_INODE, b"nothing", ROOT_INODE, b"d", 0, CTX)
    assert errno_of(e) == errno.ENOENT


async def test_directory_rename(fs: FS):
    a = await fs.ops.mkdir(ROOT_INODE, b"a", 0o755, CTX)
    b = await fs.ops.mkdir(a.st_ino, b"b", 0o755, CTX)
    c = await fs.ops.mkdir(ROOT_INODE, b"c", 0o755, CTX)
    f = await fs.put(b"f", b"in b", b.st_ino)
    assert (await fs.getattr(ROOT_INODE)).st_nlink == 2 + 2
    assert (await fs.getattr(a.st_ino)).st_nlink == 3
    # Into its own subtree, or onto itself as a child: EINVAL.
    for parent, name in ((b.st_ino, b"x"), (a.st_ino, b"x")):
        with pytest.raises(FUSEError) as e:
            await fs.ops.rename(ROOT_INODE, b"a", parent, name, 0, CTX)
        assert errno_of(e) == errno.EINVAL
    # Move b from a into c: link counts follow; the contents come along.
    await fs.ops.rename(a.st_ino, b"b", c.st_ino, b"b2", 0, CTX)
    assert (await fs.getattr(a.st_ino)).st_nlink == 2
    assert (await fs.getattr(c.st_ino)).st_nlink == 3
    assert (await fs.lookup(b"b2", c.st_ino)).st_ino == b.st_ino
    assert (await fs.ops.lookup(b.st_ino, b"..", CTX)).st_ino == c.st_ino
    assert await fs.cat(f) == b"in b"
    # A directory over a non-empty directory: ENOTEMPTY; over a file: ENOTDIR.
    with pytest.raises(FUSEError) as e:
        await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"c", 0, CTX)
    assert errno_of(e) == errno.ENOTEMPTY
    await fs.put(b"file", b"")
    with pytest.raises(FUSEError) as e:
        await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"file", 0, CTX)
    assert errno_of(e) == errno.ENOTDIR
    # A directory over an empty one replaces it; the victim dies at forget.
    e_dir = await fs.ops.mkdir(ROOT_INODE, b"empty", 0o755, CTX)
    await fs.ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"empty", 0, CTX)
    assert (await fs.lookup(b"empty")).st_ino == a.st_ino
    await fs.ops.forget([(e_dir.st_ino, 1)])
    assert not fs.exists_in_index(e_dir.st_ino)
    assert (await fs.getattr(ROOT_INODE)).st_nlink == 2 + 2


# --------------------------------------------------------------------- directories


async def test_rmdir_and_unlink_rules(fs: FS):
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    ino = await fs.put(b"f", b"x", d.st_ino)
    with pytest.raises(FUSEError) as e:
        await fs.ops.rmdir(ROOT_INODE, b"d", CTX)
    assert errno_of(e) == errno.ENOTEMPTY
    with pytest.raises(FUSEError) as e:
        await fs.ops.unlink(ROOT_INODE, b"d", CTX)
    assert errno_of(e) == errno.EISDIR
    with pytest.raises(FUSEError) as e:
        await fs.ops.rmdir(d.st_ino, b"f", CTX)
    assert errno_of(e) == errno.ENOTDIR
    with pytest.raises(FUSEError) as e:
        await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    assert errno_of(e) == errno.EEXIST
    with pytest.raises(FUSEError) as e:
        await fs.ops.mkdir(ino, b"sub", 0o755, CTX)
    assert errno_of(e) == errno.ENOTDIR
    with pytest.raises(FUSEError) as e:
        await fs.ops.opendir(ino, CTX)
    assert errno_of(e) == errno.ENOTDIR
    await fs.ops.unlink(d.st_ino, b"f", CTX)
    await fs.ops.rmdir(ROOT_INODE, b"d", CTX)
    assert not await fs.exists(b"d")


async def test_readdir_cookies_stay_valid_while_entries_change(fs: FS, collect_readdir):
    names = [b"f%03d" % i for i in range(40)]
    inos = {n: await fs.put(n, b"") for n in names}
    first = await listdir(fs, ROOT_INODE, collect_readdir, room=17)  # "." and ".." take two
    assert [e[0] for e in first] == names[:15]
    assert all(stat.S_ISREG(mode) for _, _, mode, _ in first)  # st_mode filled: d_type
    # readdir(plus) took one reference per entry the kernel accepted, and only those.
    assert fs.lookups(inos[names[14]]) == 2 and fs.lookups(inos[names[15]]) == 1
    # Between two calls: entries already seen and still to come are removed, new ones added.
    await fs.ops.unlink(ROOT_INODE, names[3], CTX)
    await fs.ops.unlink(ROOT_INODE, names[14], CTX)  # the very entry the cookie names
    await fs.ops.unlink(ROOT_INODE, names[20], CTX)
    await fs.put(b"new", b"")
    await fs.ops.rename(ROOT_INODE, names[30], ROOT_INODE, b"renamed", 0, CTX)
    rest = await listdir(fs, ROOT_INODE, collect_readdir, start=first[-1][3])
    got = [e[0] for e in rest]
    # Nothing skipped, nothing repeated: the unchanged entries after the cookie, in order.
    expected = [n for n in names[15:] if n != names[20]]
    expected = [b"renamed" if n == names[30] else n for n in expected]  # a rename keeps its cookie
    assert got == expected + [b"new"]
    assert not {e[0] for e in first} & set(got)
    # Cookies are increasing and unique.
    cookies = [e[3] for e in first + rest]
    assert cookies == sorted(set(cookies))
    # A full listing of a directory.
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await fs.ops.mkdir(d.st_ino, b"sub", 0o700, CTX)
    await fs.ops.symlink(d.st_ino, b"ln", b"../f000", CTX)
    listing = {e[0]: e[2] for e in await listdir(fs, d.st_ino, collect_readdir)}
    assert stat.S_ISDIR(listing[b"sub"]) and stat.S_ISLNK(listing[b"ln"])
    # Many entries: more than one index batch.
    many = await fs.ops.mkdir(ROOT_INODE, b"many", 0o755, CTX)
    for i in range(600):
        fs.ops.model.index.make_node(many.st_ino, b"m%04d" % i, stat.S_IFREG | 0o644, UID, GID)
    assert len(await listdir(fs, many.st_ino, collect_readdir)) == 600


async def test_readdir_lists_dot_and_dotdot_first_and_counts_no_reference_for_them(fs: FS, collect_readdir):
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    sub = await fs.ops.mkdir(d.st_ino, b"sub", 0o700, CTX)
    await fs.ops.mknod(sub.st_ino, b"f", stat.S_IFREG | 0o644, 0, CTX)
    before = (fs.lookups(sub.st_ino), fs.lookups(d.st_ino))
    listing = await listdir(fs, sub.st_ino, collect_readdir, dots=True)
    assert [(e[0], e[1]) for e in listing[:2]] == [(b".", sub.st_ino), (b"..", d.st_ino)]
    assert stat.S_ISDIR(listing[0][2]) and stat.S_ISDIR(listing[1][2])
    assert [e[0] for e in listing[2:]] == [b"f"]
    assert [e[3] for e in listing] == sorted({e[3] for e in listing})  # increasing, unique
    assert (fs.lookups(sub.st_ino), fs.lookups(d.st_ino)) == before  # the kernel takes none
    # Resuming after "." gives ".." next; after "..", the entries.
    assert [e[0] for e in await listdir(fs, sub.st_ino, collect_readdir, start=listing[0][3], dots=True)] == [b"..", b"f"]
    assert [e[0] for e in await listdir(fs, sub.st_ino, collect_readdir, start=listing[1][3], dots=True)] == [b"f"]
    root = await listdir(fs, ROOT_INODE, collect_readdir, room=2, dots=True)
    assert [(e[0], e[1]) for e in root] == [(b".", ROOT_INODE), (b"..", ROOT_INODE)]
    # A directory removed while open still lists (its "..": itself, it has no parent now).
    fh = await fs.ops.opendir(sub.st_ino, CTX)
    await fs.ops.unlink(sub.st_ino, b"f", CTX)
    await fs.ops.rmdir(d.st_ino, b"sub", CTX)
    token = collect_readdir(10)
    await fs.ops.readdir(fh, 0, token)
    await fs.ops.releasedir(fh)
    assert [e[0] for e in token] == [b".", b".."]


# --------------------------------------------------------------------- links


async def test_symlink_and_readlink(fs: FS):
    a = await fs.ops.symlink(ROOT_INODE, b"ln", b"some/where/else", CTX)
    assert stat.S_ISLNK(a.st_mode) and a.st_size == len(b"some/where/else")
    assert await fs.ops.readlink(a.st_ino, CTX) == b"some/where/else"
    ino = await fs.put(b"f", b"x")
    with pytest.raises(FUSEError) as e:
        await fs.ops.readlink(ino, CTX)
    assert errno_of(e) == errno.EINVAL
    await fs.ops.unlink(ROOT_INODE, b"ln", CTX)
    await fs.ops.forget([(a.st_ino, 1)])
    assert not fs.exists_in_index(a.st_ino)


async def test_hard_links_and_nlink(fs: FS):
    ino = await fs.put(b"a", b"shared")
    d = await fs.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    a = await fs.ops.link(ino, d.st_ino, b"b", CTX)
    assert a.st_ino == ino and a.st_nlink == 2 and fs.lookups(ino) == 2
    assert (await fs.getattr(ino)).st_nlink == 2
    assert (await fs.lookup(b"b", d.st_ino)).st_ino == ino
    with pytest.raises(FUSEError) as e:
        await fs.ops.link(ino, d.st_ino, b"b", CTX)
    assert errno_of(e) == errno.EEXIST
    with pytest.raises(FUSEError) as e:
        await fs.ops.link(d.st_ino, ROOT_INODE, b"dirlink", CTX)
    assert errno_of(e) == errno.EPERM
    await fs.ops.unlink(ROOT_INODE, b"a", CTX)
    assert (await fs.getattr(ino)).st_nlink == 1
    await fs.ops.forget([(ino, 3)])
    assert fs.exists_in_index(ino)  # still named d/b
    assert (await fs.lookup(b"b", d.st_ino)).st_ino == ino
    assert await fs.cat(ino) == b"shared"


async def test_mknod_fifo_only(fs: FS):
    a = await fs.ops.mknod(ROOT_INODE, b"fifo", stat.S_IFIFO | 0o600, 0, CTX)
    assert stat.S_ISFIFO(a.st_mode)
    a = await fs.ops.mknod(ROOT_INODE, b"reg", stat.S_IFREG | 0o600, 0, CTX)
    assert stat.S_ISREG(a.st_mode)
    for mode in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        with pytest.raises(FUSEError) as e:
            await fs.ops.mknod(ROOT_INODE, b"dev", mode | 0o600, os.makedev(1, 3), CTX)
        assert errno_of(e) == errno.EPERM


# --------------------------------------------------------------------- attributes


async def test_setattr_mode_owner_times(fs: FS):
    ino = await fs.put(b"f", b"x")
    a = await fs.ops.setattr(ino, attr(st_mode=stat.S_IFREG | 0o600), fields(mode=True), None, CTX)
    assert a.st_mode == stat.S_IFREG | 0o600
    with pytest.raises(FUSEError) as e:  # chmod by someone else
        await fs.ops.setattr(ino, attr(st_mode=0o777), fields(mode=True), None, OTHER_CTX)
    assert errno_of(e) == errno.EPERM
    with pytest.raises(FUSEError) as e:  # chown by a non-root user
        await fs.ops.setattr(ino, attr(st_uid=2000), fields(uid=True), None, CTX)
    assert errno_of(e) == errno.EPERM
    with pytest.raises(FUSEError) as e:  # chgrp to a group the owner is not in
        await fs.ops.setattr(ino, attr(st_gid=4242), fields(gid=True), None, CTX)
    assert errno_of(e) == errno.EPERM
    # chown to oneself, chgrp to one's own group: allowed (rsync, KIO do it before rename).
    await fs.ops.setattr(ino, attr(st_uid=UID, st_gid=GID), fields(uid=True, gid=True), None, CTX)
    a = await fs.ops.setattr(ino, attr(st_uid=3000, st_gid=3000), fields(uid=True, gid=True), None, ROOT_CTX)
    assert (a.st_uid, a.st_gid) == (3000, 3000)
    # Times with nanoseconds (futimens), ctime follows the change.
    before = a.st_ctime_ns
    a = await fs.ops.setattr(
        ino, attr(st_atime_ns=1_234_567_891, st_mtime_ns=1_600_000_000_123_456_789), fields(atime=True, mtime=True), None, ROOT_CTX
    )
    assert (a.st_atime_ns, a.st_mtime_ns) == (1_234_567_891, 1_600_000_000_123_456_789)
    assert a.st_ctime_ns >= before
    row = fs.index.get_inode(ino)
    assert (row.atime_ns, row.mtime_ns, row.uid, row.mode & 0o7777) == (1_234_567_891, 1_600_000_000_123_456_789, 3000, 0o600)


async def test_setgid_directory_passes_its_group_on(fs: FS):
    d = await fs.ops.mkdir(ROOT_INODE, b"shared", 0o2775, CTX)
    await fs.ops.setattr(d.st_ino, attr(st_gid=500), fields(gid=True), None, ROOT_CTX)
    f = await fs.ops.mkdir(d.st_ino, b"sub", 0o755, CTX)
    assert f.st_gid == 500 and f.st_mode & stat.S_ISGID
    fh, ino = await fs.create(b"f", b"", d.st_ino)
    await fs.ops.release(fh)
    assert (await fs.getattr(ino)).st_gid == 500


async def test_uid_gid_umask_overrides(tmp_path: Path, nursery):
    f = FS(tmp_path, nursery, uid=4321, gid=8765, umask=0o077)
    await f.start()
    ino = await f.put(b"f", b"x")
    a = await f.getattr(ino)
    assert (a.st_uid, a.st_gid, a.st_mode) == (4321, 8765, stat.S_IFREG | 0o600)
    row = f.index.get_inode(ino)
    assert (row.uid, row.gid, row.mode & 0o777) == (UID, GID, 0o644)  # stored as created
    assert await f.unmount() == []
    f.index.close()


# --------------------------------------------------------------------- xattrs


async def test_xattrs(fs: FS):
    ino = await fs.put(b"f", b"data")
    await fs.ops.setxattr(ino, b"user.xdg.comment", b"hello", CTX)
    await fs.ops.setxattr(ino, b"user.rsync.%stat", b"100644 0,0 1000:1000", CTX)
    assert await fs.ops.getxattr(ino, b"user.xdg.comment", CTX) == b"hello"
    assert sorted(await fs.ops.listxattr(ino, CTX)) == [b"user.rsync.%stat", b"user.xdg.comment"]
    await fs.ops.setxattr(ino, b"user.xdg.comment", b"", CTX)  # empty values are values
    assert await fs.ops.getxattr(ino, b"user.xdg.comment", CTX) == b""
    await fs.ops.removexattr(ino, b"user.xdg.comment", CTX)
    for call in (fs.ops.getxattr, fs.ops.removexattr):
        with pytest.raises(FUSEError) as e:
            await call(ino, b"user.xdg.comment", CTX)
        assert errno_of(e) == errno.ENODATA == pyfuse3.ENOATTR
    for name in (b"security.selinux", b"trusted.x", b"system.posix_acl_access"):
        with pytest.raises(FUSEError) as e:
            await fs.ops.getxattr(ino, name, CTX)
        assert errno_of(e) == errno.EOPNOTSUPP
        with pytest.raises(FUSEError) as e:
            await fs.ops.setxattr(ino, name, b"v", CTX)
        assert errno_of(e) == errno.EOPNOTSUPP
    # Directories carry user.* too.
    await fs.ops.setxattr(ROOT_INODE, b"user.a", b"1", CTX)
    assert await fs.ops.listxattr(ROOT_INODE, CTX) == [b"user.a"]
    # The virtual attributes: readable, read-only, not listed (copy tools would copy them).
    assert await fs.ops.getxattr(ino, XATTR_HEALTH, CTX) == b"ok"
    assert await fs.ops.getxattr(ino, XATTR_STATE, CTX) in (b"dirty", b"clean")
    await fs.data.flush_all()
    assert await fs.ops.getxattr(ino, XATTR_STATE, CTX) == b"clean"
    fi = await fs.ops.open(ino, os.O_WRONLY, CTX)
    await fs.ops.write(fi.fh, 0, b"D")
    assert await fs.ops.getxattr(ino, XATTR_STATE, CTX) == b"dirty"
    await fs.ops.release(fi.fh)
    for call, args in ((fs.ops.setxattr, (b"x",)), (fs.ops.removexattr, ())):
        with pytest.raises(FUSEError) as e:
            await call(ino, XATTR_STATE, *args, CTX)
        assert errno_of(e) == errno.EPERM
    assert XATTR_STATE not in await fs.ops.listxattr(ino, CTX)
    with pytest.raises(FUSEError) as e:
        await fs.ops.getxattr(ROOT_INODE, XATTR_STATE, CTX)
    assert errno_of(e) == errno.ENODATA
    # No user.* on symlinks (what Linux does).
    ln = await fs.ops.symlink(ROOT_INODE, b"ln", b"f", CTX)
    with pytest.raises(FUSEError) as e:
        await fs.ops.setxattr(ln.st_ino, b"user.a", b"1", CTX)
    assert errno_of(e) == errno.EPERM
    # Deleting the file takes its attributes along (fsck at the end checks it).
    await fs.ops.unlink(ROOT_INODE, b"f", CTX)


# --------------------------------------------------------------------- statfs


async def test_statfs_fields_and_cache(tmp_path: Path, nursery):
    clock = [1000.0]
    f = FS(tmp_path, nursery, quota_bytes=1 << 40, monotonic=lambda: clock[0])
    await f.start()
    s = await f.ops.statfs(CTX)
    assert s.f_bsize == s.f_frsize == 4096
    assert s.f_namemax == 255
    assert s.f_blocks == (1 << 40) // 4096
    assert s.f_bfree == s.f_bavail == s.f_blocks
    assert s.f_files - s.f_ffree == 1 and s.f_ffree == s.f_favail > 0
    await f.put(b"f", b"x" * 10_000)
    clock[0] += 5  # cached for a while: some applications call statfs constantly
    assert (await f.ops.statfs(CTX)).f_bfree == s.f_blocks
    clock[0] += 30
    s2 = await f.ops.statfs(CTX)
    assert s2.f_bfree == s.f_blocks - 3  # ceil(10000 / 4096)
    assert s2.f_files - s2.f_ffree == 2
    assert await f.unmount() == []
    f.index.close()

    index = Index.open(tmp_path / "index.db")
    s = await Operations(index, None).statfs(CTX)
    assert s.f_blocks * s.f_bsize == 1 << 50  # no quota: 1 PiB
    index.close()


# --------------------------------------------------------------------- mount switches


async def test_read_only_mode(tmp_path: Path, nursery):
    f = FS(tmp_path, nursery)
    await f.start()
    ino = await f.put(b"f", b"data")
    await f.ops.mkdir(ROOT_INODE, b"d", 0o755, CTX)
    await f.ops.close()
    ro = Operations(f.index, f.data, read_only=True)
    g = SimpleNamespace(ops=ro)
    assert await FS.cat(g, ino) == b"data"
    attempts = [
        ro.setattr(ino, attr(st_mode=0o600), fields(mode=True), None, CTX),
        ro.mknod(ROOT_INODE, b"n", stat.S_IFIFO | 0o600, 0, CTX),
        ro.mkdir(ROOT_INODE, b"x", 0o755, CTX),
        ro.unlink(ROOT_INODE, b"f", CTX),
        ro.rmdir(ROOT_INODE, b"d", CTX),
        ro.symlink(ROOT_INODE, b"l", b"f", CTX),
        ro.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0, CTX),
        ro.link(ino, ROOT_INODE, b"h", CTX),
        ro.create(ROOT_INODE, b"c", stat.S_IFREG | 0o644, os.O_WRONLY, CTX),
        ro.open(ino, os.O_WRONLY, CTX),
        ro.open(ino, os.O_RDONLY | os.O_TRUNC, CTX),
        ro.setxattr(ino, b"user.a", b"1", CTX),
        ro.removexattr(ino, b"user.a", CTX),
    ]
    for coro in attempts:
        with pytest.raises(FUSEError) as e:
            await coro
        assert errno_of(e) == errno.EROFS
    await ro.close()
    assert await f.cat(ino) == b"data"
    assert await f.unmount() == []
    f.index.close()


async def test_unexpected_errors_become_eio_and_are_logged(fs: FS, caplog, allow_logs):
    allow_logs.append("a bug")
    ino = await fs.put(b"f", b"data")

    async def broken(*args, **kw):
        raise RuntimeError("a bug")

    fs.ops.model.data = SimpleNamespace(read=broken, open_for_write=broken, release=fs.data.release)
    fi = await fs.ops.open(ino, os.O_RDONLY, CTX)
    with caplog.at_level(logging.ERROR, logger="usenetfs.fs.operations"):
        with pytest.raises(FUSEError) as e:
            await fs.ops.read(fi.fh, 0, 10)
    assert errno_of(e) == errno.EIO
    assert "a bug" in caplog.text
    caplog.clear()
    with pytest.raises(FUSEError) as e:
        await fs.ops.open(ino, os.O_WRONLY, CTX)  # fails half-way: nothing must leak
    assert errno_of(e) == errno.EIO
    fs.ops.model.data = fs.data
    await fs.ops.release(fi.fh)
    # Nothing leaked: the node of an inode goes once no handle holds it.
    assert ino not in fs.ops.model.nodes and not fs.ops.model.handles and fs.lookups(ino) == 1
    # Unknown handles and inodes are errors, not crashes.
    with pytest.raises(FUSEError) as e:
        await fs.ops.read(12345, 0, 1)
    assert errno_of(e) == errno.EBADF
    with pytest.raises(FUSEError) as e:
        await fs.ops.getattr(999_999, CTX)
    assert errno_of(e) == errno.ENOENT


async def test_data_unavailable_is_eio(fs: FS, allow_logs):
    allow_logs.append("unavailable")
    ino = await fs.put(b"f", b"data")

    async def unavailable(*args, **kw):
        raise DataUnavailable(None, 1, "article not found")

    fs.ops.model.data = SimpleNamespace(read=unavailable)
    fi = await fs.ops.open(ino, os.O_RDONLY, CTX)
    with pytest.raises(FUSEError) as e:
        await fs.ops.read(fi.fh, 0, 10)
    assert errno_of(e) == errno.EIO
    fs.ops.model.data = fs.data
    await fs.ops.release(fi.fh)


async def test_size_and_times_of_an_open_file_reach_the_index_at_release_or_fsync(fs: FS):
    # Writes change size and mtime in memory only (FsModel._update_later); getattr sees them
    # at once, the index at the last writer's release, or at fsync.
    fh, ino = await fs.create(b"f")
    created = fs.index.get_inode(ino)
    await fs.ops.write(fh, 0, b"x" * 5000)
    a = await fs.getattr(ino)
    assert a.st_size == 5000 and a.st_mtime_ns >= created.mtime_ns
    assert fs.index.get_inode(ino).size == 0  # not yet: no commit per write
    later = created.mtime_ns + 10**9
    await fs.ops.setattr(ino, attr(st_mtime_ns=later), fields(mtime=True), fh, CTX)  # the kernel's, at close
    await fs.ops.fsync(fh, False)
    row = fs.index.get_inode(ino)
    assert (row.size, row.mtime_ns) == (5000, later)
    await fs.ops.write(fh, 5000, b"y")
    assert fs.index.get_inode(ino).size == 5000
    await fs.ops.release(fh)
    row, a = fs.index.get_inode(ino), await fs.getattr(ino)
    assert (row.size, row.mtime_ns) == (a.st_size, a.st_mtime_ns) == (5001, row.mtime_ns)
    assert row.mtime_ns != later  # the last write's time


async def test_fsync_reports_local_disk_errors_and_retries(fs: FS, allow_logs):
    allow_logs.append("No space left")
    fh, ino = await fs.create(b"f", b"data")
    real_fsync = fs.data.fsync
    calls = []

    async def full_disk(i):
        calls.append(i)
        raise OSError(errno.ENOSPC, "No space left on device")

    fs.data.fsync = full_disk
    try:
        for _ in range(2):  # still not durable: tried again, and reported again
            with pytest.raises(FUSEError) as e:
                await fs.ops.fsync(fh, False)
            assert errno_of(e) == errno.ENOSPC
        assert calls == [ino, ino]
        await fs.ops.release(fh)  # close() does not wait for the disk (see Operations.flush)
        fh = (await fs.ops.open(ino, os.O_WRONLY, CTX)).fh
    finally:
        fs.data.fsync = real_fsync
    await fs.ops.fsync(fh, False)
    await fs.ops.release(fh)


async def test_concurrent_writes_in_any_order(fs: FS):
    fh, ino = await fs.create(b"f")
    chunk = 4096
    blocks = [os.urandom(chunk) for _ in range(64)]
    order = list(range(64))
    import random

    random.Random(1).shuffle(order)
    async with trio.open_nursery() as n:
        for i in order:
            n.start_soon(fs.ops.write, fh, i * chunk, blocks[i])
    assert (await fs.getattr(ino)).st_size == 64 * chunk
    await fs.ops.release(fh)
    assert await fs.cat(ino) == b"".join(blocks)
    await fs.data.flush_all()
    assert await fs.cat(ino) == b"".join(blocks)


def test_fuse_options():
    opts = fuse_options("usenetfs:myvol")
    assert opts == {"fsname=usenetfs:myvol", "subtype=usenetfs", "default_permissions"}
    opts = fuse_options("a,b", allow_other=True, ro=True, extra=("noatime", "rw", "_netdev", "x-gvfs-notrash"))
    assert opts == {"fsname=a\\,b", "subtype=usenetfs", "default_permissions", "allow_other", "ro", "noatime"}
    for bad in ("max_write=1048576", "max_readahead=1", "big_writes", "splice_read", "async_read", "max_background=4",
                "clone_fd", "fsname=x", "subtype=y"):
        with pytest.raises(ValueError):
            fuse_options("v", extra=(bad,))
    with pytest.raises(ValueError):
        fuse_options("vølume")
