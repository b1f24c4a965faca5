"""The data layer's domain error: file bytes that cannot be produced right now.

Owns `DataUnavailable`. The fs layer answers it with EIO (`errno`). It is raised instead of
ever returning wrong bytes: a segment that is missing, does not authenticate, or does not
hold the bytes the index says it holds, after the read retries.
"""

from __future__ import annotations

import errno as _errno

from ..errors import UsenetfsError


class DataUnavailable(UsenetfsError):
    """Bytes of inode `ino` live in segment `segment`, which cannot be read (`reason`)."""

    errno = _errno.EIO

    def __init__(self, ino: int | None, segment: int, reason: str):
        where = f"inode {ino}: " if ino is not None else ""
        super().__init__(f"{where}segment {segment} unavailable: {reason}")
        self.ino = ino
        self.segment = segment
        self.reason = reason

    def for_inode(self, ino: int) -> DataUnavailable:
        """The same failure, naming the inode that needed the segment."""
        return DataUnavailable(ino, self.segment, self.reason)


__all__ = ["DataUnavailable"]
