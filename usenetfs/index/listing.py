"""Whole-directory reads for `usenetfs sync`: one query per directory, not one per entry.

Owns the queries that fetch, for every entry of one directory at once, what `readdir`
does not return: the symlink targets and the extended attributes. A sync comparing a
directory of 10,000 entries with its source makes two queries here instead of 10,000
(each a ~5 µs round trip through pysqlite).

Both walk `dentries` by its primary key prefix (parent) and join by primary key, so the
cost is the directory's size, whatever the volume's. Read-only; synchronous on the trio
thread like every index call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Index

SQL = {
    "symlinks_in": "SELECT s.inode, s.target FROM dentries d JOIN symlinks s ON s.inode = d.inode "
    "WHERE d.parent = ?",
    "xattrs_in": "SELECT x.inode, x.name, x.value FROM dentries d JOIN xattrs x ON x.inode = d.inode "
    "WHERE d.parent = ?",
}


def symlinks_in(ix: Index, parent: int) -> dict[int, bytes]:
    """inode -> target of every symlink named in directory `parent`."""
    return dict(ix._q(SQL["symlinks_in"], (parent,)))


def xattrs_in(ix: Index, parent: int) -> dict[int, dict[bytes, bytes]]:
    """inode -> {name: value} of every entry of directory `parent` that has attributes
    (an inode named twice in it appears once)."""
    out: dict[int, dict[bytes, bytes]] = {}
    for ino, name, value in ix._q(SQL["xattrs_in"], (parent,)):
        out.setdefault(ino, {})[name] = value
    return out


def query_plan(ix: Index, name: str) -> list[str]:
    """EXPLAIN QUERY PLAN of one of the statements above (tests check they use indexes)."""
    return [r[3] for r in ix._q("EXPLAIN QUERY PLAN " + SQL[name], (1,))]


__all__ = ["SQL", "query_plan", "symlinks_in", "xattrs_in"]
