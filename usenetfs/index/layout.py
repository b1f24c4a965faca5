"""Extent arithmetic: pure functions, no SQL. The store and fsck build on these.

Owns `ExtentRow` (one row of the `extents` table), `Piece` (a located byte range), and the
math that maps file bytes to segment bytes, cuts and merges extents, and nets refcount
changes over segment-id ranges.

The model. An extent maps file bytes [offset, offset + length) onto a *run* of `run`
consecutive segments `segment, segment + 1, ...`, each holding `stride` bytes of this file.
Think of the run as one virtual byte string (segment k holding virtual bytes
[k * stride, (k + 1) * stride)); file byte p sits at virtual byte

    v = segment_offset + (p - offset)  ->  segment + v // stride, at v % stride inside it.

A big file written sequentially is one row (run = n, segment_offset = 0, stride = the
segment payload size); small files packed into one segment are run = 1 rows whose stride is
that segment's payload size. Cutting a row anywhere keeps this mapping, and two rows that
are contiguous in both the file and the virtual string merge back into one.

Invariants of a normal row: length > 0, 0 <= segment_offset < stride,
run == ceil((segment_offset + length) / stride), segment >= 1.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import NamedTuple


class ExtentRow(NamedTuple):
    inode: int
    offset: int  # first file byte covered
    length: int  # bytes covered (> 0)
    segment: int  # id of the first segment of the run (segments.id)
    segment_offset: int  # where the file's bytes start inside that first segment
    run: int  # number of consecutive segments the row touches
    stride: int  # bytes of this file per segment of the run

    @property
    def end(self) -> int:
        """One past the last file byte covered."""
        return self.offset + self.length

    @property
    def last_segment(self) -> int:
        return self.segment + self.run - 1

    def piece(self, start: int, end: int) -> ExtentRow:
        """This row restricted to file bytes [start, end) (which must lie inside it)."""
        if not self.offset <= start < end <= self.end:
            raise ValueError(f"[{start}, {end}) is not inside {self}")
        v = self.segment_offset + (start - self.offset)
        segment_offset = v % self.stride
        length = end - start
        return ExtentRow(
            self.inode,
            start,
            length,
            self.segment + v // self.stride,
            segment_offset,
            _run(segment_offset, length, self.stride),
            self.stride,
        )

    def locate(self, start: int, end: int) -> list[Piece]:
        """The segment pieces holding file bytes [start, end) ∩ this row, in file order."""
        start = max(start, self.offset)
        end = min(end, self.end)
        pieces = []
        stride = self.stride
        v = self.segment_offset + (start - self.offset)
        while start < end:
            k, inner = divmod(v, stride)
            n = min(stride - inner, end - start)
            pieces.append(Piece(start, n, self.segment + k, inner))
            start += n
            v += n
        return pieces


class Piece(NamedTuple):
    """File bytes [file_offset, file_offset + length) live in `segment` at
    `segment_offset`; segment None means a hole (read as zeros)."""

    file_offset: int
    length: int
    segment: int | None
    segment_offset: int


def _run(segment_offset: int, length: int, stride: int) -> int:
    return -(-(segment_offset + length) // stride)


def extent(
    offset: int,
    length: int,
    segment: int,
    segment_offset: int = 0,
    stride: int | None = None,
    *,
    inode: int = 0,
) -> ExtentRow:
    """Build a normal row. `stride` defaults to segment_offset + length (a piece inside one
    segment); pass the segment payload size when later pieces may continue it, so they merge."""
    if stride is None:
        stride = segment_offset + length
    if stride <= 0:
        raise ValueError("stride must be positive")
    # Normalise a segment_offset past the first segment (callers may express a run
    # starting in the middle of a segment range as (first id, virtual offset)).
    segment += segment_offset // stride
    segment_offset %= stride
    row = ExtentRow(inode, offset, length, segment, segment_offset, _run(segment_offset, length, stride), stride)
    check(row)
    return row


def check(row: ExtentRow) -> None:
    """Raise ValueError unless `row` is a normal row."""
    if row.offset < 0 or row.length <= 0:
        raise ValueError(f"extent must cover at least one byte at a non-negative offset: {row}")
    if row.segment < 1:
        raise ValueError(f"segment ids start at 1: {row}")
    if row.stride <= 0 or not 0 <= row.segment_offset < row.stride:
        raise ValueError(f"need 0 <= segment_offset < stride: {row}")
    if row.run != _run(row.segment_offset, row.length, row.stride):
        raise ValueError(f"run does not match segment_offset, length and stride: {row}")


def normalised(row: ExtentRow) -> ExtentRow:
    """The same mapping written as a normal row (fsck repair)."""
    return extent(row.offset, row.length, row.segment, row.segment_offset, row.stride, inode=row.inode)


def contiguous(a: ExtentRow, b: ExtentRow) -> bool:
    """True if b continues a both in the file and in the same virtual run string."""
    return (
        a.end == b.offset
        and a.stride == b.stride
        and a.segment * a.stride + a.segment_offset + a.length == b.segment * b.stride + b.segment_offset
    )


def merged(a: ExtentRow, b: ExtentRow) -> ExtentRow:
    length = a.length + b.length
    return a._replace(length=length, run=_run(a.segment_offset, length, a.stride))


def splice(old: Sequence[ExtentRow], new: ExtentRow) -> list[ExtentRow]:
    """The rows replacing `old` once `new` is written over them.

    `old` must be sorted by offset and hold every row that overlaps or touches
    [new.offset, new.end] (touching rows are merge candidates). Old bytes outside the new
    range survive as cut pieces; contiguous neighbours merge with the new row.
    """
    left: list[ExtentRow] = []
    right: list[ExtentRow] = []
    for row in old:
        if row.offset < new.offset:
            left.append(row.piece(row.offset, min(row.end, new.offset)))
        if row.end > new.end:
            right.append(row.piece(max(row.offset, new.end), row.end))
    middle = new
    if left and contiguous(left[-1], middle):
        middle = merged(left.pop(), middle)
    if right and contiguous(middle, right[0]):
        middle = merged(middle, right.pop(0))
    return [*left, middle, *right]


def punched(rows: Iterable[ExtentRow], start: int, end: int) -> list[ExtentRow]:
    """`rows` with the bytes in [start, end) unmapped (a hole)."""
    out = []
    for row in rows:
        if row.end <= start or row.offset >= end:
            out.append(row)
            continue
        if row.offset < start:
            out.append(row.piece(row.offset, start))
        if row.end > end:
            out.append(row.piece(end, row.end))
    return out


def coalesced(rows: Iterable[ExtentRow]) -> list[ExtentRow]:
    """Sorted, non-overlapping `rows` with contiguous neighbours merged (ValueError on
    overlap): the canonical form of a whole extent map."""
    out: list[ExtentRow] = []
    for row in sorted(rows, key=_offset):
        if out and out[-1].end > row.offset:
            raise ValueError(f"extents overlap: {out[-1]} and {row}")
        if out and contiguous(out[-1], row):
            out[-1] = merged(out[-1], row)
        else:
            out.append(row)
    return out


def truncated(rows: Iterable[ExtentRow], size: int) -> list[ExtentRow]:
    """`rows` with every byte at or beyond `size` dropped."""
    out = []
    for row in rows:
        if row.end <= size:
            out.append(row)
        elif row.offset < size:
            out.append(row.piece(row.offset, size))
    return out


def locate(rows: Sequence[ExtentRow], start: int, end: int) -> list[Piece]:
    """Pieces (holes included, segment None) covering file bytes [start, end).

    `rows` is a file's extent map sorted by offset (what `Index.extents` returns); the
    caller clips `end` to the file size. Binary search, then arithmetic: no SQL.
    """
    pieces: list[Piece] = []
    i = max(bisect_right(rows, start, key=_offset) - 1, 0)
    pos = start
    while pos < end:
        row = rows[i] if i < len(rows) else None
        if row is None or row.offset >= end:
            pieces.append(Piece(pos, end - pos, None, 0))
            break
        if row.end <= pos:
            i += 1
            continue
        if row.offset > pos:
            pieces.append(Piece(pos, row.offset - pos, None, 0))
            pos = row.offset
        got = row.locate(pos, end)
        pieces.extend(got)
        pos = got[-1].file_offset + got[-1].length
        i += 1
    return pieces


def _offset(row: ExtentRow) -> int:
    return row.offset


def net_deltas(changes: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sum refcount changes (lo, hi, delta) over inclusive segment-id ranges into
    disjoint ranges with a non-zero net delta, sorted by id. A splice that cuts one run
    into two pieces nets out to a change on the freed middle only."""
    events: dict[int, int] = {}
    for lo, hi, delta in changes:
        if delta:
            events[lo] = events.get(lo, 0) + delta
            events[hi + 1] = events.get(hi + 1, 0) - delta
    out: list[tuple[int, int, int]] = []
    level = 0
    points = sorted(events)
    for here, nxt in zip(points, points[1:]):
        level += events[here]
        if level:
            if out and out[-1][2] == level and out[-1][1] == here - 1:
                out[-1] = (out[-1][0], nxt - 1, level)
            else:
                out.append((here, nxt - 1, level))
    return out
