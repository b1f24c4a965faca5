"""The inode/handle model between the FUSE operations and the index + FileData.

Owns what the kernel holds and what the volume stores, meeting in one place:
  * `KernelRefs` (refs.py): the lookup count and packing group (the directory a file was
    last seen in: `FileData.release` packs by directory) of every inode the kernel holds,
    ~80 bytes each, since the kernel may hold millions;
  * `Node`: the state of one inode in use (open handles, writable handles, changes not
    yet written), with its cached `InodeRow` and packing group: only while in use;
  * `Handle`: one open file (fh -> inode, flags);
  * the lifecycle of unlinked inodes: an inode whose last name is gone lives on while the
    kernel holds it or a handle is open, and is deleted (index.delete_inode +
    FileData.forget) when the last of those goes;
  * size and time bookkeeping for writes and truncation, persisted to the index at once;
  * the permission rules the kernel does not apply itself (chown/chmod ownership),
    the uid/gid/umask overrides, the read-only switch and the `user.*` xattr namespace
    with the two read-only virtual attributes.

It knows nothing of pyfuse3: it raises the index's domain errors or `FsError`, both
carrying an errno; operations.py turns them into FUSEError. No SQL here: every read and
write of the volume goes through `Index` and `FileData`.

Concurrency: like the index, this runs on the trio thread, so the code between two awaits
is atomic. After an await, re-read anything cached before it (the row may have changed).
Cache rule: a cached row is always equal to the index's row (every change is written
through at once), so dropping or reloading a cached row can never lose anything.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..errors import UsenetfsError
from ..index import ROOT_INODE, IndexStats, InodeRow, NotFound
from .refs import KernelRefs

if TYPE_CHECKING:
    from ..index import Index

log = logging.getLogger(__name__)

NAME_MAX = 255
# Virtual, read-only attributes. They are not listed by listxattr: a copy tool (rsync -X,
# KIO) would otherwise try to write them to the destination and fail on the next usenetfs.
XATTR_HEALTH = b"user.usenetfs.health"
XATTR_STATE = b"user.usenetfs.state"
_RESERVED_XATTR_PREFIX = b"user.usenetfs."
_USER_PREFIX = b"user."
_S_IFMT = 0o170000


class FsError(UsenetfsError):
    """A refusal decided by the fs layer itself (EROFS, EPERM, EISDIR...)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno_))
        self.errno = errno_


class Caller(NamedTuple):
    """Who asks (from the FUSE request context)."""

    uid: int
    gid: int
    pid: int = 0


class Handle:
    __slots__ = ("fh", "ino", "flags", "writable", "append")

    def __init__(self, fh: int, ino: int, flags: int, writable: bool) -> None:
        self.fh = fh
        self.ino = ino
        self.flags = flags
        self.writable = writable  # counted in Node.writers: FileData.release when the last one closes
        self.append = bool(flags & os.O_APPEND)


_TIMES = frozenset({"atime_ns", "mtime_ns", "ctime_ns"})


class Node:
    """An inode in use: open, or held by an operation across an await. Dropped once idle
    (the kernel's references are counted in KernelRefs, not here)."""

    __slots__ = ("row", "opens", "writers", "group", "pending")

    def __init__(self, row: InodeRow, group: int) -> None:
        self.row = row
        self.opens = 0  # open handles (and operations holding the inode across an await)
        self.writers = 0  # open handles that may write (FileData.open_for_write done)
        self.group = group  # packing group: the directory the file was last seen in
        # Size and times changed by writes (and the kernel's time updates) while the file
        # is open for writing, applied to `row` but not yet to the index: see
        # FsModel._update_later.
        self.pending: dict[str, int] = {}

    def set_row(self, row: InodeRow) -> None:
        """`row` as read from the index, with what is pending on top."""
        self.row = row._replace(**self.pending) if self.pending else row


def _sup_groups(pid: int) -> set[int]:
    # The same source pyfuse3.get_sup_groups reads; kept here so the model has no pyfuse3.
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class FsModel:
    """The inode/handle model of one mount.

    `data` is a `FileData` (usenetfs.data). `uid`, `gid`, `umask` override what is
    reported (None: as stored). `read_only` refuses every change with EROFS.
    `writeback` says the kernel runs its writeback cache (it then handles O_APPEND).
    """

    def __init__(
        self,
        index: Index,
        data,
        *,
        uid: int | None = None,
        gid: int | None = None,
        umask: int | None = None,
        read_only: bool = False,
        writeback: bool = True,
        clock: Callable[[], int] = time.time_ns,
        sup_groups: Callable[[int], set[int]] = _sup_groups,
    ) -> None:
        self.index = index
        self.data = data
        self.uid = uid
        self.gid = gid
        self.umask = umask
        self.read_only = read_only
        self.writeback = writeback
        self._clock = clock
        self._sup_groups = sup_groups
        self.nodes: dict[int, Node] = {}  # inodes in use
        self.refs = KernelRefs()  # inodes the kernel holds
        # Inodes that lost a name in this mount (unlink, rmdir, rename over them): the only
        # ones that can have none left while held, so the only ones a forget looks up in
        # the index (the kernel may forget millions of others under memory pressure).
        self._unnamed: set[int] = set()
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        # The root is known to the kernel without a lookup and never forgotten while mounted
        # (its node stays; its references are not counted).
        self.nodes[ROOT_INODE] = Node(index.get_inode(ROOT_INODE), ROOT_INODE)

    # ------------------------------------------------------------------ attribute cache

    def row(self, ino: int) -> InodeRow:
        """The current attributes (cached for known inodes; NotFound if none)."""
        node = self.nodes.get(ino)
        if node is not None:
            return node.row
        return self.index.get_inode(ino)

    def parent_row(self, ino: int) -> InodeRow:
        """The attributes of the directory holding directory `ino` (the root's: its own; a
        directory removed while open has no parent any more: its own too)."""
        try:
            return self.row(self.index.parent_of(ino))
        except NotFound:
            return self.row(ino)

    def view(self, row: InodeRow) -> InodeRow:
        """The row as reported: with the uid/gid/umask overrides applied."""
        if self.uid is None and self.gid is None and self.umask is None:
            return row
        mode = row.mode
        if self.umask is not None:
            mode = (mode & _S_IFMT) | (mode & 0o7777 & ~self.umask)
        return row._replace(
            mode=mode,
            uid=row.uid if self.uid is None else self.uid,
            gid=row.gid if self.gid is None else self.gid,
        )

    def _remember(self, row: InodeRow, group: int | None) -> InodeRow:
        """The kernel got a reference to `row` (lookup count + 1). Returns the current row."""
        ino = row.id
        node = self.nodes.get(ino)
        if node is None:
            row = self._reconciled(row)
        else:
            node.set_row(row)
            row = node.row
        if group is None or row.is_dir:
            group = self.refs.group(ino) or ROOT_INODE
        elif node is not None:
            node.group = group
        if ino != ROOT_INODE:
            self.refs.add(ino, group)
        return row

    def lookups(self, ino: int) -> int:
        """The kernel's references to `ino` (0: it holds none)."""
        return self.refs.count(ino)

    def _node(self, row: InodeRow) -> Node:
        """The node of an inode coming into use (made if it is not in use yet). The kernel
        holds it, so `_remember` has reconciled its size already."""
        node = self.nodes.get(row.id)
        if node is None:
            group = self.refs.group(row.id) or ROOT_INODE
            node = self.nodes[row.id] = Node(row, group)
        else:
            node.set_row(row)
        return node

    def _reconciled(self, row: InodeRow) -> InodeRow:
        """A dirty file's size is its staging file's length. They agree while we run (every
        write and truncate updates both), but after a crash the index size may lag what
        FileData.recover() adopted: repair it when the kernel learns of the inode (no
        handle is open then, so no write is in flight)."""
        if row.is_reg and self.data is not None:
            staged = self.data.dirty_size(row.id)
            if staged is not None and staged != row.size:
                log.info("inode %d: size %d in the index, %d staged: taking the staged size", row.id, row.size, staged)
                row = self.index.update_inode(row.id, size=staged)
        return row

    def _refresh(self, *inos: int | None) -> None:
        """Reload cached rows the index changed as a side effect (nlink, times of parents...)."""
        for ino in inos:
            node = self.nodes.get(ino) if ino is not None else None
            if node is not None:
                try:
                    node.set_row(self.index.get_inode(ino))
                except NotFound:
                    log.error("inode %d vanished from the index while the kernel knows it", ino)

    def _update(self, ino: int, **fields) -> InodeRow:
        node = self.nodes.get(ino)
        if node is not None and node.pending:
            fields = {**node.pending, **fields}
            node.pending = {}
        row = self.index.update_inode(ino, **fields)
        if node is not None:
            node.row = row
        return row

    def _update_later(self, node: Node, **fields) -> None:
        """Change size or times in memory only, for a file open for writing: a small file
        written and closed would otherwise cost three index commits (create, the write's
        size, the kernel's mtime update at close) instead of two. Written to the index by
        the next `_update` of the inode, at the last writer's release and at fsync. After
        a crash the size comes back from the staging file (`_reconciled`); times written
        since the last persist fall back to the last persisted ones."""
        node.row = node.row._replace(**fields)
        node.pending.update(fields)

    def _persist(self, node: Node) -> None:
        if node.pending:
            self._update(node.row.id)

    def persist_pending(self) -> int:
        """Write to the index the sizes and times still held in memory for files open for
        writing (what their release or fsync would write), for a reader of the index
        itself: a share being published. Returns how many inodes it wrote."""
        pending = [node for node in self.nodes.values() if node.pending]
        for node in pending:
            self._persist(node)
        return len(pending)

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)

    # ------------------------------------------------------------------ lookup counts

    def lookup(self, parent: int, name: bytes) -> InodeRow | None:
        """Look up a name ('.' and '..' too); counts a kernel reference. None: no such name."""
        if name == b".":
            row = self.row(parent)
        elif name == b"..":
            row = self.row(self.index.parent_of(parent))
        else:
            self._check_name(name)
            row = self.index.lookup_entry(parent, name)
            if row is None:
                if not self.row(parent).is_dir:
                    raise FsError(errno.ENOTDIR)
                return None
        return self._remember(row, parent)

    def forget(self, ino: int, count: int) -> None:
        if ino == ROOT_INODE:
            return  # the kernel's root reference is implicit and outlives the session
        held = self.refs.count(ino)
        if not held:
            log.warning("forget(%d, %d) of an inode the kernel should not know", ino, count)
            return
        if count > held:
            log.warning("forget(%d, %d) below zero (lookup count %d)", ino, count, held)
        self.refs.drop(ino, count)
        self._maybe_drop(ino)

    def _maybe_drop(self, ino: int) -> None:
        """Drop the node once no handle holds it and nothing is left to write; delete the
        inode once the kernel does not hold it either and it has no name left."""
        if ino == ROOT_INODE:
            return
        node = self.nodes.get(ino)
        if node is not None:
            if node.opens or node.pending:
                return
            del self.nodes[ino]
            if ino in self.refs:  # remember where it was last seen
                self.refs.regroup(ino, node.group)
        if ino in self.refs or ino not in self._unnamed:
            return
        self._unnamed.discard(ino)
        try:
            row = self.index.get_inode(ino)
        except NotFound:
            return
        if row.nlink == 0:
            if row.is_reg:
                # First stop the uploader (it may be about to set extents), then delete.
                self.data.forget(ino)
            self.index.delete_inode(ino)

    async def close(self) -> None:
        """After unmount: release every handle, forget every reference (the kernel may not
        have sent all its forgets), which deletes the inodes unlinked while open."""
        for fh in list(self.handles):
            await self.release(fh)
        self.refs.clear()
        for ino in list(self.nodes):
            self._maybe_drop(ino)
        # Nothing holds any inode now: those with no name left go. One probe of the
        # orphans index, not a look at each of the (maybe millions of) inodes the kernel held.
        for ino in self.index.orphans():
            self._unnamed.add(ino)
            self._maybe_drop(ino)

    # ------------------------------------------------------------------ namespace

    def _new_owner(self, parent: InodeRow, caller: Caller, mode: int) -> tuple[int, int]:
        # BSD group semantics under a setgid directory (what ext4 does); directories inherit the bit.
        if parent.mode & stat.S_ISGID:
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
            return mode, parent.gid
        return mode, caller.gid

    def _make(self, parent: int, name: bytes, mode: int, caller: Caller, rdev: int = 0, target=None) -> InodeRow:
        self._writable()
        self._check_name(name)
        p = self.row(parent)
        if not p.is_dir:
            raise FsError(errno.ENOTDIR)
        mode, gid = self._new_owner(p, caller, mode)
        row = self.index.make_node(parent, name, mode, caller.uid, gid, rdev, target=target)
        self._refresh(parent)
        self._remember(row, parent)
        return row

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> InodeRow:
        return self._make(parent, name, stat.S_IFDIR | (mode & 0o7777), caller)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> InodeRow:
        kind = stat.S_IFMT(mode)
        if kind == 0:
            kind = stat.S_IFREG  # mknod(2): a zero type means a regular file
        if kind not in (stat.S_IFREG, stat.S_IFIFO):
            # Device nodes and sockets are not stored (EPERM, not ENOSYS: ENOSYS would make
            # the kernel refuse every later mknod, FIFOs included).
            raise FsError(errno.EPERM)
        return self._make(parent, name, kind | (mode & 0o7777), caller)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> InodeRow:
        if not target or len(target) > 4095:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return self._make(parent, name, stat.S_IFLNK | 0o777, caller, target=target)

    def readlink(self, ino: int) -> bytes:
        if not self.row(ino).is_symlink:
            raise FsError(errno.EINVAL)
        return self.index.get_symlink(ino)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> InodeRow:
        self._writable()
        self._check_name(new_name)
        if self.row(ino).is_dir:
            raise FsError(errno.EPERM)
        row = self.index.link(new_parent, new_name, ino)
        self._refresh(new_parent)
        return self._remember(row, new_parent)

    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        row = self.index.lookup_entry(parent, name)
        if row is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        if row.is_dir:
            raise FsError(errno.EISDIR)
        self.index.unlink(parent, name)
        self._refresh(parent, row.id)
        self._unnamed.add(row.id)
        self._maybe_drop(row.id)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        row = self.index.lookup_entry(parent, name)
        if row is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        if not row.is_dir:
            raise FsError(errno.ENOTDIR)
        self.index.unlink(parent, name)  # NotEmpty (ENOTEMPTY) if it has entries
        self._refresh(parent, row.id)
        self._unnamed.add(row.id)
        self._maybe_drop(row.id)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, *, replace: bool = True) -> None:
        """Atomically move a name, replacing the target (open, dirty or not) unless `replace`
        is False (then EEXIST). The replaced inode dies when its last holder lets go."""
        self._writable()
        self._check_name(new_name)
        src = self.index.lookup_entry(parent, name)
        if src is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        replaced = self.index.rename(parent, name, new_parent, new_name, replace=replace)
        self._refresh(parent, new_parent, src.id, replaced)
        node = self.nodes.get(src.id)
        if not src.is_dir:
            self.refs.regroup(src.id, new_parent)
            if node is not None:
                node.group = new_parent
        if replaced is not None:
            self._unnamed.add(replaced)
            self._maybe_drop(replaced)

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[int, bytes, InodeRow]]:
        """Entries after cookie `after` (cookie = dentry id, stable across changes), with
        cached rows for inodes we hold (they are equal to the index's, by the cache rule)."""
        entries = self.index.readdir(ino, after, limit)
        nodes = self.nodes
        return [(c, n, nodes[r.id].row if r.id in nodes else r) for c, n, r in entries]

    def remember_entry(self, parent: int, row: InodeRow) -> None:
        """readdirplus handed `row` to the kernel (readdir_reply returned True)."""
        self._remember(row, parent)

    def check_dir(self, ino: int) -> None:
        if not self.row(ino).is_dir:
            raise FsError(errno.ENOTDIR)

    # ------------------------------------------------------------------ attributes

    def _is_member(self, caller: Caller, gid: int) -> bool:
        return gid == caller.gid or gid in self._sup_groups(caller.pid)

    async def setattr(
        self,
        ino: int,
        caller: Caller,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        ctime_ns: int | None = None,
    ) -> InodeRow:
        self._writable()
        shown = self.view(self.row(ino))
        root = caller.uid == 0
        # The kernel checks these too under default_permissions; we check again so that
        # no other path (or a mount without it) can give files away.
        if uid is not None and uid != shown.uid and not root:
            raise FsError(errno.EPERM, "only root can change the owner")
        if gid is not None and gid != shown.gid and not root:
            if caller.uid != shown.uid or not self._is_member(caller, gid):
                raise FsError(errno.EPERM, "only the owner can change the group, to one of theirs")
        if mode is not None and not root and caller.uid != shown.uid:
            raise FsError(errno.EPERM, "only the owner can change the mode")
        if size is not None:
            await self.truncate(ino, size)  # sets mtime and ctime
        fields: dict[str, int] = {}
        row = self.row(ino)  # again: truncate awaited
        if mode is not None:
            fields["mode"] = (row.mode & _S_IFMT) | (mode & 0o7777)
        if uid is not None:
            fields["uid"] = uid
        if gid is not None:
            fields["gid"] = gid
        if atime_ns is not None:
            fields["atime_ns"] = atime_ns
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
        if fields or ctime_ns is not None:
            fields["ctime_ns"] = self._clock() if ctime_ns is None else ctime_ns
            node = self.nodes.get(ino)
            if node is not None and node.writers and fields.keys() <= _TIMES:
                # The kernel's own mtime/ctime update (writeback cache) at close: it goes
                # to the index with the size, at release.
                self._update_later(node, **fields)
                return node.row
            row = self._update(ino, **fields)
        return row

    # ------------------------------------------------------------------ file data

    async def truncate(self, ino: int, size: int) -> InodeRow:
        """Set a regular file's size (shrink, or extend with a hole).

        FileData's rule: the index first (it cuts the extents of a clean file, which then
        needs nothing else), then `data.truncate` for the staging file of a dirty one,
        with no await in between."""
        self._writable()
        if size < 0:
            raise FsError(errno.EINVAL)
        row = self.row(ino)
        if row.is_dir:
            raise FsError(errno.EISDIR)
        if not row.is_reg:
            raise FsError(errno.EINVAL)
        node = self._node(row)
        # Hold the node while awaiting, so a forget meanwhile cannot delete the inode.
        node.opens += 1
        try:
            now = self._clock()
            row = self._update(ino, size=size, mtime_ns=now, ctime_ns=now)
            await self.data.truncate(ino, size)
            if not node.writers and row.nlink:
                # Nobody holds it open for writing: a dirty file may be uploaded (and
                # packed with its directory) once idle, as after a close.
                self.data.release(ino, node.group)
        finally:
            node.opens -= 1
            self._maybe_drop(ino)
        return self.row(ino)

    async def open(self, ino: int, flags: int) -> Handle:
        row = self.row(ino)
        if row.is_dir:
            raise FsError(errno.EISDIR)
        if not row.is_reg:
            raise FsError(errno.EINVAL)
        trunc = bool(flags & os.O_TRUNC)
        # O_TRUNC truncates even with O_RDONLY on Linux (the kernel checked write permission).
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or trunc
        if writable:
            self._writable()
        node = self._node(row)
        h = Handle(self._next_fh, ino, flags, writable)
        self._next_fh += 1
        node.opens += 1
        self.handles[h.fh] = h
        if writable:
            node.writers += 1
            try:
                await self.data.open_for_write(ino, node.row.size, truncate=trunc)
                if trunc:
                    now = self._clock()
                    self._update(ino, size=0, mtime_ns=now, ctime_ns=now)
            except BaseException:
                await self.release(h.fh)
                raise
        return h

    def _create_handle(self, row: InodeRow, flags: int) -> Handle:
        """The handle of a file `create` just made (its FileData is armed by the caller)."""
        node = self._node(row)
        h = Handle(self._next_fh, row.id, flags, True)
        self._next_fh += 1
        node.opens += 1
        node.writers += 1
        self.handles[h.fh] = h
        return h

    async def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Handle, InodeRow]:
        row = self._make(parent, name, stat.S_IFREG | (mode & 0o7777), caller)
        h = self._create_handle(row, flags)
        try:
            await self.data.open_for_write(row.id, 0, truncate=False, created=True)
        except BaseException:
            # The kernel never learns of this file: take back the reference and the handle.
            await self.release(h.fh)
            self.forget(row.id, 1)
            raise
        return h, self.row(row.id)

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, length: int):
        h = self.handle(fh)
        size = self.row(h.ino).size
        # The kernel may read through a write-only handle (writeback cache): no access check.
        if offset >= size or length <= 0:
            return b""
        return await self.data.read(h.ino, offset, min(length, size - offset), size)

    async def write(self, fh: int, offset: int, buf) -> int:
        self._writable()
        h = self.handle(fh)
        ino = h.ino
        node = self.nodes[ino]
        if not h.writable:
            # Not expected from the kernel (writeback uses writable handles), but never
            # write behind FileData's back.
            await self.data.open_for_write(ino, node.row.size, truncate=False)
            h.writable = True
            node.writers += 1
        if h.append and not self.writeback:
            # Without the writeback cache the kernel serialises writes per inode, so the
            # size read here is still the end of the file when the data lands.
            offset = node.row.size
        n = await self.data.write(ino, offset, buf)
        row = node.row  # re-read after the await
        # With the writeback cache the kernel sends writes out of order: never shrink.
        now = self._clock()
        self._update_later(node, size=max(row.size, offset + n), mtime_ns=now, ctime_ns=now)
        return n

    async def fsync(self, fh: int) -> None:
        ino = self.handle(fh).ino
        node = self.nodes.get(ino)
        if node is not None:
            self._persist(node)
        await self.data.fsync(ino)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            raise FsError(errno.EBADF)
        node = self.nodes.get(h.ino)
        if node is None:
            log.error("release of fh %d: inode %d is not known", fh, h.ino)
            return
        node.opens -= 1
        if h.writable:
            node.writers -= 1
            if not node.writers:
                self._persist(node)
            if not node.writers and node.row.nlink and node.row.is_reg:
                # The last writer is gone: FileData uploads after it has been idle a while.
                # (An unlinked file's data is dropped when it is deleted: no upload.)
                self.data.release(h.ino, node.group)
        self._maybe_drop(h.ino)

    # ------------------------------------------------------------------ xattrs

    @staticmethod
    def _user_ns(name: bytes) -> None:
        if not name.startswith(_USER_PREFIX):
            raise FsError(errno.EOPNOTSUPP)

    def _xattr_target(self, ino: int, writing: bool) -> InodeRow:
        row = self.row(ino)
        # Linux allows user.* only on regular files and directories (fs/xattr.c).
        if not (row.is_reg or row.is_dir):
            raise FsError(errno.EPERM if writing else errno.ENODATA)
        return row

    def get_xattr(self, ino: int, name: bytes) -> bytes:
        self._user_ns(name)
        row = self._xattr_target(ino, False)
        if name == XATTR_HEALTH and row.is_reg:
            return self.data.health(ino).encode()
        if name == XATTR_STATE and row.is_reg:
            return b"dirty" if self.data.dirty_size(ino) is not None else b"clean"
        return self.index.get_xattr(ino, name)

    def list_xattrs(self, ino: int) -> list[bytes]:
        self.row(ino)
        # Stored user.usenetfs.* attributes (sync's content digest) are readable by name
        # but not listed, for the same reason as the virtual ones.
        return [n for n in self.index.list_xattrs(ino) if not n.startswith(_RESERVED_XATTR_PREFIX)]

    def _check_xattr_change(self, ino: int, name: bytes) -> None:
        self._writable()
        self._user_ns(name)
        if name.startswith(_RESERVED_XATTR_PREFIX):
            raise FsError(errno.EPERM, "user.usenetfs.* attributes are read-only")
        self._xattr_target(ino, True)

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._check_xattr_change(ino, name)
        with self.index.batch():
            self.index.set_xattr(ino, name, value)
            self.index.update_inode(ino, ctime_ns=self._clock())
        self._refresh(ino)

    def remove_xattr(self, ino: int, name: bytes) -> None:
        self._check_xattr_change(ino, name)
        with self.index.batch():
            self.index.remove_xattr(ino, name)
            self.index.update_inode(ino, ctime_ns=self._clock())
        self._refresh(ino)

    # ------------------------------------------------------------------ changes beside the kernel

    # `usenetfs sync` runs inside the mount daemon and changes the index directly (in
    # batches), not through FUSE requests. These keep the model's side right afterwards.

    def knows(self, ino: int) -> bool:
        """True if the kernel holds (or has open) inode `ino`: its cached entries and
        attributes must be invalidated when the index changes it."""
        return ino in self.nodes or ino in self.refs

    def reload(self, inos) -> None:
        """The index changed these inodes: reload the cached rows (for the ones held)."""
        self._refresh(*(ino for ino in inos if ino in self.nodes))

    def drop_unnamed(self, ino: int) -> None:
        """`ino` lost its last name outside the model: delete it now, unless the kernel
        or a handle still holds it (then it goes at the last forget or release)."""
        self._maybe_drop(ino)

    # ------------------------------------------------------------------ statistics

    def stats(self) -> IndexStats:
        return self.index.stats()
