"""The index, backed up to Usenet, and a volume rebuilt from it on a new machine.

Three kinds of article, all ordinary-looking, encrypted and under derived Message-IDs:

- **chunks**: a consistent snapshot of the index (SQLite's backup API), cut into ~700 KiB
  pieces, each a `KIND_INDEX` segment numbered `seq << 24 | attempt << 16 | i`, encrypted
  under a key derived from the volume's index key. The attempt number is recorded before
  anything is posted, so chunks of a failed attempt are never mistaken for a later one's;
- **a manifest** per backup, `KIND_INDEX` number `MANIFEST_BASE | seq`, posted last, only
  once every chunk is verified, so backup numbers with a manifest have no gaps: how many
  chunks, which attempt, the snapshot's size and SHA-256;
- **the bootstrap**: the passphrase-wrapped key envelope and the settings. Restoring starts
  with nothing but the passphrase and the volume id, so its id and key come from
  `scrypt(passphrase, salt = volume id)`. What it exposes to anyone is what `key.json` holds:
  a key wrapped by scrypt of the passphrase (choose a strong one). After `usenetfs passwd`
  the next backup posts a bootstrap under the new passphrase (new ids); the old one stays
  on the server (Usenet cannot delete) and still opens with the old passphrase.

Restore reads the bootstrap, unwraps the key, finds the newest manifest by STAT (backups are
numbered 1, 2, ...), fetches and checks the chunks, and writes the volume's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from dataclasses import asdict
from pathlib import Path

import trio
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .codec.article import build_article
from .codec.errors import CodecError
from .codec.segment import KIND_INDEX, SegmentCodec, SegmentId
from .errors import UserError
from .home import Home
from .keys import VolumeKeys, unwrap_envelope
from .nntp import errors as E
from .nntp.client import NNTPClient
from .nntp.posting import ArticlePoster, VerifyOptions
from .store.base import segment_key
from .volume import Volume, VolumeSettings, write_json_atomic

log = logging.getLogger(__name__)

CHUNK = 700 * 1024
MANIFEST_BASE = 1 << 62
BOOTSTRAP_NUMBER = (1 << 63) - 1
BOOTSTRAP_LOG_N = 15  # a second scrypt of the passphrase, bound to this volume's id
MAX_BACKUPS_PROBED = 1 << 20


def bootstrap_secret(passphrase: str, volume_id: bytes) -> bytes:
    """What the bootstrap keys come from (`usenetfs passwd` hands it to a running mount)."""
    return Scrypt(salt=b"usenetfs/bootstrap/v1" + volume_id, length=32, n=1 << BOOTSTRAP_LOG_N,
                  r=8, p=1).derive(passphrase.encode())


def bootstrap_keys(passphrase: str, volume_id: bytes) -> VolumeKeys:
    """Keys only the passphrase holder can derive, bound to one volume."""
    return VolumeKeys(bootstrap_secret(passphrase, volume_id))


def _codec(keys: VolumeKeys, ident: SegmentId) -> SegmentCodec:
    return SegmentCodec(segment_key(keys.index_key, ident))


async def _post(poster: ArticlePoster, keys: VolumeKeys, ident: SegmentId, payload: bytes,
                group: str) -> None:
    body = (await trio.to_thread.run_sync(lambda: _codec(keys, ident).encode(ident, payload))).body

    def make(generation: int) -> tuple[str, bytes]:
        message_id = keys.message_id(ident, generation)
        return message_id, build_article(message_id, group, body)

    await poster.post_verified(make, may_exist=True, dot_free=True)


async def _fetch(client: NNTPClient, keys: VolumeKeys, ident: SegmentId, generations: int = 3) -> bytes | None:
    """The first generation of `ident` that exists and decodes, or None."""
    for generation in range(generations):
        try:
            body = await client.body(keys.message_id(ident, generation))
            return await trio.to_thread.run_sync(lambda: _codec(keys, ident).decode(ident, body))
        except (E.ArticleNotFound, CodecError):
            continue
    return None


def snapshot(index_file: Path) -> bytes:
    """A consistent copy of the live index (WAL included), via SQLite's backup API."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "index.sqlite"
        source = sqlite3.connect(f"file:{index_file}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return copy.read_bytes()


async def backup(volume: Volume, settings: VolumeSettings, keys: VolumeKeys, client: NNTPClient,
                 passphrase_keys: VolumeKeys | None = None) -> int:
    """Post a snapshot of the index and its manifest (and, given the passphrase-derived
    keys, the bootstrap); return the backup number."""
    scope = bytes.fromhex(settings.volume_id)
    data = await trio.to_thread.run_sync(snapshot, volume.index_file)
    seq = settings.last_backup + 1
    attempt = settings.backup_attempts  # recorded before posting: intent first
    settings.backup_attempts = (attempt + 1) % 256
    volume.save(settings)
    poster = ArticlePoster(client, VerifyOptions(delay=0.0, tries=6, interval=1.0))
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    if len(chunks) > 1 << 16:
        raise UserError("the index is too large for one backup (more than 65,536 chunks)")
    async with trio.open_nursery() as nursery:
        for number, chunk in enumerate(chunks):
            nursery.start_soon(_post, poster, keys, _chunk_id(scope, seq, attempt, number),
                               chunk, settings.group)
    manifest = {"seq": seq, "attempt": attempt, "chunks": len(chunks), "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
    await _post(poster, keys, SegmentId(scope, KIND_INDEX, MANIFEST_BASE | seq),
                json.dumps(manifest).encode(), settings.group)
    bootstrap_id = SegmentId(scope, KIND_INDEX, BOOTSTRAP_NUMBER)
    if passphrase_keys is not None and await _fetch(client, passphrase_keys, bootstrap_id) is None:
        # Posted once per passphrase (a new passphrase derives new ids): re-posting it would
        # make a new encryption of it each time, which read-back rightly calls different.
        stored = json.loads(volume.key_file.read_text())
        bootstrap = {"envelope": stored["envelope"], "key_check": stored["key_check"],
                     "settings": asdict(settings)}
        await _post(poster, passphrase_keys, bootstrap_id, json.dumps(bootstrap).encode(),
                    settings.group)
    settings.last_backup = seq
    volume.save(settings)
    log.info("index backup %d posted: %d bytes in %d articles", seq, len(data), len(chunks))
    return seq


async def restore(home: Home, name: str, volume_id_hex: str, passphrase: str, client: NNTPClient,
                  servers: list[str], progress=None) -> tuple[Volume, int]:
    """Rebuild volume `name` in `home` from Usenet alone; `progress(chunks_fetched, chunks)`."""
    try:
        scope = bytes.fromhex(volume_id_hex)
        assert len(scope) == 16
    except (ValueError, AssertionError):
        raise UserError(f"invalid volume id {volume_id_hex!r}: 32 hex digits expected") from None
    volume = Volume(home.ensure(), name)
    if volume.exists():
        raise UserError(f"volume {name!r} already exists in this home")
    pkeys = await trio.to_thread.run_sync(bootstrap_keys, passphrase, scope)
    raw = await _fetch(client, pkeys, SegmentId(scope, KIND_INDEX, BOOTSTRAP_NUMBER))
    if raw is None:
        raise UserError("no backup of this volume found on the server (wrong volume id or passphrase?)")
    bootstrap = json.loads(raw)
    master = await trio.to_thread.run_sync(unwrap_envelope, bootstrap["envelope"], passphrase)
    keys = VolumeKeys(master)
    seq = await _newest_backup(client, keys, scope)
    if not seq:
        raise UserError("the volume's key is on the server but no index backup is")
    manifest = json.loads(await _fetch(client, keys, SegmentId(scope, KIND_INDEX, MANIFEST_BASE | seq)))
    chunks: list[bytes | None] = [None] * manifest["chunks"]

    async def get(number: int) -> None:
        chunks[number] = await _fetch(client, keys, _chunk_id(scope, seq, manifest["attempt"], number))
        if progress is not None:
            progress(sum(chunk is not None for chunk in chunks), len(chunks))

    async with trio.open_nursery() as nursery:
        for number in range(manifest["chunks"]):
            nursery.start_soon(get, number)
    if any(chunk is None for chunk in chunks):
        raise UserError(f"index backup {seq} is incomplete on the server")
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"] or len(data) != manifest["size"]:
        raise UserError(f"index backup {seq} does not match its manifest")
    settings = VolumeSettings(**{k: v for k, v in bootstrap["settings"].items()
                                 if k in VolumeSettings.__dataclass_fields__})
    settings.name, settings.servers, settings.last_backup = name, servers, seq
    for directory in (volume.config_dir, volume.data_dir, volume.cache_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(volume.key_file, {"envelope": bootstrap["envelope"], "key_check": bootstrap["key_check"]})
    write_json_atomic(volume.secrets_file, {})
    tmp = volume.index_file.with_suffix(".restoring")
    tmp.write_bytes(data)
    os.replace(tmp, volume.index_file)
    volume.save(settings)
    return volume, seq


def _chunk_id(scope: bytes, seq: int, attempt: int, number: int) -> SegmentId:
    return SegmentId(scope, KIND_INDEX, seq << 24 | attempt << 16 | number)


async def _newest_backup(client: NNTPClient, keys: VolumeKeys, scope: bytes) -> int:
    """The highest n whose manifest exists: exponential probe, then binary search (STAT)."""
    async def exists(seq: int) -> bool:
        ident = SegmentId(scope, KIND_INDEX, MANIFEST_BASE | seq)
        for generation in range(3):
            if await client.stat(keys.message_id(ident, generation)):
                return True
        return False

    if not await exists(1):
        return 0
    low, high = 1, 2
    while high < MAX_BACKUPS_PROBED and await exists(high):
        low, high = high, high * 2
    while high - low > 1:  # exists(low) and not exists(high)
        middle = (low + high) // 2
        if await exists(middle):
            low = middle
        else:
            high = middle
    return low
