"""A minimal in-memory pyfuse3 filesystem: the ceiling for usenetfs's FUSE-side figures.

It keeps whole files in bytearrays and does nothing else (no index, no staging, no
network), with the same mount options usenetfs uses (writeback cache, 1 MiB read-ahead).
With `--sink` it keeps no file data at all (writes only move the size; reads return
zeros): the cost of the FUSE copy alone, for bench_fs.py's bound on copying in and posting.
Run: python benchmarks/memfs.py [--sink] MOUNTPOINT [READY_FILE]   (foreground; unmount with fusermount3 -u)
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from usenetfs.mountd import raise_readahead  # noqa: E402


class MemFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self):
        super().__init__()
        self.initialized = trio.Event()
        now = time.time_ns()
        self.attrs: dict[int, dict] = {pyfuse3.ROOT_INODE: self._attr(stat.S_IFDIR | 0o755, now)}
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.data: dict[int, bytearray] = {}
        self.next_inode = pyfuse3.ROOT_INODE + 1

    def init(self) -> None:
        self.initialized.set()  # INIT is being answered (see announce in main)

    @staticmethod
    def _attr(mode: int, now: int) -> dict:
        return {"mode": mode, "size": 0, "time": now}

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        a = self.attrs[inode]
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.st_mode = a["mode"]
        entry.st_nlink = 1
        entry.st_uid = os.getuid()
        entry.st_gid = os.getgid()
        entry.st_size = len(self.data[inode]) if inode in self.data else 0
        entry.st_blksize = 1 << 20
        entry.st_blocks = (entry.st_size + 511) // 512
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = a["time"]
        entry.attr_timeout = entry.entry_timeout = 300
        return entry

    async def getattr(self, inode, ctx=None):
        return self._entry(inode)

    async def lookup(self, parent, name, ctx=None):
        inode = self.children.get(parent, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            buf = self.data[inode]
            if attr.st_size < len(buf):
                del buf[attr.st_size:]
            else:
                buf.extend(bytes(attr.st_size - len(buf)))
        return self._entry(inode)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        for index, (name, inode) in enumerate(sorted(self.children[fh].items())):
            if index < start_id:
                continue
            if not pyfuse3.readdir_reply(token, name, self._entry(inode), index + 1):
                break

    async def mkdir(self, parent, name, mode, ctx):
        inode = self._new(parent, name, stat.S_IFDIR | mode)
        self.children[inode] = {}
        return self._entry(inode)

    def _new(self, parent: int, name: bytes, mode: int) -> int:
        inode = self.next_inode
        self.next_inode += 1
        self.attrs[inode] = self._attr(mode, time.time_ns())
        self.children[parent][name] = inode
        return inode

    async def create(self, parent, name, mode, flags, ctx):
        inode = self._new(parent, name, stat.S_IFREG | mode)
        self.data[inode] = bytearray()
        return pyfuse3.FileInfo(fh=inode), self._entry(inode)

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self.data[inode].clear()
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return bytes(memoryview(self.data[fh])[off:off + size])

    async def write(self, fh, off, buf):
        data = self.data[fh]
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def unlink(self, parent, name, ctx):
        inode = self.children[parent].pop(name)
        self.data.pop(inode, None)

    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 4096
        result.f_blocks = result.f_bfree = result.f_bavail = 1 << 30
        result.f_files = result.f_ffree = result.f_favail = 1 << 30
        result.f_namemax = 255
        return result


class SinkFS(MemFS):
    """MemFS that drops what is written: a file is only its size."""

    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = super()._entry(inode)
        entry.st_size = self.sizes.get(inode, 0)
        entry.st_blocks = (entry.st_size + 511) // 512
        return entry

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            self.sizes[inode] = attr.st_size
        return self._entry(inode)

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self.sizes[inode] = 0
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return bytes(max(0, min(size, self.sizes.get(fh, 0) - off)))

    async def write(self, fh, off, buf):
        self.sizes[fh] = max(self.sizes.get(fh, 0), off + len(buf))
        return len(buf)


def serve(operations, mountpoint: str, fsname: str, ready_file: str | None) -> None:
    """Mount `operations` (which set `initialized` in their init) at `mountpoint` and
    serve until unmounted; READY_FILE is created once the mount is ready (INIT answered,
    the same 1 MiB read-ahead as usenetfs raised)."""
    pyfuse3.init(operations, mountpoint, set(pyfuse3.default_options) | {f"fsname={fsname}"})

    async def announce() -> None:  # as usenetfs's mountd.announce_when_initialized
        await operations.initialized.wait()
        raise_readahead(mountpoint)
        if ready_file:
            open(ready_file, "w").close()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)


@contextmanager
def mounted(mountpoint: Path, *, sink: bool = False):
    """This filesystem (with `sink`: SinkFS) mounted at the new directory `mountpoint` by a
    child process, for the benchmarks to measure against; unmounted on leaving."""
    mountpoint.mkdir()
    ready = mountpoint.with_name(mountpoint.name + "-ready")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *(["--sink"] if sink else []),
                             str(mountpoint), str(ready)])
    try:
        deadline = time.time() + 10
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        if not ready.exists():  # else the benchmark would measure the plain directory below
            raise RuntimeError(f"{mountpoint}: memfs did not mount within 10 s")
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)])
        proc.wait(10)


def main() -> None:
    """memfs.py [--sink] MOUNTPOINT [READY_FILE]"""
    args = sys.argv[1:]
    sink = args[:1] == ["--sink"]
    if sink:
        args = args[1:]
    serve(SinkFS() if sink else MemFS(), args[0], "sinkfs" if sink else "memfs", args[1] if len(args) > 1 else None)


if __name__ == "__main__":
    main()
