"""Copying local files into staging files (`usenetfs sync`): the worker-thread side.

Owns
- `copy_into(source, target, digest=...)`: a local regular file's current content into a
  new file `target` (a staging file not yet tied to an inode), holes kept as holes
  (SEEK_DATA/SEEK_HOLE on the source), in-kernel with `copy_file_range` where it works,
  else by pread/pwrite; optionally the SHA-256 of the content on the way (holes hash as
  the zeros they read as). A source that changes while it is copied is copied again (a
  few times), so what lands in staging is one version of it;
- `file_digest(path)`: the same SHA-256 of a file without copying it (`sync --checksum`);

Everything here runs in worker threads and touches nothing shared: only descriptors it
opens itself. The caller (FileData) does the space accounting.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

CHUNK = 1 << 20
COPY_ATTEMPTS = 3  # copies of a source that keeps changing, before settling for the last
_ZEROS = bytes(CHUNK)


class SourceChanged(OSError):
    """The source is no longer a regular file (replaced by something else since the scan)."""


class Copied(NamedTuple):
    size: int  # bytes copied: the staged file's length
    alloc: int  # bytes the staged file occupies on disk
    mtime_ns: int  # the source's mtime and atime when the copy started
    atime_ns: int
    digest: bytes | None  # SHA-256 of the content, if asked for
    stable: bool  # False: the source kept changing while it was copied


def _open_source(source: str | bytes | os.PathLike) -> tuple[int, os.stat_result]:
    # O_NOFOLLOW: a symlink put in its place is not followed; O_NONBLOCK: a FIFO put in its
    # place does not block the open (the type check below refuses it).
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceChanged(errno.EINVAL, "no longer a regular file", os.fsdecode(source))
    return fd, st


def _data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of the open file that hold data (exact, unlike staging's)."""
    regions = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno == errno.EINVAL:  # a file system without SEEK_DATA: all data
                return [(pos, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        regions.append((start, end))
        pos = end
    return regions


def _feed_zeros(h, n: int) -> None:
    view = memoryview(_ZEROS)
    while n > 0:
        step = min(n, CHUNK)
        h.update(view[:step])
        n -= step


def _copy_range(src: int, dst: int, start: int, end: int, h, in_kernel: list[bool]) -> int:
    """Bytes [start, end) of src to the same offsets of dst (hashing them if h). Returns
    where it stopped: `end`, or less if the source shrank meanwhile."""
    pos = start
    while pos < end:
        want = min(CHUNK, end - pos)
        if h is None and in_kernel[0]:
            try:
                n = os.copy_file_range(src, dst, want, pos, pos)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                in_kernel[0] = False
                continue
            if n == 0:  # the source shrank under us: the stability check sees it
                return pos
            pos += n
            continue
        chunk = os.pread(src, want, pos)
        if not chunk:
            return pos
        if h is not None:
            h.update(chunk)
        view = memoryview(chunk)
        while view:
            n = os.pwrite(dst, view, pos)
            view = view[n:]
            pos += n
    return pos


def _copy_once(src: int, dst: int, st: os.stat_result, digest: bool, again: bool) -> bytes | None:
    size = st.st_size
    if again:
        os.ftruncate(dst, 0)
    h = hashlib.sha256() if digest else None
    in_kernel = [True]
    pos = reached = 0
    # A file whose blocks cover its size has no holes worth looking for (two lseeks saved
    # per small file); a sparse one is copied region by region, holes staying holes.
    dense = st.st_blocks * 512 >= size
    for start, end in [(0, size)] if dense else _data_regions(src, size):
        if h is not None and start > pos:
            _feed_zeros(h, start - pos)
        reached = _copy_range(src, dst, start, end, h, in_kernel)
        pos = end
    if h is not None and size > pos:
        _feed_zeros(h, size - pos)
    if reached != size:
        os.ftruncate(dst, size)  # a trailing hole, or a source that shrank meanwhile
    return None if h is None else h.digest()


def copy_into(source: str | bytes | os.PathLike, target: Path, *, digest: bool = False) -> Copied:
    """Copy the regular file `source` into a new file `target` (created, mode 0600).
    Raises OSError (SourceChanged if it is no longer a regular file); `target` is then
    removed. Not fsynced: see `staging.sync_filesystem`."""
    src, st = _open_source(source)
    try:
        dst = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for attempt in range(COPY_ATTEMPTS):
                if attempt:
                    st = os.fstat(src)
                result = _copy_once(src, dst, st, digest, again=attempt > 0)
                after = os.fstat(src)
                stable = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
                    st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if stable:
                    break
            # The times recorded are those from before the copy: if the source changed
            # during the last attempt, the next sync sees a newer mtime and copies it again.
            alloc = os.fstat(dst).st_blocks * 512
            return Copied(st.st_size, alloc, st.st_mtime_ns, st.st_atime_ns, result, stable)
        except BaseException:
            os.close(dst)
            dst = -1
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            raise
        finally:
            if dst >= 0:
                os.close(dst)
    finally:
        os.close(src)


def file_digest(path: str | bytes | os.PathLike) -> tuple[bytes, int, int]:
    """(SHA-256 of the content, size, mtime_ns) of a local regular file, holes as zeros."""
    fd, st = _open_source(path)
    try:
        h = hashlib.sha256()
        pos = 0
        for start, end in _data_regions(fd, st.st_size):
            _feed_zeros(h, start - pos)
            while start < end:
                chunk = os.pread(fd, min(CHUNK, end - start), start)
                if not chunk:
                    break
                h.update(chunk)
                start += len(chunk)
            pos = end
        _feed_zeros(h, st.st_size - pos)
        return h.digest(), st.st_size, st.st_mtime_ns
    finally:
        os.close(fd)


class StagedCopy:
    """A copy made by `FileData.stage_copy`: a staging file that belongs to no inode yet
    (`path`, then the inode's staging path once placed), and the staging space reserved
    for it until it joins the dirty set or is discarded."""

    __slots__ = ("path", "copied", "reserved", "placed")

    def __init__(self, path: Path, copied: Copied, reserved: int) -> None:
        self.path = path
        self.copied = copied
        self.reserved = reserved
        self.placed: int | None = None  # the inode whose staging path it has, once placed

    def __repr__(self) -> str:
        return f"<StagedCopy {self.path.name} size={self.copied.size} placed={self.placed}>"


__all__ = ["Copied", "SourceChanged", "StagedCopy", "copy_into", "file_digest"]
