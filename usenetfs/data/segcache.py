"""The read cache: decoded segment payloads in memory, bounded in bytes, fetched once.

Owns `SegmentCache`:
- a main LRU (cachetools, getsizeof=len) of segment payloads keyed by segments.id; ids are
  never reused and articles never change, so an entry can never be stale;
- a small separate LRU for "first" segments (the one holding byte 0 of a file): file
  managers, thumbnailers and `file` read the start of many files again and again, and a
  sequential read of one big file must not push those out;
- single flight: one fetch per segment at a time; concurrent readers of the same segment
  wait on the first reader's `trio.Event` and share its result (or its failure).

The fetching task is the first reader itself (no background task needed). If it is
cancelled (an interrupted read), the waiters wake with neither result nor error and the
next of them fetches in its place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from cachetools import LRUCache

from .errors import DataUnavailable


class _Flight:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: bytes | None = None
        self.error: DataUnavailable | None = None


class SegmentCache:
    def __init__(self, cache_bytes: int, first_bytes: int | None = None) -> None:
        if first_bytes is None:
            first_bytes = min(cache_bytes // 8, 32 << 20)
        first_bytes = min(first_bytes, cache_bytes)
        self.capacity = cache_bytes
        self._main = LRUCache(maxsize=max(cache_bytes - first_bytes, 1), getsizeof=len)
        self._first = LRUCache(maxsize=max(first_bytes, 1), getsizeof=len)
        self._flights: dict[int, _Flight] = {}
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        """Bytes held (both LRUs)."""
        return self._main.currsize + self._first.currsize

    def __contains__(self, seg: int) -> bool:
        return seg in self._first or seg in self._main

    def in_flight(self, seg: int) -> bool:
        return seg in self._flights

    def get(self, seg: int, *, first: bool = False) -> bytes | None:
        data = self._first.get(seg)
        if data is not None:
            return data
        data = self._main.get(seg)
        if data is not None and first:
            self.put(seg, data, first=True)  # promote: it turned out to start a file
        return data

    def hit(self, seg: int, *, first: bool = False) -> bytes | None:
        """`get`, counted as a hit when it finds the payload (a reader that needs no
        fetch: no task, no flight)."""
        data = self.get(seg, first=first)
        if data is not None:
            self.hits += 1
        return data

    def put(self, seg: int, data: bytes, *, first: bool = False) -> None:
        cache = self._first if first else self._main
        if len(data) > cache.maxsize:
            return  # larger than the whole LRU: cachetools would raise
        if first:
            self._main.pop(seg, None)
        elif seg in self._first:
            return
        cache[seg] = data

    def discard(self, seg: int) -> None:
        self._main.pop(seg, None)
        self._first.pop(seg, None)

    def clear(self) -> None:
        self._main.clear()
        self._first.clear()

    async def fetch(
        self,
        seg: int,
        load: Callable[[int], Awaitable[bytes]],
        *,
        first: bool = False,
        keep: bool = True,
    ) -> bytes:
        """The payload of `seg`: from the cache, from a fetch already running, or by
        `await load(seg)` (which raises DataUnavailable on failure). `keep=False` does not
        insert a freshly loaded payload (bulk copies that would only churn the LRU)."""
        while True:
            data = self.hit(seg, first=first)
            if data is not None:
                return data
            flight = self._flights.get(seg)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.result is not None:
                return flight.result
            # The fetching task was cancelled: try again (maybe fetching ourselves).
        self.misses += 1
        flight = self._flights[seg] = _Flight()
        try:
            data = await load(seg)
            flight.result = data
            if keep:
                self.put(seg, data, first=first)
            return data
        except DataUnavailable as e:
            flight.error = e
            raise
        finally:
            del self._flights[seg]
            flight.done.set()


__all__ = ["SegmentCache"]
