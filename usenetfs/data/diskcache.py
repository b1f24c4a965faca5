"""The optional on-disk segment cache: decoded segment payloads kept in local files, bounded
in bytes, so a file read again after the kernel and the in-memory LRU dropped it (or after
a remount) does not come from the server again.

Owns `DiskCache`:
- one file per segment, `<directory>/<segment id>`, written whole to a temporary name and
  renamed into place (a crash leaves no half file under a segment's name); content is a
  small header (magic, CRC32 of the payload) and the payload. A file that fails the check
  (a torn write, a bad disk) is removed and reported as a miss: the segment is fetched from
  the server again, never served wrong;
- the LRU order, in memory (an OrderedDict of id -> bytes on disk), rebuilt at start from
  the files' modification times (a hit refreshes its file's time, in the same worker
  thread as the read), and the byte bound: an insertion evicts the oldest files first.

Segment ids are never reused and articles never change, so an entry can never be stale;
the cache directory may be deleted at any time (`usenetfs cache clear` does).

Concurrency: the LRU dict and the byte count belong to the trio thread; every file
operation runs in a worker thread, bounded by a CapacityLimiter. A read racing with the
eviction of the same file sees it gone (a miss). Writes are fire-and-forget from the
reader's point of view, and the payload bytes waiting to be written are bounded
(`PENDING_BYTES`): past that, a payload is simply not cached.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import trio

log = logging.getLogger("usenetfs.data")

_MAGIC = b"UFC1"
# magic, CRC32 of the payload (zlib: ~0.1 ms for a segment, in the worker thread without
# the GIL; it catches a file a power cut left with zeros or cut short, as it was not fsynced)
_HEADER = struct.Struct(">4sI")
PENDING_BYTES = 64 << 20  # payloads waiting for their write, at most
_THREADS = 2  # file operations at once


def _write_entry(directory: Path, seg: int, payload) -> int:
    """(Worker thread.) Write `payload` as segment `seg`'s file; its size on disk."""
    path = directory / str(seg)
    tmp = directory / f"{seg}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(_MAGIC, zlib.crc32(payload)))
            f.write(payload)
        _touch(tmp)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave nothing half-written behind
        raise
    return _HEADER.size + len(payload)


def _touch(path: Path) -> None:
    # The time from the clock itself: the kernel's file times tick in milliseconds, too
    # coarse to keep the order of entries written or read in a burst.
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _read_entry(directory: Path, seg: int) -> bytes | None:
    """(Worker thread.) Segment `seg`'s payload, or None if the file is missing or fails
    its check (then it is removed). A hit refreshes the file's time (the LRU order a
    restart rebuilds)."""
    path = directory / str(seg)
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
            payload = f.read()
    except FileNotFoundError:
        return None
    if len(header) == _HEADER.size:
        magic, crc = _HEADER.unpack(header)
        if magic == _MAGIC and zlib.crc32(payload) == crc:
            try:
                _touch(path)
            except FileNotFoundError:
                pass  # evicted meanwhile: the bytes read are still right
            return payload
    log.warning("disk cache: %s is damaged; fetching the segment again", path)
    path.unlink(missing_ok=True)
    return None


def _scan(directory: Path) -> list[tuple[float, int, int]]:
    """(Worker thread.) (mtime, segment, size) of every entry, oldest first; leftover
    temporary files (a crash mid-write) and strangers are removed."""
    found = []
    for entry in os.scandir(directory):
        if entry.name.isdigit():
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append((st.st_mtime_ns, int(entry.name), st.st_size))
        else:
            try:
                os.unlink(entry.path)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
    found.sort()
    return found


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class DiskCache:
    def __init__(self, directory: str | os.PathLike[str], capacity: int) -> None:
        self.directory = Path(directory)
        self.capacity = capacity
        # segment -> (bytes on disk, serial), LRU first; the serial tells a get that finds
        # the file gone whether the entry it looked up is still the one in the dict
        self._entries: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._serial = 0
        self.size = 0
        self._pending = 0  # payload bytes waiting for their write
        self._writing: set[int] = set()
        self._limiter = trio.CapacityLimiter(_THREADS)
        self.hits = 0
        self.misses = 0

    async def open(self) -> None:
        """Create the directory, or find what an earlier mount left in it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _, seg, size in await trio.to_thread.run_sync(_scan, self.directory, limiter=self._limiter):
            self._add(seg, size)
        await self._evict()

    def _add(self, seg: int, size: int) -> None:
        self._serial += 1
        self._entries[seg] = (size, self._serial)
        self.size += size

    def __contains__(self, seg: int) -> bool:
        return seg in self._entries

    @property
    def writing(self) -> int:
        """Entries being written now."""
        return len(self._writing)

    async def get(self, seg: int) -> bytes | None:
        """The payload of `seg` if the disk holds it (checked), else None."""
        entry = self._entries.get(seg)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(seg)
        try:
            data = await trio.to_thread.run_sync(_read_entry, self.directory, seg, limiter=self._limiter)
        except OSError as error:
            log.warning("disk cache: cannot read segment %d: %s", seg, error)
            data = None
        if data is None:
            if self._entries.get(seg) is entry:  # not evicted and written again meanwhile
                self._forget(seg)
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put_soon(self, nursery: trio.Nursery, seg: int, payload) -> None:
        """Keep `payload` as `seg`'s entry, written in the background (`nursery`); skipped
        when already there, larger than the cache, or too much is waiting to be written."""
        size = _HEADER.size + len(payload)
        if (seg in self._entries or seg in self._writing or size > self.capacity
                or self._pending + len(payload) > PENDING_BYTES):
            return
        self._writing.add(seg)
        self._pending += len(payload)
        nursery.start_soon(self._put, seg, payload)

    async def _put(self, seg: int, payload) -> None:
        try:
            size = await trio.to_thread.run_sync(_write_entry, self.directory, seg, payload, limiter=self._limiter)
        except OSError as error:  # a full or failing disk: the cache is only a cache
            log.warning("disk cache: cannot write segment %d: %s", seg, error)
            return
        finally:
            self._writing.discard(seg)
            self._pending -= len(payload)
        self._add(seg, size)
        await self._evict()

    def _forget(self, seg: int) -> None:
        entry = self._entries.pop(seg, None)
        if entry is not None:
            self.size -= entry[0]

    async def _evict(self) -> None:
        victims = []
        while self.size > self.capacity and self._entries:
            seg, (size, _) = self._entries.popitem(last=False)
            self.size -= size
            victims.append(self.directory / str(seg))
        if victims:
            await trio.to_thread.run_sync(_unlink, victims, limiter=self._limiter)


__all__ = ["DiskCache", "PENDING_BYTES"]
