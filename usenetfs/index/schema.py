"""The index schema (SQLAlchemy Core `MetaData`), its format version and migrations.

Owns every table, column and index definition, the segment state numbers, and the
migration registry. docs/index.md documents each column and sentinel; keep them in step.

Size matters more than elegance here: at the 20 TB target the `segments` table holds
30M rows, so its columns are small integers that SQLite stores in 0-4 bytes (0 and 1 cost
no payload at all), nothing derivable is stored (Message-IDs come from keys + scope + id +
generation), timestamps are minutes since the volume epoch (3 bytes for 16 years)
instead of nanoseconds (8 bytes each: +600 MB at 30M rows), and the usual values of sizes
and times are encoded as NULL or small deltas (see the column comments). Measured at full
scale: 29 bytes a segment row instead of 55 for the naive layout.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

# Version 1: the first format. Bump it with every schema change and register the step
# that upgrades an index from the previous version in MIGRATIONS.
FORMAT_VERSION = 3

# Segment states (segments.state).
PENDING = 0  # row committed before the POST (intent); nothing on the server yet, or unknown
POSTED = 1  # the server answered 240; not yet read back
VERIFIED = 2  # read back by BODY and decoded
MISSING = 3  # a read-back failed; generation already bumped, to be posted again
DEAD = 4  # no extent references it any more: garbage (Usenet cannot delete)
STATES = (PENDING, POSTED, VERIFIED, MISSING, DEAD)
STATE_NAMES = ("pending", "posted", "verified", "missing", "dead")
QUEUE_STATES = (PENDING, POSTED, MISSING)  # what the uploader still has to do something about

ROOT_INODE = 1  # == pyfuse3.ROOT_INODE
DEFAULT_SEGMENT_SIZE = 716_800  # meta segment_size unless Index.create is told otherwise
VOLUME_SCOPE = 1  # scopes.id of the volume itself

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    sqlite_with_rowid=False,
)

# One row (id = 1): the statfs counters and id allocators, kept incrementally. One row
# rather than key/value pairs so a commit writes them with a single UPDATE.
counters = Table(
    "counters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("inodes", Integer, nullable=False),
    Column("total_bytes", Integer, nullable=False),
    Column("stored_bytes", Integer, nullable=False),
    Column("garbage_bytes", Integer, nullable=False),
    Column("seg_pending", Integer, nullable=False),
    Column("seg_posted", Integer, nullable=False),
    Column("seg_verified", Integer, nullable=False),
    Column("seg_missing", Integer, nullable=False),
    Column("seg_dead", Integer, nullable=False),
    Column("next_inode", Integer, nullable=False),
    Column("next_dentry", Integer, nullable=False),
    Column("next_segment", Integer, nullable=False),
    CheckConstraint("id = 1", name="counters_one_row"),
)
COUNTER_NAMES = tuple(c.name for c in counters.columns if c.name != "id")

scopes = Table(
    "scopes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope_id", LargeBinary(16), nullable=False, unique=True),
    Column("root_inode", Integer, nullable=False),
    Column("kind", Text, nullable=False),  # 'volume' | 'share'
    Column("created_ns", Integer, nullable=False),
    CheckConstraint("kind IN ('volume', 'share')", name="scopes_kind"),
)

inodes = Table(
    "inodes",
    metadata,
    Column("id", Integer, primary_key=True),  # rowid; allocated from counters.next_inode
    Column("mode", Integer, nullable=False),
    Column("uid", Integer, nullable=False),
    Column("gid", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("atime_ns", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("ctime_ns", Integer, nullable=False),
    Column("nlink", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("rdev", Integer, nullable=False),
    Column("parent", Integer),  # directories: the directory holding it (root: itself); else NULL
    # Directories: the block of inode ids reserved for their new entries, [alloc_next,
    # alloc_end) (index/store.py `entry_inode_id`: a folder's rows sit together in this
    # table). NULL: no block taken yet. Else NULL (one header byte each).
    Column("alloc_next", Integer),
    Column("alloc_end", Integer),
)
# Inodes with no name left (unlinked while open; deleted at forget, or at the next mount
# after a crash): a partial index, empty in normal use, so the mount's orphan check
# costs nothing however many inodes there are.
ORPHANS_INDEX = Index("inodes_orphans", inodes.c.id, sqlite_where=inodes.c.nlink == 0)

# Clustered by (parent, name): a lookup is one b-tree descent and reads the inode from
# the same row. The readdir index carries the inode too, so listing never touches the table.
dentries = Table(
    "dentries",
    metadata,
    Column("parent", Integer, nullable=False),
    Column("name", LargeBinary, nullable=False),
    Column("id", Integer, nullable=False),  # the readdir cookie; allocated from next_dentry
    Column("inode", Integer, nullable=False),
    PrimaryKeyConstraint("parent", "name"),
    sqlite_with_rowid=False,
)
Index("dentries_readdir", dentries.c.parent, dentries.c.id, dentries.c.inode)

symlinks = Table(
    "symlinks",
    metadata,
    Column("inode", Integer, primary_key=True),
    Column("target", LargeBinary, nullable=False),
)

xattrs = Table(
    "xattrs",
    metadata,
    Column("inode", Integer, nullable=False),
    Column("name", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    PrimaryKeyConstraint("inode", "name"),
    sqlite_with_rowid=False,
)

segments = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True),  # SegmentId.number; never reused (next_segment)
    Column("scope", Integer, nullable=False),  # scopes.id whose keys name the article
    Column("generation", Integer, nullable=False),  # bumped by each re-post after a loss
    Column("state", Integer, nullable=False),
    # Bytes of file data before encoding. NULL = the volume's standard size (meta
    # segment_size): nearly every segment of a big file, and 3 bytes saved on each.
    Column("payload_size", Integer),
    # stored_size - payload_size, where stored_size is the blob under yEnc; NULL until
    # posted. A few dozen bytes of AEAD overhead (1 byte) instead of ~716,837 (3 bytes).
    Column("stored_extra", Integer),
    Column("crc32", Integer),  # CRC32 of the blob as a signed 32-bit int; NULL until posted
    Column("refcount", Integer, nullable=False),  # extent rows covering this segment
    Column("attempts", Integer, nullable=False),  # failed POSTs of this generation
    Column("posted_min", Integer),  # minute (since meta epoch_s) of the last accepted POST; NULL: never
    # Minutes from that POST to the last read-back (verified, or found missing); NULL: not
    # read back since. Usually a few minutes: 1 byte instead of an absolute 3.
    Column("checked_lag_min", Integer),
    CheckConstraint("state BETWEEN 0 AND 4", name="segments_state"),
)
# The upload queue: only rows still needing work are in it (a handful in steady state,
# whatever was in flight after a crash), so it costs nothing at 30M rows.
Index("segments_queue", segments.c.state, sqlite_where=segments.c.state.in_(QUEUE_STATES))

extents = Table(
    "extents",
    metadata,
    Column("inode", Integer, nullable=False),
    Column("offset", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    Column("segment", Integer, nullable=False),
    Column("segment_offset", Integer, nullable=False),
    Column("run", Integer, nullable=False),
    Column("stride", Integer, nullable=False),
    PrimaryKeyConstraint("inode", "offset"),
    sqlite_with_rowid=False,
)

# MIGRATIONS[v] upgrades an index from format v to v + 1. Each step runs in its own
# transaction together with the format_version update, so a crash leaves the index at
# either version, never in between. Steps may use Core DDL/DML on the given Connection.
Migration = Callable[[Connection], None]
MIGRATIONS: dict[int, Migration] = {
    1: lambda conn: ORPHANS_INDEX.create(conn),  # 1 -> 2: the orphans index
    2: lambda conn: _add_alloc_columns(conn),  # 2 -> 3: per-directory inode id blocks
}


def _add_alloc_columns(conn: Connection) -> None:
    # ADD COLUMN rewrites no row: the existing ones read the new columns as NULL, "no
    # block yet", and every directory takes its first block at its next new entry.
    conn.exec_driver_sql("ALTER TABLE inodes ADD COLUMN alloc_next INTEGER")
    conn.exec_driver_sql("ALTER TABLE inodes ADD COLUMN alloc_end INTEGER")
