"""Engine set-up for the index: the SQLAlchemy Engine and the per-connection PRAGMAs.

Owns `make_engine(path)` and `configure(dbapi_connection)`. The Index holds ONE connection
for its lifetime, in SQLite autocommit mode (pysqlite `isolation_level=None`): it issues
BEGIN IMMEDIATE / COMMIT itself, so a read never leaves a transaction open. An open read
transaction would pin a WAL snapshot and stop checkpoints from ever resetting the WAL.
"""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

# Checkpoint every ~40 MB of WAL (10,000 4 KiB pages) instead of SQLite's 4 MB: frequent
# checkpoints stall the event loop under untar / rm -r (S3QL's experience). Between
# checkpoints, an idle-time `Index.checkpoint()` keeps the WAL short.
WAL_AUTOCHECKPOINT_PAGES = 10_000
CACHE_KIB = 64 * 1024  # page cache per connection
BUSY_TIMEOUT_MS = 10_000  # another process (a CLI reader, fsck) briefly holding a lock
STATEMENT_CACHE = 256  # prepared statements kept by pysqlite (its default is 128)


def configure(dbapi_connection: sqlite3.Connection) -> None:
    """Apply the PRAGMAs every index connection needs. Idempotent."""
    cur = dbapi_connection.cursor()
    try:
        # WAL is a property of the file (persistent); in-memory databases answer 'memory'.
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never corrupt the file.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Referential integrity is enforced by the Index code (and checked by fsck):
        # foreign-key checks would add a lookup to every insert and delete.
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.execute("PRAGMA temp_store=MEMORY")
    finally:
        cur.close()


def make_engine(path: str | os.PathLike[str]) -> Engine:
    """An Engine for the index file at `path` (created by SQLite if missing)."""
    engine = create_engine(
        f"sqlite:///{os.fspath(path)}",
        # The Index keeps its one connection open; a pool would only hide leaks.
        poolclass=NullPool,
        connect_args={"cached_statements": STATEMENT_CACHE},
    )
    event.listen(engine, "connect", lambda dbapi_connection, _record: configure(dbapi_connection))
    return engine
