"""The segment index: which segments hold which bytes of which file, and the namespace.

One SQLite database per volume, through SQLAlchemy Core (never the ORM), WAL mode.
Modules (docs/index.md describes every table, column, sentinel and state):

    schema.py  tables, indexes, segment states, format version and migrations
    engine.py  Engine creation and per-connection PRAGMAs
    store.py   `Index`: every query and transaction (synchronous, on the trio thread)
    layout.py  extent arithmetic (pure): locate bytes, cut, merge, refcount deltas
    rows.py    the named tuples handed out
    fsck.py    offline check and repair
    snapshot.py  page-for-page copies of the live file (backups) and their integrity check
    errors.py  domain errors carrying their errno
"""

from .errors import (
    BatchAborted,
    Exists,
    FormatError,
    IndexError_,
    InvalidMove,
    IsADirectory,
    NoSuchAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from .layout import ExtentRow, Piece, extent, locate
from .rows import IndexStats, InodeRow, ScopeRow, SegmentRow
from .schema import DEAD, FORMAT_VERSION, MISSING, PENDING, POSTED, ROOT_INODE, VERIFIED, VOLUME_SCOPE
from .store import Index

__all__ = [
    "BatchAborted",
    "DEAD",
    "Exists",
    "ExtentRow",
    "FORMAT_VERSION",
    "FormatError",
    "Index",
    "IndexError_",
    "IndexStats",
    "InodeRow",
    "InvalidMove",
    "IsADirectory",
    "MISSING",
    "NoSuchAttribute",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "NotPermitted",
    "PENDING",
    "POSTED",
    "Piece",
    "ROOT_INODE",
    "ScopeRow",
    "SegmentRow",
    "VERIFIED",
    "VOLUME_SCOPE",
    "extent",
    "locate",
]
