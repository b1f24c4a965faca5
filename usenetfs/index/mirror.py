"""The mirror of a share: a subscriber's read-only index, written with the publisher's ids.

A subscriber mounts a share through an ordinary `Index` (the fs layer, FileData and the
read path do not know the difference), filled from the share's tree objects
(usenetfs/share/subscribe.py) with the publisher's inode and segment ids instead of
allocated ones: ids stay stable across refreshes, so the kernel's inode numbers stay valid.
The share's top folder is inode 1.

Besides the ordinary tables, a mirror has
    share_segments(segment INTEGER PRIMARY KEY, key BLOB, locator TEXT)
        each segment's own 32-byte key and the local part of its Message-ID: what the
        publisher's volume keys would derive, which the subscriber does not have
    share_dirs(inode INTEGER PRIMARY KEY, digest BLOB)
        the digest of each directory's object as last applied: a refresh skips a directory
        (and everything below it) whose digest did not change
    meta 'share_state'   JSON: what was last applied (epoch, root number, expiry, ...)

`Mirror` owns every statement on these and the writes that bypass the allocators (inodes,
names, segments with given ids); extents go through `Index.replace_extents`, deletions
through `Index.delete_inode`, so refcounts, dead segments and counters stay the Index's
business. Same rules as the Index: synchronous, on the trio thread, one transaction per
call or per `with index.batch():`.

Link counts are kept incrementally: a file's nlink is the number of its names in the
mirror, a directory's 2 + its subdirectories once named, 0 when its name is gone (an
orphan: deleted once the kernel forgets it, or at the next mount).
"""

from __future__ import annotations

import json

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, Text

from .errors import NotFound
from .rows import InodeRow
from .schema import DEAD, ROOT_INODE, S_IFDIR, S_IFLNK, S_IFMT, VERIFIED, VOLUME_SCOPE
from .store import Index

mirror_metadata = MetaData()
share_segments = Table(
    "share_segments",
    mirror_metadata,
    Column("segment", Integer, primary_key=True),  # segments.id
    Column("key", LargeBinary(32), nullable=False),
    Column("locator", Text, nullable=False),  # the Message-ID's part before the '@'
)
share_dirs = Table(
    "share_dirs",
    mirror_metadata,
    Column("inode", Integer, primary_key=True),
    Column("digest", LargeBinary(32), nullable=False),
)

_STATE_COUNTER = {0: "seg_pending", 1: "seg_posted", 2: "seg_verified", 3: "seg_missing", 4: "seg_dead"}


def _is_dir(mode: int) -> bool:
    return mode & S_IFMT == S_IFDIR


class Mirror:
    """Writes of a share's tree into `index` (see the module docstring)."""

    def __init__(self, index: Index):
        self.ix = index
        mirror_metadata.create_all(index._conn, checkfirst=True)

    @classmethod
    def create(cls, path, scope_id: bytes, *, uid: int = 0, gid: int = 0) -> Mirror:
        """A new, empty mirror: its scope is the publisher's volume scope (the data
        segments' AEAD binds it)."""
        return cls(Index.create(path, scope_id=scope_id, uid=uid, gid=gid))

    @classmethod
    def open(cls, path) -> Mirror:
        return cls(Index.open(path))

    def close(self) -> None:
        self.ix.close()

    # ------------------------------------------------------------------ applied state
    def state(self) -> dict | None:
        row = self.ix._q("SELECT value FROM meta WHERE key = 'share_state'").fetchone()
        return None if row is None else json.loads(row[0])

    def set_state(self, state: dict) -> None:
        with self.ix._txn:
            self.ix._w("INSERT OR REPLACE INTO meta (key, value) VALUES ('share_state', ?)", (json.dumps(state),))

    def dir_digest(self, ino: int) -> bytes | None:
        row = self.ix._q("SELECT digest FROM share_dirs WHERE inode = ?", (ino,)).fetchone()
        return None if row is None else row[0]

    def set_dir_digest(self, ino: int, digest: bytes | None) -> None:
        with self.ix._txn:
            if digest is None:
                self.ix._w("DELETE FROM share_dirs WHERE inode = ?", (ino,))
            else:
                self.ix._w("INSERT OR REPLACE INTO share_dirs (inode, digest) VALUES (?, ?)", (ino, digest))

    # ------------------------------------------------------------------ inodes and names
    def entries(self, parent: int) -> dict[bytes, InodeRow]:
        out, cookie = {}, 0
        while True:
            page = self.ix.readdir(parent, cookie, 1024)
            out.update((name, row) for _, name, row in page)
            if len(page) < 1024:
                return out
            cookie = page[-1][0]

    def put_inode(self, ino: int, mode: int, uid: int, gid: int, size: int, mtime_ns: int, ctime_ns: int,
                  rdev: int = 0) -> bool:
        """Create inode `ino` (no name yet) or update its attributes; True if anything changed."""
        if ino == ROOT_INODE:
            raise ValueError("the top folder is set with set_top")
        ix = self.ix
        with ix._txn:
            try:
                old = ix.get_inode(ino)
            except NotFound:
                old = None
            if old is None:
                ix._w("INSERT INTO inodes (id, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, "
                      "generation, rdev, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, NULL)",
                      (ino, mode, uid, gid, size, mtime_ns, mtime_ns, ctime_ns, rdev))
                ix._c["inodes"] += 1
                ix._c["total_bytes"] += size
                ix._c["next_inode"] = max(ix._c["next_inode"], ino + 1)
                return True
            if old.mode & S_IFMT != mode & S_IFMT:
                raise ValueError(f"inode {ino} changed its type")
            new = (mode, uid, gid, size, mtime_ns, ctime_ns, rdev)
            if new == (old.mode, old.uid, old.gid, old.size, old.mtime_ns, old.ctime_ns, old.rdev):
                return False
            ix._w("UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, mtime_ns = ?, "
                  "ctime_ns = ?, rdev = ? WHERE id = ?",
                  (mode, uid, gid, size, mtime_ns, mtime_ns, ctime_ns, rdev, ino))
            ix._c["total_bytes"] += size - old.size
            return True

    def set_top(self, mode: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int) -> None:
        with self.ix._txn:
            self.ix._w("UPDATE inodes SET mode = ?, uid = ?, gid = ?, atime_ns = ?, mtime_ns = ?, ctime_ns = ? "
                       "WHERE id = ?", (S_IFDIR | (mode & 0o7777), uid, gid, mtime_ns, mtime_ns, ctime_ns, ROOT_INODE))

    def _subdirectories(self, ino: int) -> int:
        return self.ix._q("SELECT count(*) FROM dentries d JOIN inodes i ON i.id = d.inode "
                          "WHERE d.parent = ? AND (i.mode & ?) = ?", (ino, S_IFMT, S_IFDIR)).fetchone()[0]

    def _drop_link(self, parent: int, ino: int) -> None:
        row = self.ix.get_inode(ino)
        if _is_dir(row.mode):
            self.ix._w("UPDATE inodes SET nlink = 0, parent = NULL WHERE id = ?", (ino,))
            self.ix._w("UPDATE inodes SET nlink = nlink - 1 WHERE id = ?", (parent,))
        else:
            self.ix._w("UPDATE inodes SET nlink = max(nlink - 1, 0) WHERE id = ?", (ino,))

    def _add_link(self, parent: int, ino: int) -> None:
        ix = self.ix
        row = ix.get_inode(ino)
        if _is_dir(row.mode):
            if row.parent is not None and row.nlink > 0:
                # Still named elsewhere (moved: its new name is applied before the old one
                # goes): a directory has one name, so take the old one away now.
                old = ix._q("SELECT name FROM dentries WHERE parent = ? AND inode = ?", (row.parent, ino)).fetchone()
                if old is not None:
                    ix._w("DELETE FROM dentries WHERE parent = ? AND name = ?", (row.parent, old[0]))
                    ix._w("UPDATE inodes SET nlink = nlink - 1 WHERE id = ?", (row.parent,))
            ix._w("UPDATE inodes SET nlink = ?, parent = ? WHERE id = ?", (2 + self._subdirectories(ino), parent, ino))
            ix._w("UPDATE inodes SET nlink = nlink + 1 WHERE id = ?", (parent,))
        else:
            ix._w("UPDATE inodes SET nlink = nlink + 1 WHERE id = ?", (ino,))

    def set_name(self, parent: int, name: bytes, ino: int) -> bool:
        """Make `parent`/`name` name inode `ino` (which exists); True if it changed. A name
        that named another inode keeps its readdir cookie."""
        ix = self.ix
        with ix._txn:
            current = ix.lookup(parent, name)
            if current == ino:
                return False
            if current is None:
                cookie = ix._c["next_dentry"]
                ix._w("INSERT INTO dentries (parent, name, id, inode) VALUES (?, ?, ?, ?)", (parent, name, cookie, ino))
                ix._c["next_dentry"] = cookie + 1
            else:
                self._drop_link(parent, current)
                ix._w("UPDATE dentries SET inode = ? WHERE parent = ? AND name = ?", (ino, parent, name))
            self._add_link(parent, ino)
            return True

    def remove_name(self, parent: int, name: bytes) -> int | None:
        """Remove `parent`/`name`; the inode it named (now maybe an orphan), or None."""
        ix = self.ix
        with ix._txn:
            current = ix.lookup(parent, name)
            if current is None:
                return None
            ix._w("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
            self._drop_link(parent, current)
            return current

    def set_symlink(self, ino: int, target: bytes) -> None:
        with self.ix._txn:
            self.ix._w("INSERT OR REPLACE INTO symlinks (inode, target) VALUES (?, ?)", (ino, target))

    def set_xattrs(self, ino: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
        ix = self.ix
        with ix._txn:
            current = sorted((n, ix.get_xattr(ino, n)) for n in ix.list_xattrs(ino))
            if current == sorted(pairs):
                return
            ix._w("DELETE FROM xattrs WHERE inode = ?", (ino,))
            for name, value in pairs:
                ix._w("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)", (ino, name, value))

    # ------------------------------------------------------------------ segments and extents
    def put_segments(self, infos) -> None:
        """Segment rows (verified; state of the publisher's articles) and their keys, for
        `infos` = iterable of (id, generation, payload_size, key, locator)."""
        ix = self.ix
        std = ix.segment_size
        with ix._txn:
            for seg_id, generation, payload_size, key, locator in infos:
                row = ix._q("SELECT state, generation FROM segments WHERE id = ?", (seg_id,)).fetchone()
                stored = None if payload_size == std else payload_size
                if row is None:
                    ix._w("INSERT INTO segments (id, scope, generation, state, payload_size, stored_extra, crc32, "
                          "refcount, attempts, posted_min, checked_lag_min) VALUES (?, ?, ?, ?, ?, NULL, NULL, 0, 0, "
                          "NULL, NULL)", (seg_id, VOLUME_SCOPE, generation, VERIFIED, stored))
                    ix._c["seg_verified"] += 1
                    ix._c["next_segment"] = max(ix._c["next_segment"], seg_id + 1)
                elif row[0] == DEAD or row[1] != generation:
                    # Dead: its last file went away in an earlier refresh, now one uses it again.
                    ix._w("UPDATE segments SET state = ?, generation = ?, payload_size = ? WHERE id = ?",
                          (VERIFIED, generation, stored, seg_id))
                    ix._c[_STATE_COUNTER[row[0]]] -= 1
                    ix._c["seg_verified"] += 1
                ix._w("INSERT OR REPLACE INTO share_segments (segment, key, locator) VALUES (?, ?, ?)",
                      (seg_id, key, locator))

    def segment_secret(self, seg: int) -> tuple[bytes, str] | None:
        """(key, Message-ID locator) of segment `seg`."""
        row = self.ix._q("SELECT key, locator FROM share_segments WHERE segment = ?", (seg,)).fetchone()
        return None if row is None else (row[0], row[1])

    def is_symlink(self, ino: int) -> bool:
        return self.ix.get_inode(ino).mode & S_IFMT == S_IFLNK


__all__ = ["Mirror", "share_dirs", "share_segments"]
