"""What `usenetfs sync` does with one name: the comparison of a source entry with the
volume's entry of the same name. Pure functions, no I/O.

Rules (rsync -a's, where they apply):
- A name only in the source is created (NEW).
- Same type, regular file: the content is taken as unchanged when size and mtime are
  equal (with --checksum: when the SHA-256 of the contents are equal, whatever the
  mtime: the engine hashes and calls `after_checksum`); else it is copied again (DATA).
- Same type, symlink: a different target is RETARGET; directories and FIFOs have no
  content to compare.
- A different type: the volume's entry goes and the source's is created (RETYPE).
- Content unchanged: the attributes that differ are updated (ATTRS): permission bits,
  owner (when preserved), mtime (atime with it), user.* extended attributes. A
  directory's times are set after everything inside it is done (creating entries
  changes them), so `decide` leaves them out.
- Owner: preserved when the sync runs as root (like rsync -a); otherwise every entry
  belongs to the user running the sync.
"""

from __future__ import annotations

import stat
from typing import NamedTuple

from ..index import InodeRow
from .source import RESERVED_PREFIX, SourceEntry

NEW, SAME, ATTRS, DATA, CHECK, RETARGET, RETYPE = "new", "same", "attrs", "data", "check", "retarget", "retype"

DIGEST_XATTR = b"user.usenetfs.sha256"


class DestEntry(NamedTuple):
    """The volume's entry of a name: its row (with a dirty file's current size), a
    symlink's target, its extended attributes (all of them, reserved ones included)."""

    row: InodeRow
    target: bytes | None
    xattrs: dict[bytes, bytes]


class Decision(NamedTuple):
    kind: str
    fields: dict  # update_inode fields for ATTRS (and for DATA/NEW: the times to set)
    xattr_set: dict[bytes, bytes]
    xattr_remove: list[bytes]


class Owner(NamedTuple):
    preserve: bool  # keep the source's uid/gid (running as root)
    uid: int  # otherwise these
    gid: int

    def of(self, src: SourceEntry) -> tuple[int, int]:
        return (src.uid, src.gid) if self.preserve else (self.uid, self.gid)


def user_xattrs(xattrs: dict[bytes, bytes] | None) -> dict[bytes, bytes]:
    """The attributes a sync compares: user.*, without usenetfs's own."""
    if not xattrs:
        return {}
    return {k: v for k, v in xattrs.items() if not k.startswith(RESERVED_PREFIX)}


def attribute_changes(src: SourceEntry, dest: DestEntry, owner: Owner) -> tuple[dict, dict, list]:
    """(update_inode fields, xattrs to set, xattrs to remove) to make `dest` look like
    `src`, content aside (and a directory's times aside)."""
    row = dest.row
    fields: dict = {}
    kind = src.kind
    if kind != stat.S_IFLNK and row.mode & 0o7777 != src.mode & 0o7777:
        fields["mode"] = (row.mode & ~0o7777) | (src.mode & 0o7777)
    uid, gid = owner.of(src)
    if row.uid != uid:
        fields["uid"] = uid
    if row.gid != gid:
        fields["gid"] = gid
    if kind != stat.S_IFDIR and row.mtime_ns != src.mtime_ns:
        fields["mtime_ns"] = src.mtime_ns
        fields["atime_ns"] = src.atime_ns
    xattr_set: dict[bytes, bytes] = {}
    xattr_remove: list[bytes] = []
    if kind in (stat.S_IFREG, stat.S_IFDIR):
        want = user_xattrs(src.xattrs)
        have = user_xattrs(dest.xattrs)
        xattr_set = {k: v for k, v in want.items() if have.get(k) != v}
        xattr_remove = sorted(k for k in have if k not in want)
    return fields, xattr_set, xattr_remove


def decide(src: SourceEntry, dest: DestEntry | None, owner: Owner, *, checksum: bool = False) -> Decision:
    """What to do with the name `src.name`, which is `dest` in the volume (or absent)."""
    if dest is None:
        return Decision(NEW, {}, {}, [])
    kind = src.kind
    if stat.S_IFMT(dest.row.mode) != kind:
        return Decision(RETYPE, {}, {}, [])
    if kind == stat.S_IFREG:
        if dest.row.size != src.size:
            return Decision(DATA, {}, {}, [])
        if checksum:
            return Decision(CHECK, {}, {}, [])
        if dest.row.mtime_ns != src.mtime_ns:
            return Decision(DATA, {}, {}, [])
    elif kind == stat.S_IFLNK and dest.target != src.target:
        fields, _, _ = attribute_changes(src, dest, owner)
        return Decision(RETARGET, fields, {}, [])
    fields, xattr_set, xattr_remove = attribute_changes(src, dest, owner)
    if fields or xattr_set or xattr_remove:
        return Decision(ATTRS, fields, xattr_set, xattr_remove)
    return Decision(SAME, {}, {}, [])


def after_checksum(src: SourceEntry, dest: DestEntry, owner: Owner, equal: bool) -> Decision:
    """The decision for a CHECK once both contents were hashed."""
    if not equal:
        return Decision(DATA, {}, {}, [])
    fields, xattr_set, xattr_remove = attribute_changes(src, dest, owner)
    if fields or xattr_set or xattr_remove:
        return Decision(ATTRS, fields, xattr_set, xattr_remove)
    return Decision(SAME, {}, {}, [])


def digest_record(digest: bytes, ctime_ns: int) -> bytes:
    """The value of DIGEST_XATTR: the content's SHA-256 (hex), and the inode's ctime when
    it was recorded. Any later change of the inode (a write, a truncate, a chmod through
    the mount) moves its ctime, which nobody can set back: the record is then stale."""
    return digest.hex().encode() + b" " + str(ctime_ns).encode()


def recorded_digest(dest: DestEntry) -> bytes | None:
    """The content digest recorded for `dest`, if it still describes its content."""
    value = dest.xattrs.get(DIGEST_XATTR)
    if value is None:
        return None
    try:
        hex_digest, ctime = value.split(b" ")
        if int(ctime) != dest.row.ctime_ns:
            return None
        digest = bytes.fromhex(hex_digest.decode())
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


__all__ = [
    "ATTRS", "CHECK", "DATA", "DIGEST_XATTR", "Decision", "DestEntry", "NEW", "Owner", "RETARGET", "RETYPE",
    "SAME", "after_checksum", "attribute_changes", "decide", "digest_record", "recorded_digest", "user_xattrs",
]
