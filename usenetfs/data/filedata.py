"""`FileData`: the data of regular files, the one entry point the fs layer calls.

Owns the public API of docs/filesystem-contracts.md and the glue between its parts:
staging (staging.py), the read path (reader.py, segcache.py) and the uploader
(uploader.py); and materialisation: the first write to a clean file whose data is remote
copies its whole current content into a new staging file (fetching its segments) before
that write is applied, so a dirty file's staging file always holds its whole content.
See data/__init__.py for the concurrency rules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from ..index import Index, NotFound
from ..index.schema import VOLUME_SCOPE
from ..store.base import SegmentStore
from .copyin import StagedCopy, copy_into
from .diskcache import DiskCache
from .reader import Reader
from .segcache import SegmentCache
from .staging import SPARES_TARGET, DirtyFile, Staging, fsync_paths, sync_filesystem
from .uploader import Uploader

log = logging.getLogger("usenetfs.data")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class FileData:
    def __init__(
        self,
        index: Index,
        store: SegmentStore,
        cache_dir: str | os.PathLike[str],
        *,
        segment_size: int = 716_800,
        pack_threshold: int = 256 * KiB,
        idle_seconds: float = 3.0,
        staging_limit: int = 4 * GiB,
        cache_bytes: int = 256 * MiB,
        readahead_bytes: int = 8 * MiB,
        disk_cache_bytes: int = 0,  # the on-disk segment cache (0: none)
        disk_cache_dir: str | os.PathLike[str] | None = None,  # default: cache_dir/segments
        # Tuning beyond the contract (defaults are what a mount wants):
        release_delay: float | None = None,  # close -> upload; default min(1 s, idle_seconds)
        upload_concurrency: int = 4,  # segment uploads in flight
        retry_base: float = 5.0,  # first backoff after a failed upload (s), doubling ...
        retry_max: float = 300.0,  # ... up to this
        read_retries: int = 3,  # store.get attempts per segment before DataUnavailable
        read_retry_delay: float = 0.5,
        sync_delay: float = 1.0,  # commit -> index checkpoint -> staging unlink (s)
        commit_interval: float = 1.0,  # a write is durable (power cut) this long after it (s)
        stream_segments: int = 0,  # upload a file being written once this many segments wait (0: off)
        spare_files: int = SPARES_TARGET,  # empty staging files kept ready (Staging's spare pool)
        scope: int = VOLUME_SCOPE,  # scopes.id the segments are made under
    ) -> None:
        if pack_threshold > segment_size:
            raise ValueError("pack_threshold must not exceed segment_size")
        self.index = index
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.segment_size = segment_size
        self.staging = Staging(self.cache_dir / "staging", staging_limit, spare_target=spare_files)
        # First segments get an eighth of the cache (at least one segment, at most half).
        first_bytes = min(max(cache_bytes // 8, segment_size), 32 * MiB, cache_bytes // 2)
        self.cache = SegmentCache(cache_bytes, first_bytes)
        self.disk_cache = None
        if disk_cache_bytes > 0:
            self.disk_cache = DiskCache(disk_cache_dir or self.cache_dir / "segments", disk_cache_bytes)
        self.reader = Reader(
            index,
            store,
            self.cache,
            readahead_bytes=readahead_bytes,
            read_retries=read_retries,
            retry_delay=read_retry_delay,
            disk=self.disk_cache,
        )
        self.uploader = Uploader(
            index,
            store,
            self.staging,
            scope=scope,
            segment_size=segment_size,
            pack_threshold=pack_threshold,
            idle_seconds=idle_seconds,
            release_delay=min(1.0, idle_seconds) if release_delay is None else release_delay,
            concurrency=upload_concurrency,
            retry_base=retry_base,
            retry_max=retry_max,
            on_commit=self.reader.replaced,
            sync_delay=sync_delay,
            stream_segments=stream_segments,
        )
        self._writers: set[int] = set()  # inodes a writer holds open (open_for_write .. release)
        # Files created in this mount and neither written nor resized since: nothing of them
        # is remote and they are empty, so their first write stages them without reading
        # the index (the common case of cp: create, write, close).
        self._created: set[int] = set()
        self._locks: dict[int, trio.Lock] = {}  # ino -> materialisation lock
        self._tokens: dict[int, object] = {}  # ino -> token of the materialisation running
        self._running = False
        self._unsynced: set[int] = set()  # written since the last durability pass
        self.commit_interval = commit_interval
        self._copy_seq = 0  # names of staged copies (usenetfs sync)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The background uploader (and read-ahead tasks). Run it in the mount's nursery;
        cancelling it abandons uploads in flight (their staging files stay: recover())."""
        if self.disk_cache is not None:
            await self.disk_cache.open()
        async with trio.open_nursery() as nursery:
            self.reader.nursery = nursery
            self._running = True
            try:
                task_status.started()
                nursery.start_soon(self._commit_loop)
                nursery.start_soon(self.staging.housekeeping_forever)
                await self.uploader.run(nursery)
            finally:
                self._running = False
                self.reader.nursery = None
                nursery.cancel_scope.cancel()
                try:
                    # Purge what is clean, so the next mount does not upload it again.
                    self.uploader.sync_retired()
                except Exception:  # noqa: BLE001 - e.g. the index is already closed
                    log.debug("final index sync skipped", exc_info=True)
                self.staging.empty_trash_now()

    async def recover(self) -> int:
        """At mount, before serving: adopt the staging files a crash (or an umount that did
        not flush) left, and discard segment rows a crash left half-uploaded. Returns the
        number of dirty files adopted. (Safe to call later too: it leaves this instance's
        own files, materialisations and uploads alone.)"""
        adopted: list[DirtyFile] = []
        for ino in self.staging.scan(busy=self._tokens):
            if ino in self.staging.files or ino in self.staging.retired:
                continue  # ours already (recover called late): nothing to adopt
            try:
                inode = self.index.get_inode(ino)
            except NotFound:
                inode = None
            if inode is None or not inode.is_reg:
                log.info("staging file of inode %d has no regular file in the index: removed", ino)
                self.staging.remove_file(ino)
                continue
            adopted.append(self.staging.adopt(ino))
        # Packed again with their directory's other small files, as if just closed (the
        # packing group is not persisted; one scan of the entries finds it).
        parents = self.index.parents_of(d.ino for d in adopted) if adopted else {}
        for d in adopted:
            group = parents.get(d.ino)
            if group is None:  # an unlinked file still open at the crash: uploaded alone
                self.uploader.schedule(d, trio.current_time())
            else:
                self.uploader.released(d, group)
        discarded = self.uploader.discard_leftovers()
        if adopted or discarded:
            log.info("recovered %d dirty file(s); discarded %d unfinished segment(s)", len(adopted), discarded)
        return len(adopted)

    def close(self) -> None:
        """Close cached descriptors (after run() has ended)."""
        self.staging.close()

    # ------------------------------------------------------------------ queries

    def dirty_size(self, ino: int) -> int | None:
        d = self.staging.files.get(ino)
        return None if d is None else d.size

    def pending(self) -> dict:
        stats = self.index.stats()
        pending, posted, _, missing, _ = stats.segments
        return {"files": len(self.staging.files), "bytes": self.staging.total_size, "segments": pending + posted + missing}

    def health(self, ino: int) -> str:
        problems = []
        d = self.staging.files.get(ino)
        if d is not None and d.failures:
            problems.append(f"upload failing ({d.failures} attempt(s)): {d.last_error}")
        problems.extend(self.reader.health(ino))
        return "ok" if not problems else "; ".join(problems)

    def unhealthy(self) -> list[int]:
        """Inodes known to have a problem (failed reads, failing uploads): what `health`
        would not answer "ok" for, without querying the index. For status reports."""
        failing = [ino for ino, d in self.staging.files.items() if d.failures]
        return sorted(set(failing) | set(self.reader.bad))

    async def cached_payload(self, seg: int) -> bytes | None:
        """Segment `seg`'s payload if the read cache (memory, then disk) holds it
        (verify --repair re-posts it)."""
        data = self.cache.get(seg)
        if data is None and self.disk_cache is not None:
            data = await self.disk_cache.get(seg)
        return data

    def segment_repaired(self, seg: int) -> None:
        """`seg` was posted again under a new generation: forget the read failures it caused."""
        self.reader.repaired(seg)

    # ------------------------------------------------------------------ reads

    async def read(self, ino: int, offset: int, length: int, size: int) -> bytes:
        d = self.staging.files.get(ino)
        if d is not None:
            return self.staging.pread(d, offset, length)
        return await self.reader.read(ino, offset, length, size)

    # ------------------------------------------------------------------ writes

    async def open_for_write(self, ino: int, size: int, *, truncate: bool, created: bool = False) -> None:
        """A writer opened `ino`. Nothing is fetched here: a clean file is materialised by
        its first write (an O_RDWR open that never writes costs nothing). With `truncate`
        (O_TRUNC) the content is gone anyway: an empty staging file, no download.
        `size` is the fs's view, informational: materialisation reads the index.
        `created`: the fs has just made `ino`, empty (create())."""
        self._writers.add(ino)
        if created:
            self._created.add(ino)
        d = self.staging.files.get(ino)
        if d is not None:
            self.staging.set_open(d, True)
        if truncate:
            d = await self._dirty(ino, empty=True)
            if d.size:
                self.staging.truncate(d, 0)
                self.uploader.written(d)
                self._unsynced.add(ino)
            self.reader.invalidate(ino)

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        """pwrite into the staging file. Waits (never fails) while staging is full and
        uploads can drain it. Returns len(data). Nothing awaits after the pwrite, so the
        caller's size update that follows is atomic with it."""
        if not data:
            return 0
        await self.staging.wait_for_space(len(data), self.uploader.pressure)
        d = await self._dirty(ino)
        n = self.staging.pwrite(d, data, offset)
        self.uploader.written(d)
        self._unsynced.add(ino)
        return n

    async def truncate(self, ino: int, size: int) -> None:
        """Set a dirty file's staging length to `size`. A clean file needs nothing: its
        index size (set by the fs) cuts or extends it, bytes past the old end read as a
        hole; only a retired staging file it still has is cut too (Staging.truncate_retired).
        Call it right after `Index.truncate`, with no await in between."""
        self._created.discard(ino)  # no longer empty: the next write reads the size
        while True:
            d = self.staging.files.get(ino)
            if d is not None:
                if d.size != size:
                    self.staging.truncate(d, size)
                    self.uploader.written(d)
                    self._unsynced.add(ino)
                self.reader.invalidate(ino)
                return
            lock = self._locks.get(ino)
            if lock is None or not lock.locked():
                self.staging.truncate_retired(ino, size)
                self.reader.invalidate(ino)
                return
            async with lock:  # a materialisation is running: truncate its result
                pass

    async def fsync(self, ino: int) -> None:
        """Durable on local disk now: the staging file, the directory naming it, and the
        index (sizes, times, names). A clean file's data is already verified on the
        server."""
        paths = [self.staging.path(ino)] if ino in self.staging.files else []
        await trio.to_thread.run_sync(self._make_durable, paths)

    async def _commit_loop(self) -> None:
        """Every `commit_interval`, make what closed files had written durable: one batch
        of fsyncs in a worker thread, then the index. This is what makes a closed file
        survive a power cut without close() waiting for a disk flush (ext4's commit
        interval plays the same part); fsync() does it at once for one file."""
        while True:
            await trio.sleep(self.commit_interval)
            if not self._unsynced:
                continue
            # Files still open for writing wait for their close (or fsync): nothing is
            # promised for them before, and an fsync per second of a file being copied
            # would stall the copy on writeback.
            files = self.staging.files
            inos = {ino for ino in self._unsynced if ino not in files or not files[ino].open_for_write}
            self._unsynced -= inos
            paths = [self.staging.path(ino) for ino in inos if ino in files]
            try:
                await trio.to_thread.run_sync(self._make_durable, paths)
            except OSError as error:  # e.g. EIO from the disk: keep them, try again
                log.error("cannot make %d written file(s) durable on local disk: %s", len(inos), error)
                self._unsynced |= inos

    def _make_durable(self, paths: list[Path]) -> None:
        """(A worker thread.) fsync the staging files `paths` and their directory, then the
        index's WAL: every index commit made before the call is durable when it returns.
        Neither touches the index's connection, so the trio thread goes on meanwhile."""
        if paths:
            fsync_paths(paths, self.staging.directory)
        self.index.sync()

    def release(self, ino: int, group: int) -> None:
        self._writers.discard(ino)
        self._created.discard(ino)
        d = self.staging.files.get(ino)
        if d is not None:
            self.staging.set_open(d, False)
            self.uploader.released(d, group)

    def forget(self, ino: int) -> None:
        self._writers.discard(ino)
        self._created.discard(ino)
        self._tokens.pop(ino, None)  # a materialisation in flight notices and gives up
        d = self.staging.drop(ino)
        self.uploader.forget(d, ino)
        self.reader.forget(ino)

    async def flush_all(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Return once nothing is dirty. `progress(done_bytes, total_bytes)` is called as
        files get uploaded. Needs run() to be running (it does the uploading)."""
        if not self._running:
            raise RuntimeError("FileData.flush_all needs FileData.run() running")
        uploader = self.uploader
        staging = self.staging
        uploader.flushing += 1
        try:
            uploader.flush_now()
            total = staging.total_size
            last = None
            # Also wait for the jobs of files deleted meanwhile: cancelled, they are still
            # discarding their segment rows (and may be inside a worker thread).
            while staging.files or uploader.active_jobs:
                remaining = staging.total_size
                total = max(total, remaining)
                if progress is not None and (total - remaining, total) != last:
                    last = (total - remaining, total)
                    progress(*last)
                await staging.changed()
            uploader.sync_retired()  # durable: the index commit, then the unlinks
            await staging.empty_trash()
            if progress is not None:
                progress(total, total)
        finally:
            uploader.flushing -= 1

    # ------------------------------------------------------------------ materialisation

    async def _dirty(self, ino: int, *, empty: bool = False) -> DirtyFile:
        """The dirty record of `ino`, materialising it first if it is clean. On return
        the record is current (no await between the check and the return)."""
        while True:
            d = self.staging.files.get(ino)
            if d is not None:
                return d
            lock = self._locks.get(ino)
            if lock is None:
                lock = self._locks[ino] = trio.Lock()
            try:
                async with lock:
                    if ino not in self.staging.files:
                        await self._materialise(ino, empty)
            finally:
                if self._locks.get(ino) is lock and not lock.locked() and not lock.statistics().tasks_waiting:
                    del self._locks[ino]

    async def _materialise(self, ino: int, empty: bool) -> None:
        if ino in self._created:
            self._created.discard(ino)
            self._adopted(self.staging.create(ino, 0))
            return
        inode = self.index.get_inode(ino)  # NotFound: the fs answers ENOENT
        if not inode.is_reg:
            raise ValueError(f"inode {ino} is not a regular file")
        size = inode.size
        rows = [] if empty else self.reader.extents(ino)
        if not rows:
            # Nothing remote to copy (new, emptied, or all-hole file): no download.
            d = self.staging.create(ino, 0 if empty else size)
            self._adopted(d)
            return
        token = self._tokens[ino] = object()
        stored = sum(min(r.end, size) - r.offset for r in rows if r.offset < size)
        await self.staging.wait_for_space(stored, self.uploader.pressure)
        tmp = self.staging.tmp_path(ino)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            await self.reader.copy_to(ino, fd, size)
            # Durable before it is named: a crash must never leave a staging file that
            # looks dirty but lost part of content that was safe on the server.
            await trio.to_thread.run_sync(os.fsync, fd)
            if self._tokens.get(ino) is not token:
                raise NotFound(f"inode {ino} was deleted while its data was being fetched")
            os.rename(tmp, self.staging.path(ino))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        finally:
            if self._tokens.get(ino) is token:
                del self._tokens[ino]
        log.debug("inode %d: materialised %d bytes for writing", ino, size)
        d = self.staging.adopt(ino, fd=fd)
        d.clean_upto = size  # what the index holds: an append uploads only what is new
        self._adopted(d)

    def _adopted(self, d: DirtyFile) -> None:
        if d.ino in self._writers:
            self.staging.set_open(d, True)
        self.uploader.written(d)
        self._unsynced.add(d.ino)  # a new staging file: its name must become durable too

    # ------------------------------------------------------------------ bulk staging (usenetfs sync)
    #
    # `usenetfs sync` copies local files straight into staging files and hands them to the
    # same uploader as files closed through FUSE. The order makes a crash safe at every
    # step: stage_copy (a `.tmp` staging file of no inode: recover() removes it) ->
    # sync_copies (durable) -> inside ONE index batch: make the inode, place_copy (renamed
    # to the inode's staging path), staging_names_durable -> commit -> adopt_copy (dirty set,
    # upload soon). A crash before the commit leaves staging files of inodes that do not
    # exist: recover() removes them. After it, they are ordinary dirty files.

    async def stage_copies(self, sources: list[tuple[object, int]], *, digest: bool = False) -> list:
        """Copy local regular files into new staging files of no inode, in one worker
        thread (a thread hop per small file would cost more than its copy). `sources`:
        (path, expected size). Waits for staging space like write() (backpressure, never
        fails for space). Returns, in order, a StagedCopy or the OSError that stopped
        that file (it leaves nothing behind)."""
        reserve = sum(-(-max(size, 1) // 4096) * 4096 for _, size in sources)
        await self.staging.wait_for_space(reserve, self.uploader.pressure)
        self.staging.reserve(reserve)
        paths = []
        for _ in sources:
            self._copy_seq += 1
            paths.append(self.staging.directory / f"sync-{os.getpid()}-{self._copy_seq}.tmp")

        def copy_all() -> list:
            out = []
            for (source, _), path in zip(sources, paths):
                try:
                    out.append(copy_into(source, path, digest=digest))
                except OSError as error:
                    out.append(error)
            return out

        try:
            results = await trio.to_thread.run_sync(copy_all)
        finally:
            self.staging.reserve(-reserve)
        copies: list = []
        for path, result in zip(paths, results):
            if isinstance(result, OSError):
                copies.append(result)
            else:
                self.staging.reserve(result.alloc)
                copies.append(StagedCopy(path, result, result.alloc))
        return copies

    async def sync_copies(self) -> None:
        """Make the staged copies durable (one syncfs of the staging file system)."""
        await trio.to_thread.run_sync(sync_filesystem, self.staging.directory)

    def place_copy(self, copy: StagedCopy, ino: int) -> None:
        """Inside the index batch that creates `ino` (a regular file whose size is the
        copy's): rename the copy to its staging path. Then `staging_names_durable()`
        before the batch commits; afterwards adopt_copy, or discard_copy if it failed."""
        if ino in self.staging.files or ino in self._tokens:
            raise RuntimeError(f"inode {ino} already has staging data")
        target = self.staging.path(ino)
        os.rename(copy.path, target)
        copy.path, copy.placed = target, ino

    def staging_names_durable(self) -> None:
        """fsync the staging directory (synchronous: called inside the index batch, so
        the renames are durable before the commit that refers to them can be)."""
        fd = os.open(self.staging.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def adopt_copy(self, copy: StagedCopy, group: int) -> None:
        """The batch that placed `copy` committed: the file is dirty and released, to be
        uploaded soon and packed with the other small files of directory `group`."""
        ino = copy.placed
        if ino is None:
            raise RuntimeError("adopt_copy of a copy that was not placed")
        d = self.staging.adopt(ino)
        self.staging.reserve(-copy.reserved)
        copy.reserved = 0
        self.uploader.released(d, group)

    def discard_copy(self, copy: StagedCopy) -> None:
        """Give up a staged copy (its batch failed, or the sync stopped before using it)."""
        try:
            os.unlink(copy.path)
        except FileNotFoundError:
            pass
        self.staging.reserve(-copy.reserved)
        copy.reserved = 0


__all__ = ["FileData"]
