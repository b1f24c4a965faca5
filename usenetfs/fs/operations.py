"""`Operations`: the pyfuse3 request handlers of a usenetfs mount.

Owns the translation between pyfuse3 and the model (model.py): request contexts to
`Caller`, `InodeRow` to `EntryAttributes` (st_blocks, st_blksize, timeouts), readdir
replies, statfs numbers (cached), mount-level switches (read-only, writeback cache) and
the one error boundary: every handler goes through `_boundary`, so only `FUSEError`
leaves it. Domain errors (the index's, the model's `FsError`, FileData's
`DataUnavailable`) become their errno; anything else is a bug, logged with its
traceback, answered with EIO, and never allowed to end `pyfuse3.main()`.

Construct it with the volume's `Index` and `FileData`:

    ops = Operations(index, filedata, read_only=False, quota_bytes=None)
    pyfuse3.init(ops, mountpoint, fuse_options(fsname))
    ... await pyfuse3.main() ...           # with filedata.run() in the nursery
    await ops.close()          # releases handles, forgets what the kernel did not (deleting
                               # files unlinked while open)
    await filedata.flush_all() # umount waits for the uploads
    ... cancel filedata.run() and wait for it, then index.close()
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable, Sequence

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData

from ..data import DataUnavailable
from ..index import IndexError_, InodeRow
from .model import Caller, FsError, FsModel

log = logging.getLogger(__name__)

BLOCK = 4096  # statfs f_bsize == f_frsize: df and GIO then agree
BLKSIZE = 1 << 20  # st_blksize: cp and friends size their buffers from it
PiB = 1 << 50
MAX_INODES = 1 << 32  # what statfs reports as the inode capacity
READDIR_BATCH = 256
# readdir cookies: "." is 1, ".." is 2, and a directory entry's is its (stable) dentry id
# shifted past them.
DOT_COOKIE, DOTDOT_COOKIE = 1, 2
# Errors from the local disk (staging, cache) that mean something to the caller as they are.
_PASSED_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def _boundary(fn):
    """Only FUSEError may leave a handler: anything else would end the mount."""
    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self, *args):
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except (IndexError_, FsError) as e:
            raise FUSEError(e.errno) from None
        except DataUnavailable as e:
            log.warning("%s: data unavailable: %s", name, e)
            raise FUSEError(errno.EIO) from None
        except OSError as e:
            if e.errno in _PASSED_OS_ERRORS:
                log.warning("%s: %s", name, e)
                raise FUSEError(e.errno) from None
            log.error("%s failed (a bug?)", name, exc_info=True)
            raise FUSEError(errno.EIO) from None
        except Exception:
            log.error("%s failed: a bug; answering EIO", name, exc_info=True)
            raise FUSEError(errno.EIO) from None

    return handler


def _caller(ctx) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.pid)


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers over an `FsModel`.

    index, data      the volume's `Index` and `FileData`
    read_only        every change answers EROFS (mount shares read-only)
    uid, gid, umask  override the reported owner / permission bits (None: as stored)
    quota_bytes      the size statfs reports (None: 1 PiB)
    writeback_cache  ask the kernel for its writeback cache (it then handles O_APPEND)
    keep_cache       keep the kernel's page cache across opens (safe: we are the only writer)
    attr_timeout, entry_timeout, negative_timeout   kernel cache lifetimes in seconds
    statfs_ttl       how long a statfs answer is reused (some apps call it constantly)
    """

    # Read by pyfuse3's init handler (pyfuse3 3.5: a class attribute, also honoured per instance).
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(
        self,
        index,
        data,
        *,
        read_only: bool = False,
        uid: int | None = None,
        gid: int | None = None,
        umask: int | None = None,
        quota_bytes: int | None = None,
        writeback_cache: bool = True,
        keep_cache: bool = True,
        attr_timeout: float = 60.0,
        entry_timeout: float = 60.0,
        negative_timeout: float = 10.0,
        statfs_ttl: float = 15.0,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.enable_writeback_cache = writeback_cache
        # Set once the kernel's FUSE INIT has been answered (see mountd.announce_when_initialized).
        self.initialized = trio.Event()
        self.model = FsModel(
            index,
            data,
            uid=uid,
            gid=gid,
            umask=umask,
            read_only=read_only,
            writeback=writeback_cache,
            clock=clock,
            sup_groups=pyfuse3.get_sup_groups,
        )
        self.read_only = read_only
        self.quota_bytes = PiB if quota_bytes is None else quota_bytes
        self.keep_cache = keep_cache
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.negative_timeout = negative_timeout
        self.statfs_ttl = statfs_ttl
        self._monotonic = monotonic
        self._statfs: tuple[float, StatvfsData] | None = None

    # ------------------------------------------------------------------ helpers

    def attributes(self, row: InodeRow) -> EntryAttributes:
        row = self.model.view(row)
        e = EntryAttributes()
        e.st_ino = row.id
        e.generation = row.generation
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = row.mode
        e.st_nlink = row.nlink
        e.st_uid = row.uid
        e.st_gid = row.gid
        e.st_rdev = row.rdev
        e.st_size = row.size
        e.st_blksize = BLKSIZE
        # cp takes st_blocks < size/512 for "sparse" and du sums it: never 0 when non-empty.
        e.st_blocks = -(-row.size // 512)
        e.st_atime_ns = row.atime_ns
        e.st_mtime_ns = row.mtime_ns
        e.st_ctime_ns = row.ctime_ns
        return e

    def _file_info(self, fh: int) -> FileInfo:
        return FileInfo(fh=fh, keep_cache=self.keep_cache)

    async def close(self) -> None:
        """Call after pyfuse3.main() returned: releases handles and forgets every inode
        the kernel still held (deleting files unlinked while open)."""
        await self.model.close()

    # ------------------------------------------------------------------ lifecycle, lookup

    def init(self) -> None:
        # Runs inside libfuse's INIT handling, just before the answer is written: by the
        # time a task woken by this event runs, the kernel has applied the answer.
        log.debug("FUSE session started (writeback cache requested: %s)", self.enable_writeback_cache)
        self.initialized.set()

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx) -> EntryAttributes:
        row = self.model.lookup(parent_inode, name)
        if row is None:
            if self.negative_timeout <= 0:
                raise FUSEError(errno.ENOENT)
            # A negative entry the kernel may cache: only this mount changes the namespace.
            e = EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.negative_timeout
            return e
        return self.attributes(row)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Not a request: nothing may escape, not even FUSEError.
        for ino, count in inode_list:
            try:
                self.model.forget(ino, count)
            except Exception:
                log.error("forget(%d, %d) failed", ino, count, exc_info=True)

    @_boundary
    async def getattr(self, inode: int, ctx) -> EntryAttributes:
        return self.attributes(self.model.row(inode))

    @_boundary
    async def setattr(self, inode: int, attr: EntryAttributes, fields, fh, ctx) -> EntryAttributes:
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
        # pyfuse3 already turned *_NOW into the current time in attr.
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        row = await self.model.setattr(inode, _caller(ctx), **kw)
        return self.attributes(row)

    # ------------------------------------------------------------------ namespace

    @_boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx) -> EntryAttributes:
        return self.attributes(self.model.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx) -> EntryAttributes:
        return self.attributes(self.model.mkdir(parent_inode, name, mode, _caller(ctx)))

    @_boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx) -> EntryAttributes:
        return self.attributes(self.model.symlink(parent_inode, name, target, _caller(ctx)))

    @_boundary
    async def readlink(self, inode: int, ctx) -> bytes:
        return self.model.readlink(inode)

    @_boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx) -> EntryAttributes:
        return self.attributes(self.model.link(inode, new_parent_inode, new_name))

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx) -> None:
        self.model.unlink(parent_inode, name)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx) -> None:
        self.model.rmdir(parent_inode, name)

    @_boundary
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx
    ) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            # RENAME_EXCHANGE (and RENAME_WHITEOUT) are not implemented.
            raise FUSEError(errno.EINVAL)
        self.model.rename(
            parent_inode_old,
            name_old,
            parent_inode_new,
            name_new,
            replace=not flags & pyfuse3.RENAME_NOREPLACE,
        )

    # ------------------------------------------------------------------ directories

    @_boundary
    async def opendir(self, inode: int, ctx) -> int:
        # Stateless: the handle is the inode; positions are dentry cookies.
        self.model.check_dir(inode)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token) -> None:
        model = self.model
        # "." and ".." first, as `ls -a` expects. The kernel takes no reference for them in
        # a readdirplus listing (fuse_direntplus_link skips them): none is counted here.
        if start_id < DOT_COOKIE and not pyfuse3.readdir_reply(token, b".", self.attributes(model.row(fh)),
                                                               DOT_COOKIE):
            return
        if start_id < DOTDOT_COOKIE and not pyfuse3.readdir_reply(
                token, b"..", self.attributes(model.parent_row(fh)), DOTDOT_COOKIE):
            return
        after = max(0, start_id - DOTDOT_COOKIE)
        while True:
            entries = model.readdir(fh, after, READDIR_BATCH)
            for cookie, name, row in entries:
                # The cookie names the entry; the kernel passes it back to continue *after* it.
                if not pyfuse3.readdir_reply(token, name, self.attributes(row), cookie + DOTDOT_COOKIE):
                    return
                model.remember_entry(fh, row)
                after = cookie
            if len(entries) < READDIR_BATCH:
                return

    @_boundary
    async def releasedir(self, fh: int) -> None:
        pass

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass  # namespace changes are committed to the index when they happen

    # ------------------------------------------------------------------ files

    @_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx) -> tuple[FileInfo, EntryAttributes]:
        h, row = await self.model.create(parent_inode, name, mode, flags, _caller(ctx))
        return self._file_info(h.fh), self.attributes(row)

    @_boundary
    async def open(self, inode: int, flags: int, ctx) -> FileInfo:
        h = await self.model.open(inode, flags)
        return self._file_info(h.fh)

    @_boundary
    async def read(self, fh: int, off: int, size: int):
        return await self.model.read(fh, off, size)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.model.write(fh, off, buf)

    @_boundary
    async def flush(self, fh: int) -> None:
        # close() has nothing to do here. The data is in the staging file (it survives a
        # crash of this process at once), FileData makes it durable against a power cut
        # within its `commit_interval` as ext4 does, and fsync() is the call that waits for
        # that. The kernel writes its cached pages back before it would send FLUSH, and
        # reports their errors to close() itself. So answer ENOSYS: the kernel then stops
        # sending FLUSH on this mount, one round trip less per file closed (9 -> 8 for a
        # small file written by cp; memfs answers the same).
        self.model.handle(fh)
        raise FUSEError(errno.ENOSYS)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.model.fsync(fh)

    @_boundary
    async def release(self, fh: int) -> None:
        await self.model.release(fh)

    # ------------------------------------------------------------------ statfs

    @_boundary
    async def statfs(self, ctx) -> StatvfsData:
        now = self._monotonic()
        cached = self._statfs
        if cached is not None and now - cached[0] < self.statfs_ttl:
            return cached[1]
        st = self.model.stats()  # incremental counters: no scan
        s = StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = self.quota_bytes // BLOCK
        used = -(-st.total_bytes // BLOCK)
        s.f_bfree = s.f_bavail = max(0, s.f_blocks - used)
        free_inodes = max(0, MAX_INODES - st.inodes)
        s.f_files = st.inodes + free_inodes
        s.f_ffree = s.f_favail = free_inodes
        s.f_namemax = 255
        self._statfs = (now, s)
        return s

    # ------------------------------------------------------------------ xattrs

    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx) -> bytes:
        # pyfuse3 answers size queries and ERANGE itself from the returned value.
        return self.model.get_xattr(inode, name)

    @_boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx) -> None:
        self.model.set_xattr(inode, name, value)

    @_boundary
    async def listxattr(self, inode: int, ctx) -> list[bytes]:
        return self.model.list_xattrs(inode)

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx) -> None:
        self.model.remove_xattr(inode, name)
