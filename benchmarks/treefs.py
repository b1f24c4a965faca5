"""A no-op pyfuse3 filesystem serving a synthetic tree: the ceiling for bench_scale's umount.

`DIRS` folders under the root holding `FILES` empty files between them, computed from
their inode numbers (no state per inode, no index, nothing to back up). A `find` over it
leaves the kernel holding as many inodes and dentries as a `find` over a usenetfs volume
of that shape, and its unmount then costs what the kernel's eviction of them costs.
Run: python benchmarks/treefs.py MOUNTPOINT DIRS FILES [READY_FILE]  (foreground)
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

import pyfuse3
import trio

from memfs import serve  # the same mount and start-up as the in-memory ceiling

ROOT = pyfuse3.ROOT_INODE


class TreeFS(pyfuse3.Operations):
    def __init__(self, dirs: int, files: int):
        super().__init__()
        self.initialized = trio.Event()
        self.dirs = dirs
        self.per_dir, self.extra = divmod(files, dirs)  # the first `extra` folders hold one more
        self.first_file = ROOT + 1 + dirs
        self.time_ns = time.time_ns()

    def init(self) -> None:
        self.initialized.set()

    def _files_of(self, folder: int) -> tuple[int, int]:
        """(inode of the first file, number of files) of folder number `folder`."""
        first = self.first_file + folder * self.per_dir + min(folder, self.extra)
        return first, self.per_dir + (folder < self.extra)

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.st_mode = (stat.S_IFDIR | 0o755) if inode < self.first_file else (stat.S_IFREG | 0o644)
        entry.st_nlink = 1
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        entry.st_blksize = 1 << 20
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self.time_ns
        entry.attr_timeout = entry.entry_timeout = 300
        return entry

    async def getattr(self, inode, ctx=None):
        return self._entry(inode)

    async def lookup(self, parent, name, ctx=None):
        try:
            number = int(name[1:])
        except ValueError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if parent == ROOT and name[:1] == b"d" and 0 <= number < self.dirs:
            return self._entry(ROOT + 1 + number)
        if ROOT < parent < self.first_file and name[:1] == b"f":
            first, count = self._files_of(parent - ROOT - 1)
            if 0 <= number < count:
                return self._entry(first + number)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if fh == ROOT:
            names, first, count = b"d%d", ROOT + 1, self.dirs
        else:
            names = b"f%d"
            first, count = self._files_of(fh - ROOT - 1)
        for k in range(start_id, count):
            if not pyfuse3.readdir_reply(token, names % k, self._entry(first + k), k + 1):
                break

    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 4096
        result.f_namemax = 255
        return result


def main() -> None:
    dirs, files = int(sys.argv[2]), int(sys.argv[3])
    serve(TreeFS(dirs, files), sys.argv[1], "treefs", sys.argv[4] if len(sys.argv) > 4 else None)


if __name__ == "__main__":
    main()
