"""Reading clean files from their segments: extent maps, fetch with retries, read-ahead.

Owns
- the per-inode cache of extent maps (`Index.extents`, one query per file until its
  extents change: the uploader's commit and truncate invalidate it);
- `load`: one segment from the on-disk cache if there is one and it holds the segment,
  else from the store, retried a few times with backoff (a fresh article may answer 430
  for a moment; a connection may die), then `DataUnavailable`; what the store returns
  goes to the on-disk cache in the background;
- `read`: locate the pieces of [offset, offset + length) (layout.locate), fetch the needed
  segments in parallel through the SegmentCache (single flight), slice, zero-fill holes;
- `copy_to`: the whole file into a descriptor (materialisation before the first write);
- read-ahead for sequential readers: a per-inode window that doubles on every sequential
  read up to `readahead_bytes`, with all prefetches together bounded by that many bytes;
- the health record: segments that failed for an inode (cleared when one reads again),
  logged once per (inode, segment).

Never wrong bytes: the codec authenticates every payload; a piece that does not fit
inside its segment's payload (an index that disagrees with the article) is an error too.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import trio
from cachetools import LRUCache

from ..index import Index, NotFound
from ..index.layout import ExtentRow, Piece, locate
from ..index.rows import SegmentRow
from ..index.schema import DEAD, MISSING
from ..nntp.errors import NNTPError
from ..store.base import SegmentStore, SegmentUnavailable
from .diskcache import DiskCache
from .errors import DataUnavailable
from .segcache import SegmentCache

log = logging.getLogger("usenetfs.data")

_MIN_WINDOW = 256 * 1024


EXTENT_CACHE_ROWS = 1 << 18  # extent rows cached (~26 MB), in at most 4,096 files
_MIN_EXTENT_COST = EXTENT_CACHE_ROWS // 4096


def _extent_cost(rows: list) -> int:
    return max(_MIN_EXTENT_COST, len(rows))


class Reader:
    def __init__(
        self,
        index: Index,
        store: SegmentStore,
        cache: SegmentCache,
        *,
        readahead_bytes: int,
        read_retries: int = 3,
        retry_delay: float = 0.5,
        fetch_concurrency: int = 4,
        disk: DiskCache | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.cache = cache
        self.disk = disk  # the optional on-disk cache, below the LRU (None: off)
        self.readahead_bytes = readahead_bytes
        self.read_retries = max(1, read_retries)
        self.retry_delay = retry_delay
        self.fetch_concurrency = fetch_concurrency
        self.nursery: trio.Nursery | None = None  # FileData.run() sets it: read-ahead needs it
        # ino -> list[ExtentRow], bounded in files and in rows (~100 bytes each): a
        # fragmented file may have thousands of rows
        self._extents: LRUCache = LRUCache(maxsize=EXTENT_CACHE_ROWS, getsizeof=_extent_cost)
        # ino -> (expected next offset, read-ahead window, file offset from which the
        # stream's segments are still in the LRU)
        self._seq: LRUCache = LRUCache(maxsize=4096)
        self._ra_bytes = 0  # payload bytes of prefetches in flight
        # segment -> its row, as a read-ahead looked it up and found the budget spent: the
        # stream's next reads ask for the same segment until a prefetch ends (without this,
        # an index query on the trio thread each time)
        self._ra_rows: LRUCache = LRUCache(maxsize=256)
        # segments whose prefetch task is started but may not have run yet (the cache knows
        # a fetch only once it has): without this a read in between started another one
        self._ra_started: set[int] = set()
        self.bad: dict[int, dict[int, str]] = {}  # ino -> {segment: reason}

    # ------------------------------------------------------------------ extent maps

    def extents(self, ino: int) -> list[ExtentRow]:
        rows = self._extents.get(ino)
        if rows is None:
            rows = self.index.extents(ino)
            if _extent_cost(rows) <= EXTENT_CACHE_ROWS:  # a bigger map is read again each time
                self._extents[ino] = rows
        return rows

    def invalidate(self, ino: int) -> None:
        self._extents.pop(ino, None)

    def replaced(self, ino: int) -> None:
        """An upload gave `ino` a new extent map (fresh, verified segments)."""
        self._extents.pop(ino, None)
        self.bad.pop(ino, None)

    def repaired(self, seg: int) -> None:
        """Segment `seg` was posted again (verify --repair): reads of it will work now."""
        self._ra_rows.pop(seg, None)  # its generation changed
        for ino in [ino for ino, record in self.bad.items() if seg in record]:
            del self.bad[ino][seg]
            if not self.bad[ino]:
                del self.bad[ino]

    def forget(self, ino: int) -> None:
        self._extents.pop(ino, None)
        self._seq.pop(ino, None)
        self.bad.pop(ino, None)

    # ------------------------------------------------------------------ segments

    async def load(self, seg: int, row: SegmentRow | None = None) -> bytes:
        """Segment `seg` from the disk cache, else from the store (with retries, and then
        kept on disk); DataUnavailable (no inode) if neither has it. `row`: its index row,
        if the caller has just looked it up."""
        try:
            if row is None:
                row = self.index.segment(seg)
            scope = self.index.scope_bytes(row.scope)
        except NotFound as e:
            raise DataUnavailable(None, seg, f"not in the index ({e})") from None
        if self.disk is not None:
            data = await self.disk.get(seg)
            if data is not None:
                return data
        delay = self.retry_delay
        reason = "no attempt"
        for attempt in range(1, self.read_retries + 1):
            try:
                data = await self.store.get(row, scope)
                if self.disk is not None and self.nursery is not None:
                    self.disk.put_soon(self.nursery, seg, data)
                return data
            except SegmentUnavailable as e:
                reason = e.reason
            except (NNTPError, OSError) as e:
                reason = f"{type(e).__name__}: {e}"
            if attempt < self.read_retries:
                log.debug("segment %d: %s; retry %d in %.1f s", seg, reason, attempt, delay)
                await trio.sleep(delay)
                delay *= 2
        raise DataUnavailable(None, seg, reason)

    async def segment(self, seg: int, *, ino: int | None, first: bool = False, keep: bool = True,
                      row: SegmentRow | None = None) -> bytes:
        loader = self.load if row is None else partial(self.load, row=row)
        try:
            data = await self.cache.fetch(seg, loader, first=first, keep=keep)
        except DataUnavailable as e:
            if ino is None:
                raise
            record = self.bad.setdefault(ino, {})
            if seg not in record:
                log.error("inode %d: segment %d unavailable: %s", ino, seg, e.reason)
            record[seg] = e.reason
            raise e.for_inode(ino) from None
        self._succeeded(ino, seg)
        return data

    def _succeeded(self, ino: int | None, seg: int) -> None:
        if ino is not None and ino in self.bad:
            record = self.bad[ino]
            record.pop(seg, None)
            if not record:
                del self.bad[ino]

    def _slice(self, ino: int, piece: Piece, data: bytes) -> bytes | memoryview:
        """The piece's bytes of its segment's payload: a view (no copy: the caller
        copies once, into the reply), or the payload itself when it is all of it."""
        end = piece.segment_offset + piece.length
        if end > len(data):
            reason = f"holds {len(data)} bytes, the index expects at least {end}"
            record = self.bad.setdefault(ino, {})
            if piece.segment not in record:
                log.error("inode %d: segment %d %s", ino, piece.segment, reason)
            record[piece.segment] = reason
            raise DataUnavailable(ino, piece.segment, reason)
        if piece.segment_offset == 0 and end == len(data):
            return data
        return memoryview(data)[piece.segment_offset : end]

    async def _fetch_all(self, ino: int, segs: list[int], first: int | None, keep: bool = True) -> dict[int, bytes]:
        """Payloads of `segs`, fetched in parallel (bounded); the first failure is raised
        once every fetch has finished (no half-cancelled single flights)."""
        out: dict[int, bytes] = {}
        missing = []
        for seg in segs:  # what the cache has needs no task (read-ahead makes that the rule)
            data = self.cache.hit(seg, first=seg == first)
            if data is None:
                missing.append(seg)
            else:
                out[seg] = data
                self._succeeded(ino, seg)
        segs = missing
        if not segs:
            return out
        if len(segs) == 1:
            seg = segs[0]
            out[seg] = await self.segment(seg, ino=ino, first=seg == first, keep=keep)
            return out
        errors: list[DataUnavailable] = []
        limit = trio.Semaphore(self.fetch_concurrency)

        async def one(seg: int) -> None:
            async with limit:
                try:
                    out[seg] = await self.segment(seg, ino=ino, first=seg == first, keep=keep)
                except DataUnavailable as e:
                    errors.append(e)

        async with trio.open_nursery() as nursery:
            for seg in segs:
                nursery.start_soon(one, seg)
        if errors:
            raise errors[0]
        return out

    # ------------------------------------------------------------------ reads

    async def read(self, ino: int, offset: int, length: int, size: int) -> bytes:
        end = min(offset + length, size)
        if offset >= end:
            return b""
        rows = self.extents(ino)
        pieces = locate(rows, offset, end)
        segs = list(dict.fromkeys(p.segment for p in pieces if p.segment is not None))
        first = pieces[0].segment if offset == 0 else None
        data = await self._fetch_all(ino, segs, first) if segs else {}
        parts = [bytes(p.length) if p.segment is None else self._slice(ino, p, data[p.segment]) for p in pieces]
        self._read_ahead(ino, rows, offset, end, size)
        if len(parts) == 1:
            return parts[0] if isinstance(parts[0], bytes) else parts[0].tobytes()
        return b"".join(parts)  # one copy of a 1 MiB read spanning two segments, not two

    async def copy_to(self, ino: int, fd: int, size: int) -> None:
        """Write the file's bytes [0, size) that live in segments into `fd` (holes are
        left alone: the caller made `fd` a sparse file of that size). One segment at a
        time per worker, a few in parallel; payloads do not churn the LRU."""
        rows = self.extents(ino)
        by_seg: dict[int, list[Piece]] = {}
        for p in locate(rows, 0, size):
            if p.segment is not None:
                by_seg.setdefault(p.segment, []).append(p)
        if not by_seg:
            return
        errors: list[DataUnavailable] = []
        limit = trio.Semaphore(self.fetch_concurrency)

        async def one(seg: int, pieces: list[Piece]) -> None:
            async with limit:
                try:
                    data = await self.segment(seg, ino=ino, keep=False)
                    for p in pieces:
                        os.pwrite(fd, self._slice(ino, p, data), p.file_offset)
                except DataUnavailable as e:
                    errors.append(e)

        async with trio.open_nursery() as nursery:
            for seg, pieces in by_seg.items():
                nursery.start_soon(one, seg, pieces)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ read-ahead

    def _read_ahead(self, ino: int, rows: list[ExtentRow], offset: int, end: int, size: int) -> None:
        if self.readahead_bytes <= 0 or self.nursery is None:
            return
        expected, window, kept_from = self._seq.get(ino, (0, 0, 0))
        # The kernel keeps two reads of one sequential stream in flight, and they finish
        # in either order: a read up to two of its lengths from where the stream got to
        # is still sequential (an exact match reset the window on a third of all reads).
        slack = 2 * (end - offset)
        if not expected - slack <= offset <= expected + slack:
            self._seq[ino] = (end, 0, offset)  # random access: no read-ahead, start over
            return
        front = max(expected, end)
        window = min(self.readahead_bytes, max(window * 2, 2 * (end - offset), _MIN_WINDOW))
        kept_from = self._drop_behind(rows, kept_from, offset - slack)
        self._seq[ino] = (front, window, kept_from)
        ra_end = min(front + window, size)
        if ra_end <= front:
            return
        for seg in dict.fromkeys(p.segment for p in locate(rows, front, ra_end) if p.segment is not None):
            if seg in self.cache or self.cache.in_flight(seg) or seg in self._ra_started:
                continue
            row = self._ra_rows.pop(seg, None)
            if row is None:
                try:
                    row = self.index.segment(seg)
                except NotFound:
                    return
            if self._ra_bytes + row.payload_size > self.readahead_bytes:
                self._ra_rows[seg] = row
                return  # the budget is spent: later reads will prefetch further
            self._ra_bytes += row.payload_size
            self._ra_started.add(seg)
            self.nursery.start_soon(self._prefetch, row)

    def _drop_behind(self, rows: list[ExtentRow], kept_from: int, behind: int) -> int:
        """Scan resistance: take the segments a sequential reader has gone past (all of
        whose bytes in [kept_from, behind) of the file) out of the LRU; returns the new
        `kept_from`. The kernel holds what was read in its page cache (keep_cache), so
        the LRU would only hold a second copy, push out the segments random readers need,
        and have every cold stream fill it with fresh memory. The segment holding byte 0
        stays (file managers read file heads again and again); so does the one `behind`
        falls in, which the other read in flight may still need."""
        if behind <= kept_from:
            return kept_from
        head = rows[0].segment if rows and rows[0].offset == 0 else None
        pieces = [p for p in locate(rows, kept_from, behind) if p.segment is not None]
        for p in pieces[:-1]:
            if p.segment != head:
                self.cache.discard(p.segment)
        return pieces[-1].file_offset if pieces else behind

    async def _prefetch(self, row: SegmentRow) -> None:
        try:
            await self.segment(row.id, ino=None, row=row)  # the row just looked up: no query
        except DataUnavailable:
            pass  # the read that needs it will fail (and report) on its own
        finally:
            self._ra_bytes -= row.payload_size
            self._ra_started.discard(row.id)

    # ------------------------------------------------------------------ health

    def health(self, ino: int) -> list[str]:
        """What is known to be wrong with the segments of `ino`: failed reads, and
        segments the index marks missing or dead. Queries every segment of the file
        (~6 µs each): for the control command, not for a hot path."""
        referenced: dict[int, None] = {}
        for row in self.index.extents(ino):
            referenced.update(dict.fromkeys(range(row.segment, row.last_segment + 1)))
        bad = self.bad.get(ino, {})
        for seg in [s for s in bad if s not in referenced]:
            del bad[seg]  # no longer part of the file (truncated, rewritten)
        if not bad:
            self.bad.pop(ino, None)
        problems = [f"segment {seg}: {reason}" for seg, reason in sorted(bad.items())]
        for seg in referenced:
            if seg not in bad:
                try:
                    state = self.index.segment(seg).state
                except NotFound:
                    problems.append(f"segment {seg}: not in the index")
                    continue
                if state == MISSING:
                    problems.append(f"segment {seg}: missing (to be re-posted)")
                elif state == DEAD:
                    problems.append(f"segment {seg}: dead but referenced (run fsck)")
        return problems


__all__ = ["Reader"]
