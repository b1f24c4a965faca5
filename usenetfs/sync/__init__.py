"""`usenetfs sync SRC [VOLUME:]DEST`: bulk copy of a local tree into a volume, and keeping
it in step later, without a FUSE round trip per operation.

    source.py   listing the source in worker threads (SourceEntry, Scanner)
    compare.py  what to do with one name (pure): new, unchanged, attributes, content, type
    engine.py   `Sync`: the walk, the batches (one index transaction each), staging the
                copies through FileData, the directories' attributes at the end
    target.py   how the changes reach the others: an unmounted volume, or the running
                mount (its fs model and the kernel's caches)
    control.py  the mount daemon's `sync` request: runs a Sync in the daemon and streams
                progress (and the changes, for --dry-run and --itemize)

Semantics are rsync -a's with SRC/ (the contents of SRC go into DEST; DEST gets SRC's
mode, owner and times; DEST and its missing parents are made): regular files, directories,
symlinks, FIFOs, hard links within one run (names of one source inode become names of one
volume inode), permission bits, owner (when run as root), mtimes, user.* extended
attributes. Devices and sockets are skipped (the volume does not store them). A file is
unchanged when size and mtime are equal; otherwise it is copied again under a new inode
renamed over the old one. `--delete` removes what the source does not have; without it
nothing is removed (except an entry whose type changed, when that entry is not a
non-empty directory).

Files are never posted by this package: their bytes go into staging files and the
ordinary uploader (data/uploader.py) packs and posts them, exactly as files closed
through FUSE, bounded by the same staging limit (the copy waits for space, never fails).

--checksum. The content digest is SHA-256. The index has no column for it (and a column
for 3M files would cost every volume ~100 MB whether it uses --checksum or not), so a sync
with --checksum records it where it costs only its users: in the stored extended
attribute `user.usenetfs.sha256` of the file, as "<hex digest> <ctime_ns>". The ctime
is the inode's at the moment the digest was recorded; any later change to the file
through the mount moves its ctime (which no user can set back), so a record whose ctime
is not the inode's current one is stale and ignored. A file without a valid record is
read back once through the read path (cache, else the server) and hashed, and the digest
is then recorded, so later --checksum runs read nothing back. The attribute is readable
by name (getfattr -n user.usenetfs.sha256) but not listed, like usenetfs's virtual
attributes, so copy tools never carry it to another volume.
"""

from .engine import Sync, SyncOptions, SyncStats
from .target import MountedTarget, OfflineTarget

__all__ = ["MountedTarget", "OfflineTarget", "Sync", "SyncOptions", "SyncStats"]
