"""Copies of the index file as a whole: a consistent snapshot of a live index, and the
soundness check of a copy before it is installed (index backups, usenetfs.backup).

The snapshot uses SQLite's online backup API, which copies the database page for page:
page n of the copy is page n of the source (the WAL's newest committed version of it).
That keeps the file's layout stable between snapshots, so a small change to the index
changes few pages of the copy, and an incremental backup posts only those. (VACUUM INTO
would rewrite every page.) The whole copy is one backup step, so it holds one read
transaction from start to end: a writer on another connection carries on meanwhile
(WAL), and the copy is the index as of one commit.

Synchronous and slow (seconds per GB): callers on the event loop run these in a thread.
Neither function touches an open `Index`; each uses its own short-lived connection.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def copy_consistent(source: Path, target: Path) -> int:
    """Copy the index at `source` (live, WAL included) to `target`, replacing whatever
    was there; return the copy's size in bytes."""
    target.unlink(missing_ok=True)  # a half-written copy from a crash is not a database
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        writer = sqlite3.connect(target)
        try:
            # The copy is read once and deleted (a crash leaves a file that is removed
            # above): no journal, and no fsync of every page at the end, which cost more
            # than the copy itself (10 s against 1.4-2.4 s for 1.5 GB, measured here).
            writer.execute("PRAGMA journal_mode=OFF")
            writer.execute("PRAGMA synchronous=OFF")
            reader.backup(writer)  # pages=-1: one step, one read transaction
        finally:
            writer.close()
    finally:
        reader.close()
    return os.stat(target).st_size


def check_copy(path: Path) -> str | None:
    """None if the database file at `path` is sound (PRAGMA integrity_check), else the
    first problem SQLite reports, as one line.

    Opened `immutable`: nothing else uses the file, and no -wal or -shm file may appear
    beside a copy that is about to be renamed into place.
    """
    try:
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            rows = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        return str(error)
    if rows == [("ok",)]:
        return None
    first = str(rows[0][0]) if rows else "no answer"
    return first.splitlines()[0] + (f" (and {len(rows) - 1} more problems)" if len(rows) > 1 else "")
