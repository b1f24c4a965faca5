"""Where a sync's changes land: an unmounted volume, or the running mount.

Owns the two ways the index changes made by `usenetfs sync` reach everyone else who
looks at the volume:
- `OfflineTarget` (the volume is not mounted; the sync process owns the index and the
  staging area): an inode that lost its last name is deleted at once;
- `MountedTarget` (the sync runs inside the mount daemon): the fs model (fs/model.py)
  reloads the rows it caches, and deletes a nameless inode only once the kernel and the
  open handles let go of it; and the kernel's caches are told what changed, so the mount
  shows the result exactly as if it had been copied in: `invalidate_entry` for every
  name created, replaced or removed in a directory the kernel holds (it may cache the
  old entry, or a negative one for a new name, for entry_timeout / negative_timeout),
  `invalidate_inode` for every inode it holds whose attributes changed. Both block until
  the kernel is done with related requests, so they run in a worker thread (the trio
  thread keeps serving those requests meanwhile).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

import trio

from ..index import Index, InodeRow, NotFound

log = logging.getLogger(__name__)

READDIR_BATCH = 1000


@dataclass
class Changes:
    """What one committed batch changed, for `Target.after_commit`."""

    rows: set[int] = field(default_factory=set)  # inodes whose rows changed
    unnamed: list[int] = field(default_factory=list)  # inodes that lost their last name
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # names created, replaced, removed

    def entry(self, parent: int, name: bytes) -> None:
        self.entries.append((parent, name))
        self.rows.add(parent)


class OfflineTarget:
    """The volume is not mounted: nobody else holds anything."""

    def __init__(self, index: Index, data) -> None:
        self.index = index
        self.data = data

    def listdir(self, ino: int) -> list[tuple[bytes, InodeRow]]:
        out = []
        after = 0
        while True:
            entries = self.index.readdir(ino, after, READDIR_BATCH)
            out.extend((name, row) for _, name, row in entries)
            if len(entries) < READDIR_BATCH:
                return out
            after = entries[-1][0]

    def knows(self, ino: int) -> bool:
        return False

    async def after_commit(self, changes: Changes) -> None:
        if not changes.unnamed:
            return
        with self.index.batch():
            for ino in changes.unnamed:
                try:
                    row = self.index.get_inode(ino)
                except NotFound:
                    continue
                if row.nlink == 0:
                    if row.is_reg:
                        self.data.forget(ino)  # its staging file and upload, if dirty
                    self.index.delete_inode(ino)


class MountedTarget(OfflineTarget):
    """The sync runs inside the mount daemon, beside the kernel's requests."""

    def __init__(self, index: Index, data, model) -> None:
        super().__init__(index, data)
        self.model = model  # fs.model.FsModel

    def listdir(self, ino: int) -> list[tuple[bytes, InodeRow]]:
        out = []
        after = 0
        while True:
            entries = self.model.readdir(ino, after, READDIR_BATCH)  # rows the kernel sees
            out.extend((name, row) for _, name, row in entries)
            if len(entries) < READDIR_BATCH:
                return out
            after = entries[-1][0]

    def knows(self, ino: int) -> bool:
        return self.model.knows(ino)

    async def after_commit(self, changes: Changes) -> None:
        model = self.model
        model.reload(changes.rows)
        if changes.unnamed:
            with self.index.batch():
                for ino in changes.unnamed:
                    model.drop_unnamed(ino)
        entries = [e for e in changes.entries if model.knows(e[0])]
        inodes = [ino for ino in changes.rows if model.knows(ino)]
        if entries or inodes:
            await trio.to_thread.run_sync(_invalidate, entries, inodes)


def _invalidate(entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
    import pyfuse3

    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBUSY):
                log.warning("cannot invalidate the kernel's entry %r in directory %d: %s", name, parent, e)
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("cannot invalidate the kernel's attributes of inode %d: %s", ino, e)


__all__ = ["Changes", "MountedTarget", "OfflineTarget"]
