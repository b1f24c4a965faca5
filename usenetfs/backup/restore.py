"""Rebuilding a volume on a new machine from the server alone, given its id and passphrase.

1. The bootstrap (bootstrap.py; its id and key come from the passphrase) gives the
   wrapped master key, which the passphrase unwraps.
2. The newest backup is found by STAT on manifest numbers: 1, 2, 4, ... until one is
   missing, then a binary search. Backup numbers have no gaps (a number is taken only
   once its manifest was read back), so this costs about 2·log2(n) STATs.
3. Its manifest names the chunks of the chunk list; the list names the index's chunks and
   their generations. Each chunk is fetched (a bounded number at a time), authenticated
   and checked against its keyed hash, and written at its place in a file beside the
   index's final place.
4. That file must pass SQLite's integrity check; only then is it renamed into place,
   together with the key envelope, the settings (the manifest's, newer than the
   bootstrap's) and the chunk record (so the next backup posts only what changes).

Anything missing, damaged or unreadable stops the restore with one line naming the backup
and the chunk; nothing of the volume is left behind, so it can simply be tried again.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import trio

from ..codec.errors import CodecError
from ..errors import UserError
from ..home import Home
from ..index.snapshot import check_copy
from ..keys import VolumeKeys, unwrap_envelope
from ..nntp import errors as E
from ..nntp.client import NNTPClient
from ..volume import Volume, VolumeSettings, write_json_atomic
from . import articles
from .bootstrap import bootstrap_keys, fetch_bootstrap
from .bounded import for_each
from .chunks import ChunkRef, chunk_digest, chunk_ident, hash_key
from .manifest import MAX_SEQ, Manifest, decode_list, manifest_ident
from .record import ChunkRecord, Seen

CONCURRENCY = 16  # chunks fetched at a time


async def restore(home: Home, name: str, volume_id_hex: str, passphrase: str, client: NNTPClient,
                  servers: list[str], progress=None, *, concurrency: int = CONCURRENCY) -> tuple[Volume, int]:
    """Rebuild volume `name` in `home` from the newest index backup on the server; return
    the volume and the backup's number. `progress(chunks_fetched, chunks)` as it goes."""
    try:
        scope = bytes.fromhex(volume_id_hex)
        if len(scope) != 16:
            raise ValueError
    except ValueError:
        raise UserError(f"invalid volume id {volume_id_hex!r}: 32 hex digits expected") from None
    volume = Volume(home.ensure(), name)
    if volume.exists():
        raise UserError(f"volume {name!r} already exists in this home")
    try:
        return await _Restore(volume, scope, client, concurrency, progress).run(passphrase, servers)
    except E.NNTPError as error:
        raise UserError(f"restore failed: {error}") from None
    except OSError as error:  # a full disk, a read-only home
        raise UserError(f"restore failed: {error.filename or volume.data_dir}: {error.strerror}") from None


async def newest_backup(client: NNTPClient, keys: VolumeKeys, scope: bytes) -> int:
    """The highest backup number whose manifest exists (0 if none): exponential probe,
    then binary search, by STAT."""
    async def exists(seq: int) -> bool:
        return await articles.exists(client, keys, manifest_ident(scope, seq))

    if not await exists(1):
        return 0
    low, high = 1, 2
    while high <= MAX_SEQ and await exists(high):
        low, high = high, high * 2
    while high - low > 1:  # exists(low) and not exists(high)
        middle = (low + high) // 2
        if await exists(middle):
            low = middle
        else:
            high = middle
    return low


class _Restore:
    def __init__(self, volume: Volume, scope: bytes, client: NNTPClient, concurrency: int, progress=None):
        self.volume = volume
        self.progress = progress
        self.scope = scope
        self.client = client
        self.concurrency = concurrency
        self.limiter = trio.CapacityLimiter(2)  # codec, hashing and writing threads
        self.keys: VolumeKeys | None = None
        self.hash_key = b""
        self.seq = 0

    async def run(self, passphrase: str, servers: list[str]) -> tuple[Volume, int]:
        pkeys = await trio.to_thread.run_sync(bootstrap_keys, passphrase, self.scope)
        bootstrap = await fetch_bootstrap(self.client, pkeys, self.scope, self.limiter)
        if bootstrap is None:
            raise UserError("no backup of this volume found on the server (wrong volume id or passphrase?)")
        master = await trio.to_thread.run_sync(unwrap_envelope, bootstrap["envelope"], passphrase)
        self.keys = VolumeKeys(master)
        self.hash_key = hash_key(self.keys)
        self.seq = await newest_backup(self.client, self.keys, self.scope)
        if not self.seq:
            raise UserError("the volume's key is on the server but no index backup is")
        raw = await articles.fetch_first(self.client, self.keys, manifest_ident(self.scope, self.seq),
                                         self.limiter)
        if raw is None:
            raise UserError(f"index backup {self.seq}: its manifest cannot be read from the server")
        manifest = Manifest.decode(raw, self.seq)
        list_bytes = await self._fetch_list(manifest)
        chunk_list = decode_list(list_bytes, manifest.chunks, self.seq)

        volume = self.volume
        created = [d for d in (volume.config_dir, volume.data_dir, volume.cache_dir) if not d.exists()]
        volume.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        restoring = volume.index_file.with_name(volume.index_file.name + ".restoring")
        try:
            await self._fetch_index(manifest, chunk_list, restoring)
            problem = await trio.to_thread.run_sync(check_copy, restoring)
            if problem:
                raise UserError(f"index backup {self.seq} is not a sound database ({problem}); "
                                "nothing was installed")
        except BaseException:
            restoring.unlink(missing_ok=True)
            for directory in reversed(created):
                _remove_if_empty(directory)
            raise
        self._install(bootstrap, manifest, chunk_list, restoring, servers)
        return volume, self.seq

    async def _fetch_list(self, manifest: Manifest) -> bytes:
        pieces: list[bytes] = [b""] * len(manifest.list_chunks)

        async def get(number: int) -> None:
            pieces[number] = await self._fetch_chunk(
                manifest.list_chunks[number], f"chunk {number} of {len(pieces)} of its chunk list")

        await for_each(range(len(pieces)), get, self.concurrency)
        return b"".join(pieces)

    async def _fetch_index(self, manifest: Manifest, chunk_list: list[ChunkRef], path: Path) -> None:
        places: dict[ChunkRef, list[int]] = defaultdict(list)
        for number, ref in enumerate(chunk_list):
            places[ref].append(number)  # equal chunks (runs of free pages) are fetched once
        size, db_size = manifest.chunk_size, manifest.db_size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fetched = 0
        try:
            os.ftruncate(fd, db_size)

            async def get(ref: ChunkRef) -> None:
                numbers = places[ref]
                data = await self._fetch_chunk(ref, f"chunk {numbers[0]} of {len(chunk_list)}")
                for number in numbers:
                    expected = min(size, db_size - number * size)
                    if len(data) != expected:
                        raise UserError(f"index backup {self.seq} is damaged: chunk {number} holds "
                                        f"{len(data)} bytes, {expected} expected")
                    await trio.to_thread.run_sync(os.pwrite, fd, data, number * size, limiter=self.limiter)
                nonlocal fetched
                fetched += len(numbers)
                if self.progress is not None:
                    self.progress(fetched, len(chunk_list))

            await for_each(list(places), get, self.concurrency)
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    async def _fetch_chunk(self, ref: ChunkRef, what: str) -> bytes:
        """Chunk `ref`, authenticated and matching its hash, or one line saying why not."""
        where = f"index backup {self.seq} is damaged on the server: {what}"
        try:
            data = await articles.fetch(self.client, self.keys, chunk_ident(self.scope, ref.digest),
                                        ref.generation, self.limiter)
        except E.ArticleNotFound:
            raise UserError(f"{where} is missing") from None
        except CodecError as error:
            raise UserError(f"{where} does not decode ({type(error).__name__})") from None
        if await trio.to_thread.run_sync(chunk_digest, self.hash_key, data, limiter=self.limiter) != ref.digest:
            raise UserError(f"{where} does not match its hash")
        return data

    def _install(self, bootstrap: dict, manifest: Manifest, chunk_list: list[ChunkRef], restoring: Path,
                 servers: list[str]) -> None:
        volume = self.volume
        known = VolumeSettings.__dataclass_fields__
        merged = {**(bootstrap.get("settings") or {}), **manifest.settings}
        settings = VolumeSettings(**{k: v for k, v in merged.items() if k in known})
        settings.name, settings.servers, settings.last_backup = volume.name, servers, self.seq
        settings.volume_id = self.scope.hex()
        for directory in (volume.config_dir, volume.data_dir, volume.cache_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(volume.key_file, {"envelope": bootstrap["envelope"], "key_check": bootstrap["key_check"]})
        write_json_atomic(volume.secrets_file, {})
        os.replace(restoring, volume.index_file)
        _fsync_directory(volume.data_dir)
        # Every chunk was just read and checked: the next backup need not look for them.
        now = int(time.time())
        seen = {ref.digest: Seen(ref.generation, now) for ref in chunk_list + manifest.list_chunks}
        ChunkRecord(volume.backup_record_file, settings.volume_id, seen).rewrite(set(seen))
        volume.save(settings)  # last: until now, the volume does not exist


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
