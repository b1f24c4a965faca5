"""Read-only scans for `usenetfs verify` and `usenetfs status`, one bounded batch per call.

Owns the queries that walk the index instead of answering one FUSE operation:
- which segments hold file data (referenced, posted at least once), by id range or by a
  list of ids (a random sample);
- which files hold given segments (the extents table has no index on `segment`, so this
  is a walk over extents in primary-key order);
- the names of given inodes (a walk over dentries: there is no index on `inode` either)
  and the path of a directory (one indexed step per level, through `inodes.parent`).

Every call reads at most `limit` rows and returns where to resume, so a caller on the
mount's event loop can yield between batches and never stalls FUSE for long. Full walks
are fine here, and only here: verify runs rarely, status walks only when it has files to
name. Adding indexes on extents(segment) or dentries(inode) would cost every write of the
hot paths (and ~60 MB each at full scale) for what these occasional walks need.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from .rows import SegmentRow
from .schema import MISSING, POSTED, ROOT_INODE, VERIFIED

if TYPE_CHECKING:
    from .store import Index

_SEG_COLS = (
    "id, scope, generation, state, payload_size, stored_extra, crc32, refcount, attempts, posted_min, checked_lag_min"
)
# Segments that hold file data: referenced, and posted at least once.
_HOLDS_DATA = f"refcount > 0 AND state IN ({POSTED}, {VERIFIED}, {MISSING})"
SQL = {
    "data_segments_between": f"SELECT {_SEG_COLS} FROM segments WHERE id BETWEEN ? AND ? AND {_HOLDS_DATA} ORDER BY id",
    "extents_after": "SELECT inode, offset, segment, run FROM extents WHERE (inode, offset) > (?, ?) "
    "ORDER BY inode, offset LIMIT ?",
    "dentries_after": "SELECT parent, name, inode FROM dentries WHERE (parent, name) > (?, ?) "
    "ORDER BY parent, name LIMIT ?",
    # Covered by dentries_readdir (parent, id, inode + the primary key's name): a walk over
    # one directory's entries, never the table.
    "name_in_parent": "SELECT name FROM dentries WHERE parent = ? AND inode = ? LIMIT 1",
}
MAX_IDS_PER_QUERY = 500  # well under SQLite's host-parameter limit


def segment_id_end(ix: Index) -> int:
    """One past the highest segment id ever allocated (ids are never reused)."""
    ix.stats()  # reloads the counters if another connection committed
    return ix._c["next_segment"]


def data_segments_between(ix: Index, first: int, last: int) -> list[SegmentRow]:
    """Segments with `first <= id <= last` that hold file data, by id (a rowid range:
    reads at most last - first + 1 rows)."""
    return [ix._segment_row(r) for r in ix._q(SQL["data_segments_between"], (first, last))]


def data_segments_in(ix: Index, ids: Sequence[int]) -> list[SegmentRow]:
    """Those of `ids` (at most MAX_IDS_PER_QUERY) that hold file data, by id."""
    if not ids:
        return []
    if len(ids) > MAX_IDS_PER_QUERY:
        raise ValueError(f"at most {MAX_IDS_PER_QUERY} ids per query")
    marks = ", ".join("?" * len(ids))
    sql = f"SELECT {_SEG_COLS} FROM segments WHERE id IN ({marks}) AND {_HOLDS_DATA} ORDER BY id"
    return [ix._segment_row(r) for r in ix._q(sql, tuple(ids))]


def files_holding(
    ix: Index, segments: Sequence[int], after: tuple[int, int] = (0, -1), limit: int = 10_000
) -> tuple[dict[int, set[int]], tuple[int, int] | None]:
    """Scan up to `limit` extent rows after `after` = (inode, offset); return which of
    `segments` (sorted ids) each inode's rows cover, and where to resume (None: done)."""
    found: dict[int, set[int]] = {}
    last = None
    rows = ix._q(SQL["extents_after"], (*after, limit)).fetchall()
    for inode, offset, first, run in rows:
        last = (inode, offset)
        i = bisect_left(segments, first)
        while i < len(segments) and segments[i] < first + run:
            found.setdefault(inode, set()).add(segments[i])
            i += 1
    return found, (last if len(rows) == limit else None)


def entries_of(
    ix: Index, inodes: Collection[int], after: tuple[int, bytes] = (0, b""), limit: int = 10_000
) -> tuple[list[tuple[int, bytes, int]], tuple[int, bytes] | None]:
    """Scan up to `limit` directory entries after `after` = (parent, name); return those
    naming one of `inodes` as (parent, name, inode), and where to resume (None: done)."""
    rows = ix._q(SQL["dentries_after"], (*after, limit)).fetchall()
    found = [row for row in rows if row[2] in inodes]
    return found, ((rows[-1][0], rows[-1][1]) if len(rows) == limit else None)


def dir_path(ix: Index, ino: int, known: dict[int, bytes] | None = None) -> bytes:
    """The path of directory `ino` from the volume root ("/" for the root); `known`
    caches directory paths across calls. A directory without a name (left by a crash:
    fsck links it into /lost+found) shows as "?<ino>"."""
    known = {} if known is None else known
    steps: list[tuple[int, bytes]] = []  # (directory, its name), upwards
    current = ino
    while current != ROOT_INODE and current not in known:
        row = ix._q("SELECT parent FROM inodes WHERE id = ?", (current,)).fetchone()
        if row is None or row[0] is None or len(steps) > 4096:  # nameless, or a cycle
            base = b"/?%d" % current
            break
        name = ix._q(SQL["name_in_parent"], (row[0], current)).fetchone()
        steps.append((current, name[0] if name else b"?%d" % current))
        current = row[0]
    else:
        base = b"" if current == ROOT_INODE else known[current]
    path = base
    for directory, name in reversed(steps):
        path += b"/" + name
        known[directory] = path
    return path or b"/"


__all__ = [
    "MAX_IDS_PER_QUERY",
    "data_segments_between",
    "data_segments_in",
    "dir_path",
    "entries_of",
    "files_holding",
    "segment_id_end",
]
