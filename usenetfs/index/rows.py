"""The value types the Index hands out: immutable named tuples, cheap to build from rows.

Owns `InodeRow`, `SegmentRow`, `ScopeRow` and `IndexStats`. (`ExtentRow` lives with its
arithmetic in layout.py.)
"""

from __future__ import annotations

from typing import NamedTuple

from .schema import S_IFDIR, S_IFLNK, S_IFMT, S_IFREG


class InodeRow(NamedTuple):
    id: int
    mode: int  # st_mode: file type bits | permission bits
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int  # directories: 2 + subdirectories once linked (1 before); others: names
    generation: int  # FUSE entry generation (0: inode ids are never reused)
    rdev: int
    parent: int | None  # directories: the directory holding it (root: 1); others: None

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.mode & S_IFMT == S_IFLNK


class SegmentRow(NamedTuple):
    id: int  # SegmentId.number
    scope: int  # scopes.id
    generation: int  # the Message-ID generation to post / fetch now
    state: int  # schema.PENDING .. schema.DEAD
    payload_size: int
    stored_size: int | None  # None until posted
    crc32: int | None  # unsigned CRC32 of the blob; None until posted
    refcount: int
    attempts: int  # failed POSTs of this generation
    posted_s: int | None  # Unix seconds (minute resolution) of the last accepted POST
    checked_s: int  # Unix seconds (minute resolution) of the last state change


class ScopeRow(NamedTuple):
    id: int
    scope_id: bytes  # 16 bytes: SegmentId.scope
    root_inode: int
    kind: str  # 'volume' | 'share'
    created_ns: int


class IndexStats(NamedTuple):
    inodes: int
    total_bytes: int  # sum of inode sizes (what statfs reports as used)
    garbage_bytes: int  # stored bytes of dead segments: posted, no longer referenced
    segments: tuple[int, int, int, int, int]  # count by state: pending, posted, verified, missing, dead
    stored_bytes: int  # stored bytes of live segments (posted at least once)
