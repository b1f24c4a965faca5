"""The source side of `usenetfs sync`: listing local directories in worker threads.

Owns
- `SourceEntry`: one name of the source tree with everything the comparison and the copy
  need (lstat fields, a symlink's target, the user.* extended attributes);
- `list_directory(path)`: one directory's entries (os.scandir + lstat + readlink +
  listxattr), run in a worker thread. An entry that vanishes between the listing and its
  lstat is left out, as if it had never been there; a directory that cannot be read
  comes back with an error and no entries (the sync then deletes nothing in it);
- `Scanner`: several such listings at once (a few threads: lstat and getxattr are
  system calls that release the GIL), fed with directories as the sync reaches them and
  handing back (job, listing) pairs in the order they finish, with a bounded read-ahead.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Iterable
from typing import Any, NamedTuple

import trio

# The volume stores user.* attributes only; its own user.usenetfs.* are never copied.
USER_PREFIX = b"user."
RESERVED_PREFIX = b"user.usenetfs."


class SourceEntry(NamedTuple):
    name: bytes
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    dev: int  # st_dev and st_ino: hard links are names of one (dev, ino)
    ino: int
    nlink: int
    target: bytes | None  # a symlink's target
    xattrs: dict[bytes, bytes] | None  # user.* attributes (regular files and directories)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


class Listing(NamedTuple):
    path: bytes  # the directory listed
    entries: list[SourceEntry]  # sorted by name
    error: str | None  # the directory could not be read (entries is then empty)
    problems: list[str]  # entries that could not be read (skipped), one line each


def user_xattrs(path: bytes) -> dict[bytes, bytes] | None:
    """The user.* attributes of `path` (not following symlinks), None if it has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENODATA, errno.EPERM):
            return None
        raise
    out = {}
    for name in names:
        raw = os.fsencode(name)
        if not raw.startswith(USER_PREFIX) or raw.startswith(RESERVED_PREFIX):
            continue
        try:
            out[raw] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed meanwhile
                raise
    return out or None


def entry_of(path: bytes, name: bytes, st: os.stat_result) -> SourceEntry:
    kind = stat.S_IFMT(st.st_mode)
    target = os.readlink(path) if kind == stat.S_IFLNK else None
    xattrs = user_xattrs(path) if kind in (stat.S_IFREG, stat.S_IFDIR) else None
    return SourceEntry(name, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns, st.st_mtime_ns,
                       st.st_dev, st.st_ino, st.st_nlink, target, xattrs)


def stat_entry(path: bytes) -> SourceEntry:
    """The entry of `path` itself (the sync's source root)."""
    return entry_of(path, os.path.basename(path.rstrip(b"/")) or b"/", os.lstat(path))


def list_directory(path: bytes) -> Listing:
    entries: list[SourceEntry] = []
    problems: list[str] = []
    try:
        with os.scandir(path) as it:
            names = [(d.name, d.path) for d in it]
    except OSError as e:
        return Listing(path, [], f"{path.decode('utf-8', 'backslashreplace')}: {e.strerror}", [])
    for name, full in names:
        try:
            entries.append(entry_of(full, name, os.lstat(full)))
        except FileNotFoundError:
            continue  # vanished since the listing
        except OSError as e:
            problems.append(f"{full.decode('utf-8', 'backslashreplace')}: {e.strerror}")
    entries.sort(key=lambda e: e.name)
    return Listing(path, entries, None, problems)


class Scanner:
    """Lists directories in worker threads, `workers` at a time, at most `ahead` listings
    waiting to be consumed. `add(job, path)`; `await next()` -> (job, Listing);
    `pending` counts the jobs added and not yet handed back."""

    def __init__(self, nursery: trio.Nursery, *, workers: int = 4, ahead: int = 64) -> None:
        self._todo_send, todo_recv = trio.open_memory_channel[tuple[Any, bytes]](math.inf)
        self._done_send, self._done_recv = trio.open_memory_channel[tuple[Any, Listing]](ahead)
        self.pending = 0
        for _ in range(workers):
            nursery.start_soon(self._worker, todo_recv.clone())
        todo_recv.close()

    async def _worker(self, todo: trio.MemoryReceiveChannel) -> None:
        async with todo:
            async for job, path in todo:
                listing = await trio.to_thread.run_sync(list_directory, path)
                await self._done_send.send((job, listing))

    def add(self, job: Any, path: bytes) -> None:
        self.pending += 1
        self._todo_send.send_nowait((job, path))

    def add_all(self, items: Iterable[tuple[Any, bytes]]) -> None:
        for job, path in items:
            self.add(job, path)

    async def next(self) -> tuple[Any, Listing]:
        item = await self._done_recv.receive()
        self.pending -= 1
        return item

    def close(self) -> None:
        self._todo_send.close()


__all__ = ["Listing", "RESERVED_PREFIX", "Scanner", "SourceEntry", "list_directory", "stat_entry", "user_xattrs"]
