"""Posting an index backup: only the chunks the server does not have yet, then a manifest.

`backup()` (what the mount daemon calls) runs the steps of a `BackupRun`; a process may
die after any of them and leave every earlier backup restorable:

1. `take_snapshot`: a consistent, page-for-page image of the index, hashed chunk by chunk
   (chunks.py). Page-for-page matters: pages that did not change keep their place, so
   their chunks keep their hashes. Given the mount's Index (which tracks the pages
   written, index/changes.py), the image is the index file itself: `Index.freeze`
   checkpoints every commit into it and holds checkpoints until the backup ends, so the
   file stays as of that commit while new commits go on into the WAL; and given the last
   backup's digests (`Basis`, backup/current.py), only the chunks holding pages written
   since are read and hashed, the rest keep their digests. The chunks the server lacks
   (those not in the local record) are then read into memory, up to `HOLD_LIMIT` bytes,
   and checkpoints resume at once: posting, however slow the server, does not hold them
   (the WAL would grow by everything written meanwhile). Only a backup with more to
   post than that (the first one of a big index) holds checkpoints until it is posted.
   Otherwise (no Index, or a reader kept the checkpoint from finishing) the image is a
   copy beside it made by SQLite's backup API (index/snapshot.py), hashed whole.
2. `post_chunks`: each chunk not in the local record (record.py) is first looked for on
   the server (an earlier run may have posted it and died before noting it), else posted
   and read back by BODY; only then is it noted. Recorded chunks not seen for
   `recheck_after` seconds are re-checked by STAT, oldest first, at most `recheck_limit`
   per backup, and posted again under the next generation if they are gone (read from
   the file again: if checkpoints have changed it since the snapshot, the run fails and
   the next backup posts the chunk as changed). Then the chunk list (manifest.py) is cut
   into chunks and posted the same way.
3. `post_manifest`: the manifest, numbered one past the newest backup (a number whose
   manifest is already on the server, posted by a run that died before saving it, is
   skipped), posted last and read back; then the settings record the number, the record
   keeps only this backup's chunks, and the bootstrap is posted if it is not there yet.

Until the manifest is read back, restore finds the previous backup, and its chunks are
all still on the server: nothing is ever deleted, and chunks are never overwritten
(their ids come from their content).

Cost: with the mount's Index and a basis, reading and hashing the chunks written since the
last backup; otherwise hashing the whole index (in two threads; ~1 s per GB here), plus
copying it where it cannot be frozen (seconds per GB, and its size in free disk space).
What is posted is the changed chunks, the chunk list's changed chunks (36 bytes per chunk
listed) and one small manifest.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from ..codec.errors import CodecError
from ..errors import UserError
from ..index import Index
from ..index.changes import chunks_of
from ..index.snapshot import copy_consistent
from ..keys import VolumeKeys
from ..nntp import errors as E
from ..nntp.client import NNTPClient
from ..nntp.posting import ArticlePoster, VerifyOptions
from ..volume import Volume, VolumeSettings
from . import articles
from .bootstrap import post_bootstrap
from .bounded import for_each
from .chunks import (CHUNK_SIZE, ChunkRef, check_chunk_size, chunk_digest, chunk_ident, digest_chunks,
                     hash_key, read_chunk, read_chunks, split_bytes)
from .current import Basis
from .manifest import Manifest, encode_list, manifest_ident
from .record import ChunkRecord

log = logging.getLogger(__name__)

RECHECK_AFTER = 7 * 86400.0  # seconds before a recorded chunk is looked for again
RECHECK_LIMIT = 256  # recorded chunks re-checked (STAT) per backup at most
CONCURRENCY = 16  # chunks in flight (each holds one chunk and its article in memory)
HOLD_LIMIT = 64 << 20  # bytes of new chunks read into memory so that checkpoints resume before posting
VERIFY = VerifyOptions(delay=0.0, tries=6, interval=1.0)


@dataclass
class BackupStats:
    seq: int = 0
    db_size: int = 0
    chunks: int = 0  # chunks in the snapshot
    hashed: int = 0  # of those, chunks read and hashed (the others kept the last backup's digest)
    copied: bool = False  # the snapshot was a copy (no Index given, or it could not be frozen)
    held: int | None = None  # new chunks read into memory before posting (None: checkpoints held instead)
    basis: Basis | None = None  # the finished backup's chunks: what the next one starts from
    list_chunks: int = 0  # chunks holding the chunk list
    posted: int = 0  # chunk articles posted by this backup (snapshot and list chunks)
    posted_bytes: int = 0  # their article bodies
    found: int = 0  # chunks not in the record but already on the server (an earlier run's)
    rechecked: int = 0  # recorded chunks looked for with STAT
    lost: int = 0  # of those, gone from the server (posted again)
    seconds: float = 0.0


async def backup(volume: Volume, settings: VolumeSettings, keys: VolumeKeys, client: NNTPClient,
                 passphrase_keys: VolumeKeys | None = None) -> int:
    """Post an incremental backup of the index (and, given the passphrase-derived keys, the
    bootstrap if the server lacks it); return the backup's number."""
    return (await post_backup(volume, settings, keys, client, passphrase_keys)).seq


async def post_backup(volume: Volume, settings: VolumeSettings, keys: VolumeKeys, client: NNTPClient,
                      passphrase_keys: VolumeKeys | None = None, **options) -> BackupStats:
    """`backup()`, returning what it did (options: see `BackupRun`)."""
    run = BackupRun(volume, settings, keys, client, **options)
    done = False
    try:
        await run.take_snapshot()
        await run.post_chunks()
        await run.post_manifest(passphrase_keys)
        done = True
    finally:
        run.close(done)
    log.info("index backup %d: %d of %d chunks posted (%.1f MB), %d found on the server, "
             "%d re-checked (%d lost), %d hashed%s, %.1f s", run.stats.seq, run.stats.posted,
             run.stats.chunks + run.stats.list_chunks, run.stats.posted_bytes / 1e6, run.stats.found,
             run.stats.rechecked, run.stats.lost, run.stats.hashed,
             " (copied)" if run.stats.copied else " (checkpoints held while posting)" if run.stats.held is None else "",
             run.stats.seconds)
    return run.stats


class BackupRun:
    """One backup, step by step (see the module docstring). Not reusable."""

    def __init__(self, volume: Volume, settings: VolumeSettings, keys: VolumeKeys, client: NNTPClient, *,
                 index: Index | None = None, basis: Basis | None = None,
                 chunk_size: int = CHUNK_SIZE, recheck_after: float = RECHECK_AFTER,
                 recheck_limit: int = RECHECK_LIMIT, concurrency: int = CONCURRENCY,
                 verify: VerifyOptions = VERIFY):
        """`index`: the mount's open Index of this volume, tracking changes (see the module
        docstring); `basis`: the last backup's chunks. The finished backup's chunks are
        `self.basis` afterwards."""
        self.volume = volume
        self.settings = settings
        self.keys = keys
        self.client = client
        self.chunk_size = check_chunk_size(chunk_size)
        self.recheck_after = recheck_after
        self.recheck_limit = recheck_limit
        self.concurrency = concurrency
        self.scope = bytes.fromhex(settings.volume_id)
        self.hash_key = hash_key(keys)
        self.poster = ArticlePoster(client, verify)
        self.limiter = trio.CapacityLimiter(2)  # codec and hashing threads
        self.record = ChunkRecord.load(volume.backup_record_file, settings.volume_id)
        self.snapshot = volume.backup_snapshot_file
        self.index = index
        self.basis = basis
        self.source: Path = self.snapshot  # the file the chunks are read from
        self._frozen = False  # this run holds the Index's checkpoints
        self._held: dict[int, bytes] = {}  # chunk number -> its bytes as of the snapshot
        self._taken: set[int] | None = None  # pages this backup took from the Index's tracker
        self._losses = 0  # the tracker's loss count when they were taken
        self.stats = BackupStats()
        self.started = time.monotonic()
        self.digests: list[bytes] = []
        self.chunk_list: list[ChunkRef] = []
        self.list_refs: list[ChunkRef] = []

    async def take_snapshot(self) -> None:
        index = self.index
        changes = index.changes if index is not None else None
        if changes is not None:
            # On this thread, with no await in between: the pages written up to the
            # snapshot are taken, and later ones stay in the tracker for the next backup.
            self._frozen = index.freeze()
            self._losses = changes.losses
            lost = changes.lost
            taken = changes.take()  # even when lost: the pages before this moment are in the snapshot
            self._taken = None if lost else taken
        if self._frozen:
            self.source = self.volume.index_file
            self.stats.db_size = os.stat(self.source).st_size
        else:
            self.stats.copied = True
            self.stats.db_size = await trio.to_thread.run_sync(copy_consistent, self.volume.index_file,
                                                               self.snapshot)
        count = math.ceil(self.stats.db_size / self.chunk_size)
        todo = self._chunks_to_hash(count)
        hashed = await self._digest(todo)
        basis = self.basis.digests if self.basis is not None else ()
        self.digests = [hashed[n] if n in hashed else basis[n] for n in range(count)]
        self.stats.chunks = count
        self.stats.hashed = len(todo)
        if self._frozen:
            await self._hold_new_chunks()

    async def _hold_new_chunks(self) -> None:
        """Read the chunks the server lacks into memory and let checkpoints resume, unless
        they are more than HOLD_LIMIT bytes. What is read was hashed a moment ago: it is
        in the page cache."""
        first: dict[bytes, int] = {}
        for number, digest in enumerate(self.digests):
            if digest not in first and self.record.get(digest) is None:
                first[digest] = number
        numbers = sorted(first.values())
        if len(numbers) * self.chunk_size > HOLD_LIMIT:
            return
        data = await trio.to_thread.run_sync(read_chunks, self.source, self.chunk_size, numbers,
                                             limiter=self.limiter)
        self._held = dict(zip(numbers, data))
        self.stats.held = len(numbers)
        self.index.thaw()
        self._frozen = False

    def _chunks_to_hash(self, count: int) -> list[int]:
        """Every chunk, unless the Index's tracker and the last backup's digests say which
        chunks can differ from that backup: those holding a page written since, those past
        its end, and the last one if the size changed (it may have grown or been cut)."""
        basis = self.basis
        if (not self._frozen or self._taken is None or basis is None or basis.chunk_size != self.chunk_size
                or basis.seq != self.settings.last_backup):
            return list(range(count))
        todo = chunks_of(self._taken, self.index.page_size, self.chunk_size)
        todo.update(range(len(basis.digests), count))
        if basis.db_size != self.stats.db_size and count:
            todo.add(count - 1)
        return sorted(n for n in todo if n < count)

    async def _digest(self, numbers: list[int]) -> dict[int, bytes]:
        """Chunk number -> keyed hash, for the chunks listed, hashed in two threads."""
        halves = [numbers[::2], numbers[1::2]]
        results: list[list[bytes]] = [[], []]

        async def hash_half(k: int) -> None:
            results[k] = await trio.to_thread.run_sync(digest_chunks, self.source, self.hash_key,
                                                       self.chunk_size, halves[k], limiter=self.limiter)

        async with trio.open_nursery() as nursery:
            for k in (0, 1):
                if halves[k]:
                    nursery.start_soon(hash_half, k)
        return {**dict(zip(halves[0], results[0])), **dict(zip(halves[1], results[1]))}

    async def post_chunks(self) -> None:
        source, size, live = self.source, self.chunk_size, self.stats.held is not None

        def loader(number: int, digest: bytes) -> Callable[[], bytes]:
            held = self._held.get(number)
            if held is not None:
                return lambda: held
            if not live:
                return lambda: read_chunk(source, number, size)
            return lambda: self._read_unchanged(number, digest)

        generations = await self._ensure((digest, loader(n, digest)) for n, digest in enumerate(self.digests))
        self._held.clear()
        self.chunk_list = [ChunkRef(digest, generations[digest]) for digest in self.digests]
        pieces = split_bytes(encode_list(self.chunk_list), self.hash_key, self.chunk_size)
        generations = await self._ensure((digest, (lambda piece=piece: piece)) for digest, piece in pieces)
        self.list_refs = [ChunkRef(digest, generations[digest]) for digest, _ in pieces]
        self.stats.list_chunks = len(self.list_refs)
        self.record.flush()

    async def post_manifest(self, passphrase_keys: VolumeKeys | None = None) -> int:
        seq = self.volume.load().last_backup + 1
        while await articles.exists(self.client, self.keys, manifest_ident(self.scope, seq)):
            log.info("index backup %d is on the server already (an earlier run died before noting "
                     "it): this one is %d", seq, seq + 1)
            seq += 1
        settings = asdict(self.settings)
        manifest = Manifest(seq=seq, db_size=self.stats.db_size, chunk_size=self.chunk_size,
                            chunks=len(self.chunk_list), list_chunks=self.list_refs, settings=settings)
        await articles.post(self.poster, self.keys, manifest_ident(self.scope, seq), manifest.encode(),
                            self.settings.group, self.limiter)
        current = self.volume.load()  # changed meanwhile (e.g. the learned connection limit)?
        current.last_backup = seq
        self.volume.save(current)
        self.stats.seq = seq
        self.record.rewrite({ref.digest for ref in self.chunk_list} | {ref.digest for ref in self.list_refs})
        self.basis = self.stats.basis = Basis(seq, self.chunk_size, self.stats.db_size, tuple(self.digests))
        if passphrase_keys is not None:
            await post_bootstrap(self.client, self.volume, current, passphrase_keys, limiter=self.limiter)
        self.stats.seconds = time.monotonic() - self.started
        return seq

    def _read_unchanged(self, number: int, digest: bytes) -> bytes:
        """Chunk `number` of the live index file (checkpoints resumed after the snapshot),
        if it is still what the snapshot held. Only a re-checked chunk found gone from the
        server needs this: it was not in memory."""
        data = read_chunk(self.source, number, self.chunk_size)
        if chunk_digest(self.hash_key, data) != digest:
            raise UserError(f"index chunk {number} is gone from the server and has changed since this "
                            "backup's snapshot: the next backup will post it")
        return data

    def close(self, done: bool = False) -> None:
        """End the run: `done` if the manifest was posted (the pages taken are backed up),
        else they go back to the tracker (still written since the last backup)."""
        self.record.close()
        self.snapshot.unlink(missing_ok=True)
        if self._frozen:
            self.index.thaw()
            self._frozen = False
        changes = self.index.changes if self.index is not None else None
        if changes is not None:
            if done:
                changes.found(self._losses)
            else:
                changes.give_back(self._taken)

    # ------------------------------------------------------------------ chunks
    async def _ensure(self, items: Iterable[tuple[bytes, Callable[[], bytes]]]) -> dict[bytes, int]:
        """Make sure every chunk in `items` (digest, loader of its bytes) is on the server;
        return the generation of each."""
        now = int(time.time())
        generations: dict[bytes, int] = {}
        work: list[tuple[bytes, Callable[[], bytes], int | None]] = []  # (digest, load, recorded generation)
        stale: list[tuple[int, bytes, Callable[[], bytes], int]] = []
        for digest, load in items:
            if digest in generations:  # equal chunks (runs of free pages): one article
                continue
            seen = self.record.get(digest)
            if seen is None:
                generations[digest] = -1
                work.append((digest, load, None))
            elif now - seen.checked_s >= self.recheck_after:
                generations[digest] = seen.generation
                stale.append((seen.checked_s, digest, load, seen.generation))
            else:
                generations[digest] = seen.generation
        stale.sort(key=lambda item: item[0])
        work.extend((digest, load, generation) for _, digest, load, generation in stale[:self.recheck_limit])

        async def ensure(item: tuple[bytes, Callable[[], bytes], int | None]) -> None:
            digest, load, recorded = item
            generations[digest] = await self._ensure_one(digest, load, recorded)

        await for_each(work, ensure, self.concurrency)
        return generations

    async def _ensure_one(self, digest: bytes, load: Callable[[], bytes], recorded: int | None) -> int:
        ident = chunk_ident(self.scope, digest)
        now = int(time.time())
        start = 0
        if recorded is not None:
            self.stats.rechecked += 1
            if await self.client.stat(self.keys.message_id(ident, recorded)):
                self.record.note(digest, recorded, now)
                return recorded
            log.warning("index chunk %s (generation %d) is gone from the server: posting it again",
                        digest[:8].hex(), recorded)
            self.stats.lost += 1
            self.record.forget(digest)
            start = recorded + 1
        for generation in range(start, start + articles.GENERATIONS_PROBED):
            try:
                payload = await articles.fetch(self.client, self.keys, ident, generation, self.limiter)
            except E.ArticleNotFound:
                data = await trio.to_thread.run_sync(load, limiter=self.limiter)
                verified, body_size = await articles.post(self.poster, self.keys, ident, data,
                                                          self.settings.group, self.limiter,
                                                          generation=generation)
                self.stats.posted += 1
                self.stats.posted_bytes += body_size
                self.record.note(digest, verified, now)
                return verified
            except CodecError:
                continue  # someone else's article under this id: try the next one
            if await trio.to_thread.run_sync(chunk_digest, self.hash_key, payload, limiter=self.limiter) == digest:
                self.stats.found += 1
                self.record.note(digest, generation, now)
                return generation
            # another chunk whose hash starts with the same 64 bits: the next generation
        raise UserError(f"index chunk {digest[:8].hex()}: generations {start} to "
                        f"{start + articles.GENERATIONS_PROBED - 1} are all taken by other articles")

