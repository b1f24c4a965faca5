"""`Index`: the segment index of one volume (SQLite through SQLAlchemy Core).

Owns all reads and writes of the index database: the namespace (inodes, dentries,
symlinks, xattrs), the segments and their states, the extent maps with refcounts and
garbage accounting, the statfs counters, transactions, creation and format migration.
fsck lives in fsck.py; extent arithmetic in layout.py; the tables in schema.py.

Concurrency rule: every method is synchronous and runs on the trio thread, so the code
between two awaits of the caller is atomic and no lock is needed. Each public mutating
method is ONE transaction (BEGIN IMMEDIATE ... COMMIT) unless it runs inside
`with index.batch():`, which makes the whole block one transaction. Reads run in SQLite
autocommit mode and never hold a transaction open.

Hot paths talk to the pysqlite connection underneath the SQLAlchemy Connection directly,
with fixed SQL strings that pysqlite keeps prepared: a point lookup costs ~6 µs that way
against ~14 µs through `exec_driver_sql` and ~18 µs through a Core `text()` statement
(measured here). Schema creation, migrations and fsck use Core.

Domain errors (errors.py) are raised before a method writes anything; a failure after a
write dooms the enclosing batch (it is rolled back at its end, `BatchAborted`).

Counters (statfs numbers, id allocators) live in memory and are written once per commit
with one UPDATE; a rollback restores them, and `PRAGMA data_version` tells us to reload
them if another connection committed in between.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Connection, Engine, insert

from ..codec.segment import KIND_DATA, SegmentId
from . import layout, schema
from .changes import PageChanges
from .engine import WAL_AUTOCHECKPOINT_PAGES, configure, make_engine
from .errors import (
    BatchAborted,
    Exists,
    FormatError,
    InvalidMove,
    IsADirectory,
    NoSuchAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from .layout import ExtentRow
from .rows import IndexStats, InodeRow, ScopeRow, SegmentRow
from .schema import (
    DEAD,
    MISSING,
    PENDING,
    POSTED,
    ROOT_INODE,
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    VERIFIED,
    VOLUME_SCOPE,
)

_INODE_COLS = "id, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, generation, rdev, parent"
_I_INODE_COLS = ", ".join("i." + c.strip() for c in _INODE_COLS.split(","))
_SEG_COLS = (
    "id, scope, generation, state, payload_size, stored_extra, crc32, refcount, attempts, posted_min, checked_lag_min"
)
_EXT_COLS = "inode, offset, length, segment, segment_offset, run, stride"
_STATE_COUNTER = ("seg_pending", "seg_posted", "seg_verified", "seg_missing", "seg_dead")
_UPDATABLE = frozenset({"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns", "rdev", "generation"})

# The statements a FUSE operation runs. Named so tests can EXPLAIN exactly these.
SQL = {
    "get_inode": f"SELECT {_INODE_COLS} FROM inodes WHERE id = ?",
    "lookup": "SELECT inode FROM dentries WHERE parent = ? AND name = ?",
    "lookup_entry": f"SELECT {_I_INODE_COLS} FROM dentries d JOIN inodes i ON i.id = d.inode "
    "WHERE d.parent = ? AND d.name = ?",
    "entry": "SELECT d.id, d.inode, i.mode FROM dentries d JOIN inodes i ON i.id = d.inode "
    "WHERE d.parent = ? AND d.name = ?",
    "readdir": f"SELECT d.id, d.name, {_I_INODE_COLS} FROM dentries d JOIN inodes i ON i.id = d.inode "
    "WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
    "has_children": "SELECT 1 FROM dentries WHERE parent = ? LIMIT 1",
    "extent_at": f"SELECT {_EXT_COLS} FROM extents WHERE inode = ? AND offset <= ? ORDER BY offset DESC LIMIT 1",
    "extents": f"SELECT {_EXT_COLS} FROM extents WHERE inode = ? ORDER BY offset",
    # Rows overlapping or touching [?3, ?2]: from the last one starting before ?3 on.
    "extents_near": f"SELECT {_EXT_COLS} FROM extents WHERE inode = ?1 AND offset <= ?2 AND offset >= "
    "coalesce((SELECT offset FROM extents WHERE inode = ?1 AND offset < ?3 ORDER BY offset DESC LIMIT 1), ?3) "
    "ORDER BY offset",
    "segment": f"SELECT {_SEG_COLS} FROM segments WHERE id = ?",
    # INDEXED BY: statistics gathered while the queue was large (an ANALYZE by hand) must
    # never turn this into a walk over 30M rows once the queue is small again.
    "pending_segments": f"SELECT {_SEG_COLS} FROM segments INDEXED BY segments_queue "
    "WHERE state IN (0, 1, 3) AND id > ? ORDER BY id LIMIT ?",
    "segment_range_check": "SELECT count(*), coalesce(sum(state = 4), 0) FROM segments WHERE id BETWEEN ? AND ?",
    # ?1 is the standard payload size (a NULL payload_size); a NULL stored_extra (never
    # posted) adds nothing to the sum.
    "dying": "SELECT state, count(*), coalesce(sum(coalesce(payload_size, ?1) + stored_extra), 0) FROM segments "
    "WHERE id BETWEEN ?2 AND ?3 AND refcount <= 0 AND state != 4 GROUP BY state",
    "get_xattr": "SELECT value FROM xattrs WHERE inode = ? AND name = ?",
}
# Inode ids a directory reserves for its new entries at a time: the first block, then
# each next one (`entry_inode_id`).
FIRST_BLOCK = 4
ENTRY_BLOCK = 16


def entry_inode_id(alloc_next: int | None, alloc_end: int | None, next_inode: int) -> tuple[int, int, int, int]:
    """The inode id of a directory's new entry (make_node; bench_index's generator follows
    it too): the next id of the directory's block [alloc_next, alloc_end), or the first of
    a new block from `next_inode` when it has none left. Returns (the id, the directory's
    alloc_next and alloc_end after it, the volume's next_inode after it).

    Why blocks: the inodes table is ordered by id, and readdir, find and stat read the
    rows of one folder's entries together. From one global counter, a folder filled over
    months (a photo library), or any folder while others fill too, would have its rows
    spread over the whole table, one b-tree leaf per entry, and at 3M files those leaves
    are not in the page cache (docs/scale.md). From blocks, a folder's entries sit
    FIRST_BLOCK or ENTRY_BLOCK to a run. The first block is small because most folders
    hold a few entries: the ids left unused in blocks are never handed out (ids are never
    reused), which costs nothing in the table and a little in fs/refs.py's arrays, whose
    blocks follow the id space."""
    if alloc_next is not None and alloc_next < alloc_end:
        return alloc_next, alloc_next + 1, alloc_end, next_inode
    size = FIRST_BLOCK if alloc_end is None else ENTRY_BLOCK
    return next_inode, next_inode + 1, next_inode + size, next_inode + size


_INSERT_INODE = f"INSERT INTO inodes ({_INODE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_DENTRY = "INSERT INTO dentries (parent, name, id, inode) VALUES (?, ?, ?, ?)"
_INSERT_EXTENT = f"INSERT INTO extents ({_EXT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_SEGMENT = (
    "INSERT INTO segments (id, scope, generation, state, payload_size, stored_extra, crc32, refcount, "
    "attempts, posted_min, checked_lag_min) VALUES (?, ?, 0, 0, ?, NULL, NULL, 0, 0, NULL, NULL)"
)
_UPDATE_COUNTERS = "UPDATE counters SET " + ", ".join(f"{n} = ?" for n in schema.COUNTER_NAMES) + " WHERE id = 1"


def _u32_to_i32(value: int) -> int:
    # Stored signed: SQLite needs 4 bytes for a signed 32-bit value, 6 for values >= 2^31.
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("crc32 must be an unsigned 32-bit value")
    return value - (1 << 32) if value >= 1 << 31 else value


def _check_name(name: bytes) -> None:
    if not isinstance(name, bytes) or not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise ValueError(f"invalid directory entry name: {name!r}")


def _is_dir(mode: int) -> bool:
    return mode & S_IFMT == S_IFDIR


# Commits between two looks at the WAL's length while this Index runs the checkpoints.
_WAL_LOOK_EVERY = 64


class _Transaction:
    """The context manager behind every mutating method and `Index.batch()`.

    A pre-built object rather than a @contextmanager generator: it runs on every write.
    """

    __slots__ = ("_index",)

    def __init__(self, index: Index) -> None:
        self._index = index

    def __enter__(self) -> Index:
        ix = self._index
        if ix._depth == 0:
            ix._begin()
        ix._depth += 1
        ix._writes_at.append(ix._writes)
        return ix

    def __exit__(self, exc_type, exc, tb) -> bool:
        ix = self._index
        writes_at = ix._writes_at.pop()
        ix._depth -= 1
        if exc is not None and ix._doomed is None:
            # A domain error raised before any write leaves the transaction as it was;
            # anything that interrupted writes (or an SQLite error) poisons the batch.
            if ix._writes != writes_at or isinstance(exc, sqlite3.Error):
                ix._doomed = exc
        if ix._depth:
            return False
        if exc is not None:
            ix._rollback()
            return False
        if ix._doomed is not None:
            doomed = ix._doomed
            ix._rollback()
            raise BatchAborted("an operation failed half-way inside a batch; the batch was rolled back") from doomed
        ix._commit()
        return False


class Index:
    """The index of one volume. Open with `Index.open(path)`, make with `Index.create(path)`;
    both also accept an SQLAlchemy Engine (e.g. an in-memory one with a StaticPool)."""

    def __init__(self, target: Engine | str | os.PathLike[str], *, _create: dict | None = None) -> None:
        if isinstance(target, Engine):
            self._engine, self._owns_engine = target, False
            self.path: Path | None = None
        else:
            self.path = Path(target)
            if _create is None and not self.path.is_file():
                raise FormatError(f"{self.path}: no such index file")
            self._engine, self._owns_engine = make_engine(self.path), True
        self._conn: Connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._db: sqlite3.Connection = self._conn.connection.driver_connection
        configure(self._db)
        self._q = self._db.execute
        self._depth = 0
        self._writes = 0
        self._writes_at: list[int] = []
        self._doomed: BaseException | None = None
        self._txn = _Transaction(self)
        self._c: dict[str, int] = {}
        self._saved: dict[str, int] = {}
        self._scopes: dict[int, bytes] = {}
        self._update_sql: dict[tuple[str, ...], str] = {}
        self.changes: PageChanges | None = None  # see track_changes
        self._checkpoints_held = False
        self._lock_held = False  # see hold_lock
        self._page_size: int | None = None  # read once, when first asked
        self._commits = 0  # since the last look at the WAL's length (tracking only)
        try:
            if _create is not None:
                self._initialise(**_create)
            self._open()
        except BaseException:
            self.close(checkpoint=False)
            raise

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        target: Engine | str | os.PathLike[str],
        *,
        scope_id: bytes | None = None,
        uid: int = 0,
        gid: int = 0,
        segment_size: int = schema.DEFAULT_SEGMENT_SIZE,
        now_ns: int | None = None,
    ) -> Index:
        """Make a new, empty index (root directory 0755, the volume scope) and open it.

        `segment_size` is the usual segment payload: segments of exactly that size store
        it as NULL (any other size works, it just takes 3 more bytes a row)."""
        if scope_id is None:
            scope_id = os.urandom(16)
        if len(scope_id) != 16:
            raise ValueError("scope_id must be 16 bytes")
        if not isinstance(target, Engine) and Path(target).exists() and Path(target).stat().st_size:
            raise FormatError(f"{target}: already exists")
        if segment_size < 1:
            raise ValueError("segment_size must be positive")
        return cls(
            target,
            _create={"scope_id": scope_id, "uid": uid, "gid": gid, "segment_size": segment_size, "now_ns": now_ns},
        )

    @classmethod
    def open(cls, target: Engine | str | os.PathLike[str]) -> Index:
        """Open an existing index, migrating it to the current format if it is older."""
        return cls(target)

    def _initialise(self, scope_id: bytes, uid: int, gid: int, segment_size: int, now_ns: int | None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        if self._q("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise FormatError("the database is not empty")
        epoch_s = now // 1_000_000_000
        self._q("BEGIN IMMEDIATE")
        try:
            schema.metadata.create_all(self._conn)
            c = self._conn
            c.execute(
                insert(schema.meta),
                [
                    {"key": "format_version", "value": str(schema.FORMAT_VERSION)},
                    {"key": "volume_id", "value": scope_id.hex()},
                    {"key": "epoch_s", "value": str(epoch_s)},
                    {"key": "segment_size", "value": str(segment_size)},
                    {"key": "created_ns", "value": str(now)},
                ],
            )
            c.execute(
                insert(schema.scopes).values(
                    id=VOLUME_SCOPE, scope_id=scope_id, root_inode=ROOT_INODE, kind="volume", created_ns=now
                )
            )
            self._q(_INSERT_INODE, (ROOT_INODE, S_IFDIR | 0o755, uid, gid, 0, now, now, now, 2, 0, 0, ROOT_INODE))
            counters = dict.fromkeys(schema.COUNTER_NAMES, 0)
            counters.update(inodes=1, next_inode=ROOT_INODE + 1, next_dentry=1, next_segment=1)
            c.execute(insert(schema.counters).values(id=1, **counters))
            self._q("COMMIT")
        except BaseException:
            self._q("ROLLBACK")
            raise

    def _open(self) -> None:
        tables = {r[0] for r in self._q("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise FormatError(f"{self.path or 'database'}: not a usenetfs index")
        meta = dict(self._q("SELECT key, value FROM meta"))
        try:
            version = int(meta["format_version"])
            self.epoch_s = int(meta["epoch_s"])
            self.segment_size = int(meta["segment_size"])
        except (KeyError, ValueError) as e:
            raise FormatError(f"{self.path or 'database'}: damaged meta table ({e})") from e
        if version > schema.FORMAT_VERSION:
            raise FormatError(
                f"index format {version} is newer than this usenetfs understands ({schema.FORMAT_VERSION})"
            )
        self.migrated = version < schema.FORMAT_VERSION  # pages rewritten on opening
        while version < schema.FORMAT_VERSION:
            step = schema.MIGRATIONS.get(version)
            if step is None:
                raise FormatError(f"no migration from index format {version}")
            self._q("BEGIN IMMEDIATE")
            try:
                step(self._conn)
                self._q("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(version + 1),))
                self._q("COMMIT")
            except BaseException:
                self._q("ROLLBACK")
                raise
            version += 1
        self.format_version = version
        self._load()
        self._data_version = self._q("PRAGMA data_version").fetchone()[0]

    def _load(self) -> None:
        row = self._q(f"SELECT {', '.join(schema.COUNTER_NAMES)} FROM counters WHERE id = 1").fetchone()
        if row is None:
            raise FormatError("the counters row is missing (run fsck --repair)")
        self._c = dict(zip(schema.COUNTER_NAMES, row))
        self._scopes = dict(self._q("SELECT id, scope_id FROM scopes"))

    def close(self, *, checkpoint: bool = True) -> None:
        """Close the connection (rolling back an unfinished batch), truncating the WAL."""
        conn = getattr(self, "_conn", None)
        if conn is None:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if self.changes is not None:
                self.changes.scan()  # the checkpoints below copy what it has not read yet
            if checkpoint:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn = None
            conn.close()
            if self._owns_engine:
                self._engine.dispose()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Run a WAL checkpoint now (call when idle). Returns (busy, wal pages, checkpointed).
        While a backup holds checkpoints (`freeze`) it does nothing and answers (1, 1, 0):
        busy, nothing copied."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(mode)
        changes = self.changes
        if changes is None:
            return tuple(self._q(f"PRAGMA wal_checkpoint({mode})").fetchone())
        if self._checkpoints_held:
            return (1, 1, 0)
        changes.scan()  # then at once the checkpoint: no commit can come between
        busy, log_frames, done = self._q(f"PRAGMA wal_checkpoint({mode})").fetchone()
        if done >= log_frames:
            changes.checkpointed()
        self._commits = 0
        return busy, log_frames, done

    @property
    def checkpoints_held(self) -> bool:
        return self._checkpoints_held

    def _checkpoint_if_long(self) -> None:
        """Tracking turns SQLite's auto-checkpoint off; this stands in for it: every
        `_WAL_LOOK_EVERY` commits, a scan of the frames they added (which also spreads the
        scanning), and a checkpoint once the log holds as many frames as SQLite's would
        allow. (Not the WAL file's length: a restarted log reuses the file from the start.)"""
        self._commits = 0
        self.changes.scan()
        if self.changes.log_frames >= WAL_AUTOCHECKPOINT_PAGES and not self._checkpoints_held:
            self.checkpoint("PASSIVE")

    # ------------------------------------------------------------------ changed pages (backups)

    def track_changes(self, pages: Iterable[int] | None = ()) -> PageChanges:
        """From now on keep `self.changes`: the pages of the file written since `pages` were
        (None: not known; the first backup then reads the whole file). Every checkpoint
        from here on is this Index's own, each right after a scan of the WAL (see
        index/changes.py): SQLite's auto-checkpoint is turned off, `_checkpoint_if_long`
        stands in for it. Only for a file index with one writer (the mount daemon)."""
        if self.path is None:
            raise ValueError("only a file index has pages to track")
        self._q("PRAGMA wal_autocheckpoint=0")
        self.changes = PageChanges(f"{self.path}-wal", pages)
        self.changes.scan()  # what a crashed run left in the WAL changed too
        return self.changes

    def hold_lock(self) -> None:
        """Keep SQLite's file locks for as long as this Index is open (`locking_mode =
        EXCLUSIVE`), for the mount daemon, which owns the index anyway (the volume's owner
        lock). In the normal mode every statement outside a transaction, reads included,
        takes and drops shared locks (fcntl on the database and its -shm file): ~20 system
        calls per small file created, 264-279 -> 215-229 µs of handler time per file
        in-process, ~10% more files/s through a mount. The price: no other connection, in
        this process or another, can open the file until `close()` (a second reader gets
        "database is locked" after its busy timeout)."""
        self._q("PRAGMA locking_mode=EXCLUSIVE")
        with self._txn:  # take the write lock now, not at the first FUSE operation
            pass
        # From here on nobody else commits: `_begin` and `stats` skip the data_version check.
        self._lock_held = True

    @property
    def page_size(self) -> int:
        if self._page_size is None:
            self._page_size = self._q("PRAGMA page_size").fetchone()[0]
        return self._page_size

    def freeze(self) -> bool:
        """Copy every committed frame into the database file and hold further checkpoints
        until `thaw()`: until then the file is, byte for byte, the index as of this
        commit, while new commits go on into the WAL (which grows meanwhile). For a backup
        that reads the file itself instead of copying it first. False (nothing held) if a
        reader kept the checkpoint from copying everything."""
        if self.changes is None:
            raise ValueError("freeze needs track_changes")
        if self._checkpoints_held:
            raise RuntimeError("checkpoints are held already")
        _, log_frames, done = self.checkpoint("PASSIVE")
        if done < log_frames:
            return False
        self._checkpoints_held = True
        return True

    def thaw(self) -> None:
        self._checkpoints_held = False

    def sync(self) -> None:
        """Make every committed transaction durable now. Commits use synchronous=NORMAL
        (the WAL is synced only at checkpoints), and a checkpoint that a reader blocks
        syncs nothing, so fsync the WAL file itself: every committed frame is in it.
        It does not use the connection, so a worker thread may call it while the owning
        thread goes on (FileData's durability pass does)."""
        if self.path is None:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: everything is in the database file, synced by its checkpoint
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def volume_id(self) -> bytes:
        return self._scopes[VOLUME_SCOPE]

    @property
    def writes(self) -> int:
        """Write statements this Index has run (rolled-back ones too): equal values at two
        moments mean the index did not change in between (the mount skips a backup of an
        index unchanged since the last one). Starts at 0 when opened."""
        return self._writes

    # ------------------------------------------------------------------ transactions

    def batch(self) -> _Transaction:
        """`with index.batch():` makes every call inside one transaction (nesting is fine)."""
        return self._txn

    def _begin(self) -> None:
        self._q("BEGIN IMMEDIATE")
        # With the lock held no other connection can have committed: it cannot open the file.
        version = self._data_version if self._lock_held else self._q("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            # Another connection committed since our last transaction: our in-memory
            # counters may be stale. (One writer process is the rule; this keeps it safe.)
            self._load()
            self._data_version = version
            if self.changes is not None:
                self.changes.lose()  # and it may have checkpointed frames we never read
        self._saved = self._c.copy()
        self._doomed = None

    def _commit(self) -> None:
        try:
            if self._c != self._saved:
                self._q(_UPDATE_COUNTERS, [self._c[n] for n in schema.COUNTER_NAMES])
            self._q("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if self.changes is not None:
            self._commits += 1
            if self._commits >= _WAL_LOOK_EVERY:
                self._checkpoint_if_long()

    def _rollback(self) -> None:
        self._doomed = None
        if self._db.in_transaction:
            self._q("ROLLBACK")
        self._load()

    def _w(self, sql: str, params=()) -> sqlite3.Cursor:
        cur = self._q(sql, params)
        self._writes += 1
        return cur

    def _wmany(self, sql: str, params) -> None:
        self._db.executemany(sql, params)
        self._writes += 1

    @staticmethod
    def _now(now_ns: int | None) -> int:
        return time.time_ns() if now_ns is None else now_ns

    def _minute(self, now_ns: int) -> int:
        return max(0, (now_ns // 1_000_000_000 - self.epoch_s) // 60)

    # ------------------------------------------------------------------ inodes

    def get_inode(self, ino: int) -> InodeRow:
        row = self._q(SQL["get_inode"], (ino,)).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}")
        return InodeRow._make(row)

    def create_inode(self, mode: int, uid: int, gid: int, rdev: int = 0, now_ns: int | None = None) -> InodeRow:
        """A new inode with no name (nlink 0; a directory starts at 1, its own '.')."""
        with self._txn:
            return self._create_inode(mode, uid, gid, rdev, self._now(now_ns), nlink=None, parent=None, size=0)

    def _create_inode(
        self, mode: int, uid: int, gid: int, rdev: int, now: int, *, nlink: int | None, parent: int | None, size: int,
        ino: int | None = None,
    ) -> InodeRow:
        if not mode & S_IFMT:
            raise ValueError("mode must include the file type bits")
        if nlink is None:
            nlink = 1 if _is_dir(mode) else 0
        if ino is None:
            ino = self._c["next_inode"]
            self._c["next_inode"] = ino + 1
        row = InodeRow(ino, mode, uid, gid, size, now, now, now, nlink, 0, rdev, parent)
        self._w(_INSERT_INODE, row)
        self._c["inodes"] += 1
        self._c["total_bytes"] += size
        return row

    def make_node(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        rdev: int = 0,
        *,
        target: bytes | None = None,
        now_ns: int | None = None,
    ) -> InodeRow:
        """create + link (+ symlink target) in one transaction: mkdir, mknod, create, symlink."""
        _check_name(name)
        if not mode & S_IFMT:
            raise ValueError("mode must include the file type bits")
        if (target is not None) != (mode & S_IFMT == S_IFLNK):
            raise ValueError("a symlink needs a target, and only a symlink has one")
        now = self._now(now_ns)
        with self._txn:
            p = self._q("SELECT mode, alloc_next, alloc_end FROM inodes WHERE id = ?", (parent,)).fetchone()
            if p is None:
                raise NotFound(f"no inode {parent}")
            if not _is_dir(p[0]):
                raise NotADirectory(f"inode {parent} is not a directory")
            # The directory's block (alloc_next, alloc_end) and the counter change together,
            # so a rollback takes back both.
            ino, alloc_next, alloc_end, self._c["next_inode"] = entry_inode_id(p[1], p[2], self._c["next_inode"])
            self._insert_dentry(parent, name, ino)
            is_dir = _is_dir(mode)
            row = self._create_inode(
                mode,
                uid,
                gid,
                rdev,
                now,
                nlink=2 if is_dir else 1,
                parent=parent if is_dir else None,
                size=len(target) if target is not None else 0,
                ino=ino,
            )
            if target is not None:
                self._w("INSERT INTO symlinks (inode, target) VALUES (?, ?)", (ino, target))
            self._w(
                "UPDATE inodes SET nlink = nlink + ?, mtime_ns = ?, ctime_ns = ?, alloc_next = ?, alloc_end = ? "
                "WHERE id = ?",
                (1 if is_dir else 0, now, now, alloc_next, alloc_end, parent),
            )
            return row

    def _insert_dentry(self, parent: int, name: bytes, ino: int) -> None:
        # The first write of link/make_node: a duplicate name fails here, before anything
        # else is written (SQLite undoes the failed statement alone).
        dentry_id = self._c["next_dentry"]
        try:
            self._w(_INSERT_DENTRY, (parent, name, dentry_id, ino))
        except sqlite3.IntegrityError:
            raise Exists(f"{name!r} exists in directory {parent}") from None
        self._c["next_dentry"] = dentry_id + 1

    def update_inode(self, ino: int, **fields) -> InodeRow:
        """Change attributes (mode permission bits, uid, gid, size, times, rdev, generation).

        A smaller size drops the file's extents beyond it (see `truncate`). Returns the new row.
        """
        bad = fields.keys() - _UPDATABLE
        if bad:
            raise ValueError(f"cannot update {sorted(bad)} with update_inode")
        with self._txn:
            old = self.get_inode(ino)
            if "mode" in fields and fields["mode"] & S_IFMT != old.mode & S_IFMT:
                raise ValueError("update_inode cannot change the file type")
            if fields.get("size", 0) < 0:
                raise ValueError("size must not be negative")
            new = old._replace(**fields)
            if new == old:
                return old
            names = tuple(sorted(fields))
            sql = self._update_sql.get(names)
            if sql is None:
                sql = self._update_sql[names] = (
                    "UPDATE inodes SET " + ", ".join(f"{n} = ?" for n in names) + " WHERE id = ?"
                )
            self._w(sql, [fields[n] for n in names] + [ino])
            if new.size != old.size:
                self._c["total_bytes"] += new.size - old.size
                if new.size < old.size:
                    self._cut_extents(ino, new.size)
            return new

    def truncate(self, ino: int, size: int, **fields) -> InodeRow:
        """Set the size, dropping or cutting extents beyond it (garbage accounted); other
        attributes (e.g. mtime_ns, ctime_ns) may change in the same transaction."""
        return self.update_inode(ino, size=size, **fields)

    def orphans(self) -> list[int]:
        """Inodes with no name left (nlink 0): files unlinked while open when a mount ended
        without forgetting them (a crash). At mount time nothing holds them: delete them.
        One probe of a partial index that holds exactly those (schema.ORPHANS_INDEX)."""
        return [row[0] for row in self._q("SELECT id FROM inodes WHERE nlink = 0 AND id != ?",
                                           (ROOT_INODE,))]

    def delete_inode(self, ino: int) -> None:
        """Delete an unlinked inode with its xattrs, symlink target and extents (call it
        from forget, once nlink is 0 and the kernel holds no reference)."""
        if ino == ROOT_INODE:
            raise ValueError("cannot delete the root inode")
        with self._txn:
            old = self.get_inode(ino)
            if old.nlink > 0:
                raise ValueError(f"inode {ino} still has {old.nlink} links")
            if old.is_dir and self._q(SQL["has_children"], (ino,)).fetchone():
                raise NotEmpty(f"directory {ino} is not empty")
            self._delete_inode(old)

    def _delete_inode(self, old: InodeRow) -> None:
        ino = old.id
        rows = self.extents(ino)
        self._w("DELETE FROM inodes WHERE id = ?", (ino,))
        if rows:
            self._w("DELETE FROM extents WHERE inode = ?", (ino,))
        self._w("DELETE FROM xattrs WHERE inode = ?", (ino,))
        if old.is_symlink:
            self._w("DELETE FROM symlinks WHERE inode = ?", (ino,))
        self._c["inodes"] -= 1
        self._c["total_bytes"] -= old.size
        self._apply_refcounts([(r.segment, r.last_segment, -1) for r in rows])

    # ------------------------------------------------------------------ directory entries

    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self._q(SQL["lookup"], (parent, name)).fetchone()
        return None if row is None else row[0]

    def lookup_entry(self, parent: int, name: bytes) -> InodeRow | None:
        """lookup and get_inode in one query (what the FUSE lookup handler needs)."""
        row = self._q(SQL["lookup_entry"], (parent, name)).fetchone()
        return None if row is None else InodeRow._make(row)

    def link(self, parent: int, name: bytes, ino: int, *, now_ns: int | None = None) -> InodeRow:
        """Add the name `parent`/`name` for `ino` (nlink + 1; a directory only once, when it
        has no name yet). Returns the updated inode."""
        _check_name(name)
        now = self._now(now_ns)
        with self._txn:
            rows = {
                r[0]: InodeRow._make(r)
                for r in self._q(f"SELECT {_INODE_COLS} FROM inodes WHERE id IN (?, ?)", (parent, ino))
            }
            p, t = rows.get(parent), rows.get(ino)
            if p is None or t is None:
                raise NotFound(f"no inode {parent if p is None else ino}")
            if not p.is_dir:
                raise NotADirectory(f"inode {parent} is not a directory")
            if parent == ino:
                raise InvalidMove("a directory cannot contain itself")
            if t.is_dir and t.parent is not None:
                raise NotPermitted("hard links to directories are not allowed")
            self._insert_dentry(parent, name, ino)
            if t.is_dir:
                new = t._replace(nlink=t.nlink + 1, parent=parent, ctime_ns=now)
                self._w(
                    "UPDATE inodes SET nlink = ?, parent = ?, ctime_ns = ? WHERE id = ?", (new.nlink, parent, now, ino)
                )
            else:
                new = t._replace(nlink=t.nlink + 1, ctime_ns=now)
                self._w("UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE id = ?", (new.nlink, now, ino))
            self._w(
                "UPDATE inodes SET nlink = nlink + ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
                (1 if t.is_dir else 0, now, now, parent),
            )
            return new

    def unlink(self, parent: int, name: bytes, *, now_ns: int | None = None) -> int:
        """Remove a name (unlink or rmdir; a directory must be empty). Returns its inode,
        which the caller deletes once nlink is 0 and the kernel forgot it."""
        now = self._now(now_ns)
        with self._txn:
            entry = self._q(SQL["entry"], (parent, name)).fetchone()
            if entry is None:
                raise NotFound(f"no entry {name!r} in directory {parent}")
            _, ino, mode = entry
            is_dir = _is_dir(mode)
            if is_dir and self._q(SQL["has_children"], (ino,)).fetchone():
                raise NotEmpty(f"directory {name!r} is not empty")
            self._w("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
            self._drop_link(ino, is_dir, now)
            self._w(
                "UPDATE inodes SET nlink = nlink - ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
                (1 if is_dir else 0, now, now, parent),
            )
            return ino

    def _drop_link(self, ino: int, is_dir: bool, now: int) -> None:
        if is_dir:
            # Its name and its own '.' go together: an rmdir'ed directory has nlink 0.
            self._w("UPDATE inodes SET nlink = 0, parent = NULL, ctime_ns = ? WHERE id = ?", (now, ino))
        else:
            self._w("UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? WHERE id = ?", (now, ino))

    def rename(
        self,
        parent: int,
        name: bytes,
        new_parent: int,
        new_name: bytes,
        *,
        replace: bool = True,
        now_ns: int | None = None,
    ) -> int | None:
        """Move a name atomically, replacing an existing target unless `replace` is False
        (then Exists). Returns the replaced inode (its nlink dropped) or None.

        The moved entry keeps its readdir cookie; a replaced target's entry keeps *its*
        cookie and now names the moved inode, so a listing in progress of the target
        directory sees the name exactly once.
        """
        _check_name(new_name)
        now = self._now(now_ns)
        with self._txn:
            src = self._q(SQL["entry"], (parent, name)).fetchone()
            if src is None:
                raise NotFound(f"no entry {name!r} in directory {parent}")
            if (parent, name) == (new_parent, new_name):
                return None
            _, ino, mode = src
            src_dir = _is_dir(mode)
            if new_parent != parent:
                np = self._q("SELECT mode FROM inodes WHERE id = ?", (new_parent,)).fetchone()
                if np is None:
                    raise NotFound(f"no inode {new_parent}")
                if not _is_dir(np[0]):
                    raise NotADirectory(f"inode {new_parent} is not a directory")
                if src_dir and self._is_ancestor(ino, new_parent):
                    raise InvalidMove("cannot move a directory into itself")
            dst = self._q(SQL["entry"], (new_parent, new_name)).fetchone()
            if dst is not None:
                if not replace:
                    raise Exists(f"{new_name!r} exists in directory {new_parent}")
                dst_ino, dst_dir = dst[1], _is_dir(dst[2])
                if dst_ino == ino:
                    return None  # two names of one inode: POSIX says do nothing
                if src_dir and not dst_dir:
                    raise NotADirectory(f"{new_name!r} is not a directory")
                if dst_dir and not src_dir:
                    raise IsADirectory(f"{new_name!r} is a directory")
                if dst_dir and self._q(SQL["has_children"], (dst_ino,)).fetchone():
                    raise NotEmpty(f"directory {new_name!r} is not empty")
            nlink_delta = {parent: 0, new_parent: 0}
            if dst is not None:
                self._w("UPDATE dentries SET inode = ? WHERE parent = ? AND name = ?", (ino, new_parent, new_name))
                self._w("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
                self._drop_link(dst_ino, dst_dir, now)
                if dst_dir:
                    nlink_delta[new_parent] -= 1
            else:
                self._w(
                    "UPDATE dentries SET parent = ?, name = ? WHERE parent = ? AND name = ?",
                    (new_parent, new_name, parent, name),
                )
            if src_dir and new_parent != parent:
                nlink_delta[parent] -= 1
                nlink_delta[new_parent] += 1
                self._w("UPDATE inodes SET parent = ?, ctime_ns = ? WHERE id = ?", (new_parent, now, ino))
            else:
                self._w("UPDATE inodes SET ctime_ns = ? WHERE id = ?", (now, ino))
            for p, delta in nlink_delta.items():
                self._w(
                    "UPDATE inodes SET nlink = nlink + ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?", (delta, now, now, p)
                )
            return None if dst is None else dst_ino

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if directory `ancestor` is `ino` or above it (walks inodes.parent up)."""
        for _ in range(100_000):  # depth bound: a corrupt cycle must not hang the fs
            if ino == ancestor:
                return True
            if ino == ROOT_INODE:
                return False
            row = self._q("SELECT parent FROM inodes WHERE id = ?", (ino,)).fetchone()
            if row is None or row[0] is None:
                return False
            ino = row[0]
        raise RuntimeError("directory parent chain does not reach the root (run fsck)")

    def parent_of(self, ino: int) -> int:
        """The directory holding directory `ino` (root: itself): answers lookup('..')."""
        row = self._q("SELECT parent FROM inodes WHERE id = ?", (ino,)).fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"directory {ino} has no parent")
        return row[0]

    def parents_of(self, inos: Iterable[int]) -> dict[int, int]:
        """A directory holding each of `inos` (files: any one of their names), for the
        ones that have a name. Not indexed by inode: one scan of the entries per 10,000
        inodes, so only for rare work (re-grouping files recovered after a crash)."""
        wanted = sorted(set(inos))
        found: dict[int, int] = {}
        for start in range(0, len(wanted), 10_000):
            chunk = wanted[start:start + 10_000]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT inode, MIN(parent) FROM dentries WHERE inode IN ({marks}) GROUP BY inode"
            found.update(self._q(sql, chunk).fetchall())
        return found

    def readdir(self, parent: int, after_cookie: int = 0, limit: int = 256) -> list[tuple[int, bytes, InodeRow]]:
        """Up to `limit` entries (cookie, name, inode) of `parent` after `after_cookie`, in
        cookie order, in one indexed query. Cookies are stable: entries added later get
        larger ones, removed ones just vanish, so resuming never skips or repeats one."""
        rows = self._q(SQL["readdir"], (parent, after_cookie, limit)).fetchall()
        make = InodeRow._make
        return [(r[0], r[1], make(r[2:])) for r in rows]

    def is_empty_dir(self, ino: int) -> bool:
        return self._q(SQL["has_children"], (ino,)).fetchone() is None

    # ------------------------------------------------------------------ symlinks, xattrs

    def set_symlink(self, ino: int, target: bytes) -> None:
        """Set a symlink's target (and its size, len(target))."""
        with self._txn:
            old = self.get_inode(ino)
            if not old.is_symlink:
                raise ValueError(f"inode {ino} is not a symlink")
            self._w("INSERT OR REPLACE INTO symlinks (inode, target) VALUES (?, ?)", (ino, target))
            if old.size != len(target):
                self._w("UPDATE inodes SET size = ? WHERE id = ?", (len(target), ino))
                self._c["total_bytes"] += len(target) - old.size

    def get_symlink(self, ino: int) -> bytes:
        row = self._q("SELECT target FROM symlinks WHERE inode = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} has no symlink target")
        return row[0]

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        with self._txn:
            if self._q("SELECT 1 FROM inodes WHERE id = ?", (ino,)).fetchone() is None:
                raise NotFound(f"no inode {ino}")
            self._w(
                "INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (inode, name) DO UPDATE SET value = excluded.value",
                (ino, name, value),
            )

    def get_xattr(self, ino: int, name: bytes) -> bytes:
        row = self._q(SQL["get_xattr"], (ino, name)).fetchone()
        if row is None:
            raise NoSuchAttribute(f"inode {ino} has no attribute {name!r}")
        return row[0]

    def list_xattrs(self, ino: int) -> list[bytes]:
        return [r[0] for r in self._q("SELECT name FROM xattrs WHERE inode = ? ORDER BY name", (ino,))]

    def remove_xattr(self, ino: int, name: bytes) -> None:
        with self._txn:
            if self._w("DELETE FROM xattrs WHERE inode = ? AND name = ?", (ino, name)).rowcount == 0:
                raise NoSuchAttribute(f"inode {ino} has no attribute {name!r}")

    # ------------------------------------------------------------------ scopes

    def add_scope(self, scope_id: bytes, root_inode: int, kind: str = "share", *, now_ns: int | None = None) -> int:
        """Register a scope (a share gets its own keys and article names). Returns its id."""
        if len(scope_id) != 16:
            raise ValueError("scope_id must be 16 bytes")
        if kind not in ("volume", "share"):
            raise ValueError("kind must be 'volume' or 'share'")
        with self._txn:
            self.get_inode(root_inode)
            if scope_id in self._scopes.values():
                raise Exists(f"scope {scope_id.hex()} exists")
            sid = self._w(
                "INSERT INTO scopes (scope_id, root_inode, kind, created_ns) VALUES (?, ?, ?, ?)",
                (scope_id, root_inode, kind, self._now(now_ns)),
            ).lastrowid
            self._scopes[sid] = scope_id
            return sid

    def scopes(self) -> list[ScopeRow]:
        return [ScopeRow._make(r) for r in self._q("SELECT id, scope_id, root_inode, kind, created_ns FROM scopes")]

    def scope_bytes(self, scope: int) -> bytes:
        """The 16-byte scope id (SegmentId.scope) of scopes.id `scope`."""
        try:
            return self._scopes[scope]
        except KeyError:
            raise NotFound(f"no scope {scope}") from None

    # ------------------------------------------------------------------ segments

    def _segment_row(self, r) -> SegmentRow:
        payload = self.segment_size if r[4] is None else r[4]
        crc, posted, lag = r[6], r[9], r[10]
        return SegmentRow(
            r[0], r[1], r[2], r[3], payload,
            None if r[5] is None else payload + r[5],
            None if crc is None else crc & 0xFFFFFFFF,
            r[7], r[8],
            None if posted is None else self.epoch_s + posted * 60,
            None if lag is None or posted is None else self.epoch_s + (posted + lag) * 60,
        )  # fmt: skip

    def segment(self, seg: int) -> SegmentRow:
        row = self._q(SQL["segment"], (seg,)).fetchone()
        if row is None:
            raise NotFound(f"no segment {seg}")
        return self._segment_row(row)

    def segment_ident(self, seg: SegmentRow) -> SegmentId:
        """What the codec and the Message-ID derivation call this segment."""
        return SegmentId(self.scope_bytes(seg.scope), KIND_DATA, seg.id)

    def new_segment(self, scope: int, payload_size: int) -> int:
        """Record the intent to post one segment (state pending, committed). Returns its id."""
        return self.new_segment_run(scope, 1, payload_size)

    def new_segment_run(
        self, scope: int, count: int, payload_size: int, last_payload_size: int | None = None
    ) -> int:
        """Allocate `count` consecutive pending segments of `payload_size` bytes (the last
        one `last_payload_size`, if given) in one statement. Returns the first id."""
        self.scope_bytes(scope)
        if count < 1 or payload_size < 1 or (last_payload_size is not None and last_payload_size < 1):
            raise ValueError("count and sizes must be positive")
        std = self.segment_size
        with self._txn:
            first = self._c["next_segment"]
            if count == 1:
                size = payload_size if last_payload_size is None else last_payload_size
                self._w(_INSERT_SEGMENT, (first, scope, None if size == std else size))
            else:
                stored = None if payload_size == std else payload_size
                rows = [(first + k, scope, stored) for k in range(count)]
                if last_payload_size is not None:
                    rows[-1] = (first + count - 1, scope, None if last_payload_size == std else last_payload_size)
                self._wmany(_INSERT_SEGMENT, rows)
            self._c["next_segment"] = first + count
            self._c["seg_pending"] += count
            return first

    def _set_state(self, old_state: int, new_state: int, n: int = 1) -> None:
        self._c[_STATE_COUNTER[old_state]] -= n
        self._c[_STATE_COUNTER[new_state]] += n

    def mark_posted(
        self, seg: int, generation: int, stored_size: int, crc32: int, *, now_ns: int | None = None
    ) -> bool:
        """The server accepted generation `generation` (240). False if that is stale (the
        segment moved on) or the segment is dead (its bytes then count as garbage)."""
        crc = _u32_to_i32(crc32)
        minute = self._minute(self._now(now_ns))
        with self._txn:
            row = self._q(
                "SELECT state, generation, payload_size, stored_extra FROM segments WHERE id = ?", (seg,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no segment {seg}")
            state, gen, payload, old_extra = row
            payload = self.segment_size if payload is None else payload
            extra = stored_size - payload
            if state == DEAD:
                if old_extra is None:
                    # Posted after it died (the upload was in flight): garbage from birth.
                    self._w(
                        "UPDATE segments SET stored_extra = ?, crc32 = ?, posted_min = ? WHERE id = ?",
                        (extra, crc, minute, seg),
                    )
                    self._c["garbage_bytes"] += stored_size
                return False
            if gen != generation or state not in (PENDING, POSTED, MISSING):
                return False
            self._w(
                "UPDATE segments SET state = 1, stored_extra = ?, crc32 = ?, posted_min = ?, "
                "checked_lag_min = NULL, attempts = 0 WHERE id = ?",
                (extra, crc, minute, seg),
            )
            self._set_state(state, POSTED)
            self._c["stored_bytes"] += stored_size - (0 if old_extra is None else payload + old_extra)
            return True

    def mark_verified(self, seg: int, generation: int | None = None, *, now_ns: int | None = None) -> bool:
        """Read back by BODY (posted -> verified; a verified one records the new check)."""
        minute = self._minute(self._now(now_ns))
        with self._txn:
            state, gen, posted = self._state(seg)
            if state not in (POSTED, VERIFIED) or (generation is not None and generation != gen):
                return False
            self._w(
                "UPDATE segments SET state = 2, checked_lag_min = ? WHERE id = ?",
                (max(0, minute - (posted or 0)), seg),
            )
            self._set_state(state, VERIFIED)
            return True

    def mark_missing(self, seg: int, generation: int | None = None, *, now_ns: int | None = None) -> bool:
        """A read-back failed: state missing, generation + 1 (the re-post gets a new
        Message-ID). False if not posted/verified or the generation is stale."""
        minute = self._minute(self._now(now_ns))
        with self._txn:
            state, gen, posted = self._state(seg)
            if state not in (POSTED, VERIFIED) or (generation is not None and generation != gen):
                return False
            self._w(
                "UPDATE segments SET state = 3, generation = generation + 1, attempts = 0, checked_lag_min = ? "
                "WHERE id = ?",
                (max(0, minute - (posted or 0)), seg),
            )
            self._set_state(state, MISSING)
            return True

    def mark_stored(self, seg: int, generation: int, stored_generation: int, stored_size: int, crc32: int) -> bool:
        """A put that started at `generation` ended verified under `stored_generation`
        (post_verified moves on only after a generation was verified missing): record each
        step (posted, missing) and the stored generation as posted, in one transaction, so
        the index's generation is the one that was verified. mark_posted's answer."""
        with self._txn:
            while generation < stored_generation:
                self.mark_posted(seg, generation, stored_size, crc32)
                self.mark_missing(seg, generation)
                generation += 1
            return self.mark_posted(seg, stored_generation, stored_size, crc32)

    def mark_failed(self, seg: int) -> int:
        """Count a failed POST of the current generation; returns the count so far."""
        with self._txn:
            self._state(seg)
            self._w("UPDATE segments SET attempts = attempts + 1 WHERE id = ?", (seg,))
            return self._q("SELECT attempts FROM segments WHERE id = ?", (seg,)).fetchone()[0]

    def discard_segment(self, seg: int) -> bool:
        """Declare an allocated segment unwanted (e.g. its file was deleted before the
        extents were set): dead if no extent references it. True if it died."""
        with self._txn:
            self._state(seg)
            before = self._c["seg_dead"]
            self._bury(seg, seg)
            return self._c["seg_dead"] != before

    def discard_unreferenced(self, first: int, last: int) -> None:
        """Segments in [first, last] that no extent references become dead (their posted
        bytes garbage): what an upload leaves behind when, while it was in flight, its file
        shrank or lost the members those segments held. One range query."""
        with self._txn:
            self._bury(first, last)

    def _state(self, seg: int) -> tuple[int, int, int | None]:
        row = self._q("SELECT state, generation, posted_min FROM segments WHERE id = ?", (seg,)).fetchone()
        if row is None:
            raise NotFound(f"no segment {seg}")
        return row

    def pending_segments(self, limit: int = 1000, after: int = 0) -> list[SegmentRow]:
        """Segments still needing upload work (pending, posted, missing) with id > after,
        by id: what the uploader resumes after a crash."""
        return [self._segment_row(r) for r in self._q(SQL["pending_segments"], (after, limit))]

    # ------------------------------------------------------------------ extents

    def extents(self, ino: int) -> list[ExtentRow]:
        """The whole extent map of a file, sorted by offset, in one query (cache it per
        open file and use layout.locate)."""
        make = ExtentRow._make
        return [make(r) for r in self._q(SQL["extents"], (ino,))]

    def extent_at(self, ino: int, pos: int) -> ExtentRow | None:
        """The extent holding file byte `pos`, or None for a hole."""
        row = self._q(SQL["extent_at"], (ino, pos)).fetchone()
        if row is None or row[1] + row[2] <= pos:
            return None
        return ExtentRow._make(row)

    def set_extents(self, ino: int, rows: Iterable[ExtentRow]) -> None:
        """Map file byte ranges to segment data, superseding whatever mapped them before.

        Old extents partly covered are cut; contiguous neighbours merge; refcounts follow,
        and a segment no row references any more becomes dead (its bytes garbage). Later
        rows in `rows` win over earlier ones. Rows must end within the inode's size (set
        the size first), and reference existing, live segments.
        """
        new = self._checked_rows(ino, rows)
        with self._txn:
            self._check_target(ino, new)
            changes: list[tuple[int, int, int]] = []
            for row in new:
                old = [
                    r
                    for r in map(ExtentRow._make, self._q(SQL["extents_near"], (ino, row.end, row.offset)))
                    if r.end >= row.offset
                ]
                self._replace_rows(old, layout.splice(old, row), changes)
            self._apply_refcounts(changes)

    def replace_extents(self, ino: int, rows: Iterable[ExtentRow]) -> None:
        """Make `rows` (non-overlapping) the file's WHOLE extent map: bytes they do not
        cover become holes. Refcounts are netted over the old and new maps together, so a
        segment both reference never dies in between. Same rules as set_extents."""
        new = layout.coalesced(self._checked_rows(ino, rows))
        with self._txn:
            self._check_target(ino, new)
            changes: list[tuple[int, int, int]] = []
            self._replace_rows(self.extents(ino), new, changes)
            self._apply_refcounts(changes)

    def replace_extent_range(self, ino: int, start: int, end: int, rows: Iterable[ExtentRow]) -> None:
        """Make `rows` (non-overlapping, inside [start, end)) the extent map of file bytes
        [start, end): what mapped them before is cut away, bytes the rows do not cover
        become holes, and nothing outside the range changes. An upload of part of a file
        (streamed while it is written, or the rest after that) commits with this."""
        if not 0 <= start <= end:
            raise ValueError("need 0 <= start <= end")
        new = self._checked_rows(ino, rows)
        for row in new:
            if row.offset < start or row.end > end:
                raise ValueError(f"extent {row} is outside [{start}, {end})")
        with self._txn:
            self._check_target(ino, new)
            # Neighbours touching the range come along, so contiguous runs can merge.
            old = [
                r
                for r in map(ExtentRow._make, self._q(SQL["extents_near"], (ino, end, start)))
                if r.end >= start and r.offset <= end
            ]
            changes: list[tuple[int, int, int]] = []
            self._replace_rows(old, layout.coalesced(layout.punched(old, start, end) + new), changes)
            self._apply_refcounts(changes)

    def punch_hole(self, ino: int, start: int, end: int) -> None:
        """Unmap file bytes [start, end) (they read as zeros); the size does not change."""
        if not 0 <= start <= end:
            raise ValueError("need 0 <= start <= end")
        with self._txn:
            if start == end:
                return
            old = [
                r
                for r in map(ExtentRow._make, self._q(SQL["extents_near"], (ino, end, start)))
                if r.end > start and r.offset < end
            ]
            changes: list[tuple[int, int, int]] = []
            self._replace_rows(old, layout.punched(old, start, end), changes)
            self._apply_refcounts(changes)

    @staticmethod
    def _checked_rows(ino: int, rows: Iterable[ExtentRow]) -> list[ExtentRow]:
        new = []
        for row in rows:
            row = ExtentRow(ino, *row[1:])
            layout.check(row)
            new.append(row)
        return new

    def _check_target(self, ino: int, new: list[ExtentRow]) -> None:
        """Raise (before any write) unless `ino` is a regular file the rows fit in and
        every segment they reference exists and is live."""
        inode = self._q("SELECT mode, size FROM inodes WHERE id = ?", (ino,)).fetchone()
        if inode is None:
            raise NotFound(f"no inode {ino}")
        if inode[0] & S_IFMT != S_IFREG:
            raise ValueError(f"inode {ino} is not a regular file")
        for row in new:
            if row.end > inode[1]:
                raise ValueError(f"extent ends at {row.end}, beyond the size {inode[1]} of inode {ino}")
            count, dead = self._q(SQL["segment_range_check"], (row.segment, row.last_segment)).fetchone()
            if count != row.run:
                raise NotFound(f"segments {row.segment}..{row.last_segment} do not all exist")
            if dead:
                raise ValueError(f"segments {row.segment}..{row.last_segment} include dead ones")

    def _replace_rows(
        self, old: list[ExtentRow], result: list[ExtentRow], changes: list[tuple[int, int, int]]
    ) -> None:
        keep = set(old) & set(result)
        for r in old:
            if r not in keep:
                self._w("DELETE FROM extents WHERE inode = ? AND offset = ?", (r.inode, r.offset))
                changes.append((r.segment, r.last_segment, -1))
        for r in result:
            if r not in keep:
                self._w(_INSERT_EXTENT, r)
                changes.append((r.segment, r.last_segment, 1))

    def _cut_extents(self, ino: int, size: int) -> None:
        old = [
            r for r in map(ExtentRow._make, self._q(SQL["extents_near"], (ino, 1 << 62, size))) if r.end > size
        ]
        if not old:
            return
        changes: list[tuple[int, int, int]] = []
        self._replace_rows(old, layout.truncated(old, size), changes)
        self._apply_refcounts(changes)

    def _apply_refcounts(self, changes: list[tuple[int, int, int]]) -> None:
        for lo, hi, delta in layout.net_deltas(changes):
            self._w("UPDATE segments SET refcount = refcount + ? WHERE id BETWEEN ? AND ?", (delta, lo, hi))
            if delta < 0:
                self._bury(lo, hi)

    def _bury(self, lo: int, hi: int) -> None:
        """Segments in [lo, hi] that no extent references become dead; their stored bytes
        (if they were ever posted) move from stored to garbage."""
        dying = self._q(SQL["dying"], (self.segment_size, lo, hi)).fetchall()
        if not dying:
            return
        self._w("UPDATE segments SET state = 4 WHERE id BETWEEN ? AND ? AND refcount <= 0 AND state != 4", (lo, hi))
        for state, n, stored in dying:
            self._set_state(state, DEAD, n)
            self._c["stored_bytes"] -= stored
            self._c["garbage_bytes"] += stored

    # ------------------------------------------------------------------ statistics, fsck

    def stats(self) -> IndexStats:
        """The statfs numbers, kept incrementally: no scan, no COUNT. (One PRAGMA tells
        whether another connection committed since; then the counters row is reread.)"""
        if not self._depth and not self._lock_held:
            version = self._q("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._load()
                self._data_version = version
        c = self._c
        return IndexStats(
            c["inodes"],
            c["total_bytes"],
            c["garbage_bytes"],
            tuple(c[n] for n in _STATE_COUNTER),
            c["stored_bytes"],
        )

    def fsck(self, repair: bool = False, progress=None) -> list[str]:
        """Check every invariant with full scans (offline); with repair, fix what can be
        fixed in one transaction. Returns the problems found (empty: clean).
        `progress(steps_done, steps)` follows its steps."""
        from .fsck import check

        return check(self, repair, progress)

    def query_plan(self, name: str, params=()) -> list[str]:
        """EXPLAIN QUERY PLAN of one of the hot statements in SQL (for tests and tuning)."""
        sql = SQL[name]
        if not params:
            params = (1,) * sql.count("?") if "?1" not in sql else (1, 1, 1)
        return [r[3] for r in self._q("EXPLAIN QUERY PLAN " + sql, params)]


__all__ = ["Index", "SQL"]
