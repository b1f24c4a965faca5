"""The share's tree objects: directories, pieces of directories, file maps (docs/shares.md).

Owns the value types (`Ref`, `SegmentInfo`, `Entry`) and the binary format of the three
object kinds, their encoding and strict decoding, and how a directory's entries are cut
into pieces:

    directory  = 1 || count || (digest(32) || generation)*          the pieces, in name order
    piece      = 2 || segment table || count || entry*
    file map   = 3 || segment table || count || extent*
    segment table = count || (id delta || generation || payload size || key(32) || locator(26))*
    entry      = name || inode || mode || uid || gid || size || mtime || ctime || rdev
                 || xattr count || (name || value)*
                 || directory: digest(32) || generation
                 || symlink:   target
                 || file:      extent count || extent* || map count || (digest(32) || generation)*
    extent     = offset || length || segment || segment offset || run || stride

(numbers are varints, times zigzag varints, byte strings length-prefixed; wire.py). A file
that uses more than `INLINE_SEGMENTS` (256) segments keeps its extents in file maps, each with at
most `MAP_SEGMENTS` segments. Pieces end after an entry whose keyed name hash has its low
6 bits zero, or once they pass `PIECE_BYTES`: boundaries depend on the names around them
only, so one new name changes one piece.

Pure: encoding and decoding; hashing with the keys the caller gives.
"""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..index.layout import ExtentRow, check as check_extent
from .wire import Malformed, Reader, Writer

DIRECTORY, PIECE, FILE_MAP = 1, 2, 3
DIGEST_SIZE = 32
KEY_SIZE = 32
LOCATOR_SIZE = 26  # the local part of a Message-ID (keys.VolumeKeys.message_id)
# More segments than this: the file's extents go to file maps. An inline segment costs ~70
# bytes of its piece (key, Message-ID part, ids): 256 keep an entry under ~18 KB, so a piece
# still holds at least ten, and files up to 175 MB need no object of their own.
INLINE_SEGMENTS = 256
MAP_SEGMENTS = 2048  # segments per file map (~140 KB)
PIECE_BYTES = 192 * 1024  # a piece is cut once it passes this (objects stay far below 1 MiB)
BOUNDARY_MASK = 0x3F  # ~64 entries a piece

_MAX_ENTRIES = 1 << 20
_MAX_SEGMENTS = 1 << 20
_MAX_XATTRS = 4096
_LOCATOR = re.compile(rb"[a-z2-7]{26}")


class Ref(NamedTuple):
    """Where an object is: its keyed digest and the Message-ID generation it was verified under."""

    digest: bytes
    generation: int


class SegmentInfo(NamedTuple):
    id: int  # the volume's segments.id (SegmentId.number)
    generation: int
    payload_size: int
    key: bytes  # the segment's own 32-byte key
    locator: str  # local part of its Message-ID for that generation


ExtentTuple = tuple[int, int, int, int, int, int]  # offset, length, segment, segment_offset, run, stride


@dataclass(frozen=True)
class Entry:
    name: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    child: Ref | None = None  # directories: the directory object
    target: bytes | None = None  # symlinks
    extents: tuple[ExtentTuple, ...] = ()  # files: inline extents ...
    maps: tuple[Ref, ...] = ()  # ... or file maps

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass
class Piece:
    entries: list[Entry]
    segments: dict[int, SegmentInfo] = field(default_factory=dict)


@dataclass
class FileMap:
    extents: list[ExtentTuple]
    segments: dict[int, SegmentInfo] = field(default_factory=dict)


def digest(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=DIGEST_SIZE).digest()


# ---------------------------------------------------------------- encoding

def _ref(w: Writer, ref: Ref) -> None:
    if len(ref.digest) != DIGEST_SIZE:
        raise ValueError("a digest is 32 bytes")
    w.raw(ref.digest)
    w.uint(ref.generation)


def _segments(w: Writer, segments: dict[int, SegmentInfo]) -> None:
    w.uint(len(segments))
    previous = 0
    for seg_id in sorted(segments):
        info = segments[seg_id]
        w.uint(seg_id - previous)
        previous = seg_id
        w.uint(info.generation)
        w.uint(info.payload_size)
        if len(info.key) != KEY_SIZE or len(info.locator) != LOCATOR_SIZE:
            raise ValueError("bad segment key or locator")
        w.raw(info.key)
        w.raw(info.locator.encode("ascii"))


def _extents(w: Writer, extents: Iterable[ExtentTuple]) -> None:
    extents = list(extents)
    w.uint(len(extents))
    for offset, length, segment, segment_offset, run, stride in extents:
        for value in (offset, length, segment, segment_offset, run, stride):
            w.uint(value)


def encode_entry(entry: Entry) -> bytes:
    w = Writer()
    w.bytes(entry.name)
    for value in (entry.ino, entry.mode, entry.uid, entry.gid, entry.size):
        w.uint(value)
    w.sint(entry.mtime_ns)
    w.sint(entry.ctime_ns)
    w.uint(entry.rdev)
    w.uint(len(entry.xattrs))
    for name, value in entry.xattrs:
        w.bytes(name)
        w.bytes(value)
    if entry.is_dir:
        if entry.child is None:
            raise ValueError("a directory entry needs its object")
        _ref(w, entry.child)
    elif entry.is_symlink:
        w.bytes(entry.target or b"")
    elif entry.is_reg:
        _extents(w, entry.extents)
        w.uint(len(entry.maps))
        for ref in entry.maps:
            _ref(w, ref)
    return w.getvalue()


def encode_directory(pieces: list[Ref]) -> bytes:
    w = Writer()
    w.uint(DIRECTORY)
    w.uint(len(pieces))
    for ref in pieces:
        _ref(w, ref)
    return w.getvalue()


def encode_piece(encoded_entries: list[bytes], segments: dict[int, SegmentInfo]) -> bytes:
    w = Writer()
    w.uint(PIECE)
    _segments(w, segments)
    w.uint(len(encoded_entries))
    for raw in encoded_entries:
        w.raw(raw)
    return w.getvalue()


def encode_file_map(file_map: FileMap) -> bytes:
    w = Writer()
    w.uint(FILE_MAP)
    _segments(w, file_map.segments)
    _extents(w, file_map.extents)
    return w.getvalue()


def cut_pieces(entries: list[tuple[Entry, bytes, set[int]]], boundary_key: bytes) -> list[list[int]]:
    """Indices of `entries` (sorted by name; each with its encoding and the segment ids
    it uses) grouped into pieces."""
    pieces: list[list[int]] = []
    current: list[int] = []
    size = 0
    seen: set[int] = set()
    for i, (entry, raw, used) in enumerate(entries):
        current.append(i)
        size += len(raw) + 70 * len(used - seen)
        seen |= used
        boundary = hashlib.blake2b(entry.name, key=boundary_key, digest_size=8).digest()[0] & BOUNDARY_MASK == 0
        if boundary or size >= PIECE_BYTES:
            pieces.append(current)
            current, size, seen = [], 0, set()
    if current:
        pieces.append(current)
    return pieces


def split_file_map(extents: list[ExtentTuple], segments: dict[int, SegmentInfo],
                   per_map: int = MAP_SEGMENTS) -> list[FileMap]:
    """A file's extents and segments as file maps of at most `per_map` segments each; an
    extent whose run crosses that limit is cut at a segment boundary (the pieces map the
    same bytes, and the mirror's index merges them back)."""
    maps: list[FileMap] = []
    current = FileMap([])
    count = 0

    def flush() -> None:
        nonlocal current, count
        if current.extents:
            maps.append(current)
        current, count = FileMap([]), 0

    for offset, length, segment, segment_offset, run, stride in extents:
        row = ExtentRow(0, offset, length, segment, segment_offset, run, stride)
        while True:
            room = per_map - count
            if room <= 0:
                flush()
                continue
            if row.run <= room:
                part, rest = row, None
            else:
                cut = row.offset + room * row.stride - row.segment_offset
                part, rest = row.piece(row.offset, cut), row.piece(cut, row.end)
            current.extents.append(tuple(part[1:]))
            for seg_id in range(part.segment, part.last_segment + 1):
                current.segments[seg_id] = segments[seg_id]
            count += part.run
            if rest is None:
                break
            row = rest
    flush()
    return maps


# ---------------------------------------------------------------- decoding

def object_kind(data: bytes) -> int:
    if not data:
        raise Malformed("empty object")
    return data[0]


def _read_ref(r: Reader) -> Ref:
    return Ref(r.raw(DIGEST_SIZE), _generation(r.uint()))


def _generation(value: int) -> int:
    if value >= 1 << 32:
        raise Malformed("generation out of range")
    return value


def _read_segments(r: Reader) -> dict[int, SegmentInfo]:
    n = r.count(_MAX_SEGMENTS)
    segments: dict[int, SegmentInfo] = {}
    seg_id = 0
    for i in range(n):
        delta = r.uint()
        if i and not delta:
            raise Malformed("segment ids not ascending")
        seg_id += delta
        if not 1 <= seg_id < 1 << 63:
            raise Malformed("segment id out of range")
        generation = _generation(r.uint())
        payload_size = r.uint()
        if not 0 < payload_size <= 1 << 24:
            raise Malformed("segment payload size out of range")
        key = r.raw(KEY_SIZE)
        locator = r.raw(LOCATOR_SIZE)
        if not _LOCATOR.fullmatch(locator):
            raise Malformed("bad Message-ID locator")
        segments[seg_id] = SegmentInfo(seg_id, generation, payload_size, key, locator.decode("ascii"))
    return segments


def _read_extents(r: Reader) -> list[ExtentTuple]:
    extents = []
    for _ in range(r.count(_MAX_SEGMENTS)):
        values = tuple(r.uint() for _ in range(6))
        try:
            check_extent(ExtentRow(0, *values))
        except ValueError as error:
            raise Malformed(f"bad extent: {error}") from None
        extents.append(values)
    return extents


def _read_entry(r: Reader) -> Entry:
    name = r.bytes(4096)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise Malformed(f"bad name {name[:40]!r}")
    ino, mode, uid, gid, size = (r.uint() for _ in range(5))
    if not 1 <= ino < 1 << 63 or mode >= 1 << 32 or uid >= 1 << 32 or gid >= 1 << 32 or size >= 1 << 62:
        raise Malformed("inode field out of range")
    mtime, ctime = r.sint(), r.sint()
    rdev = r.uint()
    if rdev >= 1 << 63 or not -(1 << 62) < mtime < 1 << 62 or not -(1 << 62) < ctime < 1 << 62:
        raise Malformed("inode field out of range")
    xattrs = tuple((r.bytes(255), r.bytes(65536)) for _ in range(r.count(_MAX_XATTRS)))
    common = dict(name=name, ino=ino, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime,
                  ctime_ns=ctime, rdev=rdev, xattrs=xattrs)
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFDIR:
        return Entry(**common, child=_read_ref(r))
    if kind == stat.S_IFLNK:
        return Entry(**common, target=r.bytes(4096))
    if kind == stat.S_IFREG:
        extents = tuple(_read_extents(r))
        maps = tuple(_read_ref(r) for _ in range(r.count(_MAX_SEGMENTS)))
        if extents and maps:
            raise Malformed("a file with both inline extents and file maps")
        return Entry(**common, extents=extents, maps=maps)
    if kind in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        return Entry(**common)
    raise Malformed(f"unknown file type {kind:#o}")


def decode_directory(data: bytes) -> list[Ref]:
    r = Reader(data)
    if r.uint() != DIRECTORY:
        raise Malformed("not a directory object")
    pieces = [_read_ref(r) for _ in range(r.count(_MAX_ENTRIES))]
    r.done()
    return pieces


def decode_piece(data: bytes) -> Piece:
    r = Reader(data)
    if r.uint() != PIECE:
        raise Malformed("not a directory piece")
    segments = _read_segments(r)
    entries = [_read_entry(r) for _ in range(r.count(_MAX_ENTRIES))]
    r.done()
    previous = b""
    for entry in entries:
        if entry.name <= previous:
            raise Malformed("entries not in name order")
        previous = entry.name
        for extent in entry.extents:
            if any(s not in segments for s in range(extent[2], extent[2] + extent[4])):
                raise Malformed(f"entry {entry.name[:40]!r} uses a segment the piece does not describe")
    return Piece(entries, segments)


def decode_file_map(data: bytes) -> FileMap:
    r = Reader(data)
    if r.uint() != FILE_MAP:
        raise Malformed("not a file map")
    segments = _read_segments(r)
    extents = _read_extents(r)
    r.done()
    for extent in extents:
        if any(s not in segments for s in range(extent[2], extent[2] + extent[4])):
            raise Malformed("a file map extent uses a segment it does not describe")
    return FileMap(extents, segments)
