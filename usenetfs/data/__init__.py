"""The data of regular files: write-back staging, packing and upload, read-through cache.

    filedata.py  `FileData`: the API the fs layer calls (docs/filesystem-contracts.md),
                 materialisation of a clean file before its first write, bulk staging
                 of local files (usenetfs sync)
    staging.py   staging files (one per dirty inode), space accounting, backpressure
    copyin.py    copying local files into staging files (worker threads; usenetfs sync)
    uploader.py  the background task: when to upload what, packing, runs, commit, retry
    reader.py    clean reads: extent maps, segment fetch with retries, read-ahead, health
    segcache.py  the segment LRU (bytes-bounded, first segments kept apart), single flight
    diskcache.py the optional on-disk segment cache (bytes-bounded LRU of checked files)
    errors.py    `DataUnavailable` (EIO)

A file is either *clean* (its bytes are the extents in the index, in verified segments)
or *dirty* (`cache_dir/staging/<ino>` exists and holds its whole current content; its
length is the file's size). Clean -> dirty: the first write (materialise) or an O_TRUNC
open. Dirty -> clean: an upload that committed the extents while no write happened; its
staging file is then *retired* (out of the dirty set, still on disk) and unlinked after
the next index checkpoint, because the index commits with synchronous=NORMAL: until a
checkpoint, a power cut may lose the commit, and the staging file must still be there.

Concurrency rules
-----------------
Everything runs on the one trio thread; code between two awaits is atomic. Index calls
are synchronous. Worker threads (`trio.to_thread.run_sync`) only run pure functions or
local-disk I/O on descriptors they open themselves (fsync, SEEK_DATA scans, reading
upload payloads, the codec inside the store); they touch no shared state.

Who owns what:
- `Staging.files` (the dirty set) and each `DirtyFile`'s size/alloc/writes: changed by the
  fs-facing calls (write, truncate, open_for_write, forget) and by the uploader's commit
  (drop). `write` does wait-for-space and materialise (awaits) FIRST, then re-checks the
  record and does pwrite + counter bump + size update with no await in between and none
  after: the fs's index size update that follows `await write()` is atomic with it.
- `DirtyFile.clean_upto` / `changed_from`: lowered by every write and truncate (in
  `Staging.pwrite/truncate`), `changed_from` reset when a job starts on the file, and
  `clean_upto` raised only by a streamed job's commit after checking `changed_from`, with
  no await in between.
- The cached staging descriptors: trio thread only (threads open their own by path, as
  the LRU may close a cached one at any await).
- `DirtyFile.due/heap_due/not_before/job/failures`: the uploader. `DirtyFile.job` is set
  when a job starts and cleared when it ends; a file is in at most one job.
- A job (one upload) owns its plan (segment rows it allocated). Segment rows are committed
  pending before any `put`; each is marked posted when its put returns; ONE transaction
  then marks them verified and replaces the members' extent maps. Between that commit
  and retiring the staging file there is no await, so "uploaded and not written
  meanwhile" (write counter unchanged since the job started) is decided atomically. A
  retired file that is dirtied again before the purge gets its staging path back (the
  new file replaces it) and is taken off the purge list in the same step.
- A write during an upload does not cancel it: the commit still records the (older)
  content, cut to the current size, and the file stays dirty for the next upload.
- Materialisation of an inode is serialised by a per-inode `trio.Lock`; `truncate`
  waits for a running one. It fills `<ino>.tmp`, fsyncs it, and renames it into place
  only when done, so a crash never leaves a partial staging file.
- Segment fetches: single flight per segment id (segcache.py); the first reader fetches,
  others wait on its Event. Read-ahead tasks run in FileData.run()'s nursery, and so do
  the on-disk cache's background writes (its dict and byte count: trio thread only; its
  file work: worker threads on paths, a vanished file being a miss). A sequential
  stream's `_seq` record (front, window, kept_from) belongs to the reads of that inode.
- The extent-map cache: filled by reads, invalidated by the uploader's commit, by
  `truncate` and `open_for_write(truncate=True)`, and by `forget`.
- Purging: a retired staging file is renamed aside (`purged-<ino>-<n>.tmp`) on the trio
  thread, so the inode's staging path is free at once, and unlinked later by
  `Staging.empty_trash` in a worker thread; its space counts as used until then.
- Bulk staging (usenetfs sync): `stage_copies` copies local files in a worker thread into
  `sync-<pid>-<n>.tmp` staging files of no inode, reserving their space first; the sync
  then, in ONE index batch with no await, makes the inodes and `place_copy`s each copy to
  its inode's staging path (and fsyncs the directory); once the batch committed,
  `adopt_copy` puts it in the dirty set, released, marked `durable` (the uploader skips
  its fsync). A crash before the commit leaves `.tmp` files and staging files of inodes
  that do not exist: recover() removes both.

The fs layer's side of the contract (how to wire it):
- Size: while a file is dirty, `dirty_size(ino)` is its size (use it in getattr). The fs
  keeps the index size too (update it right after `await write()`, no await between);
  the commit that makes a file clean sets the index size to the staged length.
- `truncate`: call `Index.truncate` and then `await data.truncate` back to back.
- `release(ino, group)` once the last writer closes; `forget(ino)` only when the inode is
  deleted (nlink 0 and the kernel forgot it), never for a mere kernel forget.
- `DataUnavailable` (has `.errno` EIO) from read/write/truncate/open_for_write;
  `index.NotFound` if the inode vanished; `OSError` from the local disk (ENOSPC).
"""

from .errors import DataUnavailable
from .filedata import FileData
from .segcache import SegmentCache
from .staging import DirtyFile, Staging

__all__ = ["DataUnavailable", "DirtyFile", "FileData", "SegmentCache", "Staging"]
