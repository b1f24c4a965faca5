"""A share's articles on the server: signed documents (keyrings, roots) and tree objects.

Built on the backup package's pieces: `backup.articles` (one article posted and read back,
or fetched and authenticated, under `VolumeKeys` derived from a share key), `ChunkRecord`
(which objects the server is known to have), `for_each` (a bounded number in flight) and
`newest_backup` (the highest number present, by STAT: 1, 2, 4, ... then a binary search).

- Documents live at `KIND_INDEX` numbers `2^62 | n`: keyrings under the access key's
  `VolumeKeys`, roots under the epoch key's. A reader takes, for a number, the first
  Message-ID generation whose payload carries the publisher's signature, so an article
  someone else posted first under that id (anyone holding the key can) is stepped over;
  and if the newest number holds nothing genuine it walks down to the previous ones.
- Objects are content-addressed like index-backup chunks (`KIND_INDEX_CHUNK`, number =
  the digest's first 64 bits); every reference carries the full digest and the generation,
  and a reader checks the digest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ..backup import articles as backup_articles
from ..backup.bounded import for_each
from ..backup.chunks import chunk_ident
from ..backup.manifest import manifest_ident
from ..backup.record import ChunkRecord
from ..backup.restore import newest_backup
from ..codec.errors import CodecError
from ..errors import UserError
from ..keys import VolumeKeys
from ..nntp import errors as E
from ..nntp.client import NNTPClient
from ..nntp.posting import ArticlePoster
from .documents import Forged
from .tree import Ref, digest as object_digest

log = logging.getLogger(__name__)

GENERATIONS = backup_articles.GENERATIONS_PROBED
WALK_BACK = 16  # numbers below the newest tried when the newest holds no genuine document
CONCURRENCY = 16


async def newest_number(client: NNTPClient, keys: VolumeKeys, share_id: bytes) -> int:
    return await newest_backup(client, keys, share_id)


async def fetch_document(client: NNTPClient, keys: VolumeKeys, share_id: bytes, number: int,
                         limiter: trio.CapacityLimiter, open_payload: Callable[[bytes], object]):
    """The document numbered `number` that `open_payload` accepts (it raises Forged for
    the others), or None if no generation holds one."""
    ident = manifest_ident(share_id, number)
    for generation in range(GENERATIONS):
        try:
            payload = await backup_articles.fetch(client, keys, ident, generation, limiter)
        except E.ArticleNotFound:
            continue
        except CodecError as error:
            log.warning("share document %d, generation %d: not ours (%s)", number, generation,
                        type(error).__name__)
            continue
        try:
            return open_payload(payload)
        except Forged as error:
            log.warning("share document %d, generation %d: rejected: %s", number, generation, error)
    return None


async def newest_document(client: NNTPClient, keys: VolumeKeys, share_id: bytes, limiter: trio.CapacityLimiter,
                          open_payload: Callable[[int, bytes], object], what: str):
    """(number, document) of the newest genuine document, or (0, None) if none exists."""
    newest = await newest_number(client, keys, share_id)
    for number in range(newest, max(0, newest - WALK_BACK), -1):
        document = await fetch_document(client, keys, share_id, number, limiter,
                                        lambda payload, n=number: open_payload(n, payload))
        if document is not None:
            return number, document
    if newest:
        raise UserError(f"the share's {what} {newest} and the {WALK_BACK - 1} before it are not signed by its "
                        "publisher (forged or damaged articles)")
    return 0, None


async def post_document(poster: ArticlePoster, keys: VolumeKeys, share_id: bytes, number: int, payload: bytes,
                        group: str, limiter: trio.CapacityLimiter) -> int:
    """Post a signed document under `number`; the generation it was verified under."""
    generation, _ = await backup_articles.post(poster, keys, manifest_ident(share_id, number), payload, group,
                                               limiter)
    return generation


async def number_taken(client: NNTPClient, keys: VolumeKeys, share_id: bytes, number: int) -> bool:
    return await backup_articles.exists(client, keys, manifest_ident(share_id, number))


class ObjectPoster:
    """Makes sure tree objects are on the server, posting only those it does not have."""

    def __init__(self, client: NNTPClient, poster: ArticlePoster, keys: VolumeKeys, share_id: bytes, group: str,
                 hash_key: bytes, record_path: Path, limiter: trio.CapacityLimiter):
        self.client = client
        self.poster = poster
        self.keys = keys
        self.share_id = share_id
        self.group = group
        self.hash_key = hash_key
        self.limiter = limiter
        self.record = ChunkRecord.load(record_path, share_id.hex() + keys.key_check().hex()[:8])
        self.posted = 0
        self.posted_bytes = 0

    def known(self, digest: bytes) -> Ref | None:
        seen = self.record.get(digest)
        return None if seen is None else Ref(digest, seen.generation)

    async def ensure(self, objects: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
        """Each (digest, data) on the server; the generation of each."""
        out: dict[bytes, int] = {}
        todo = []
        for d, data in objects:
            seen = self.record.get(d)
            if seen is not None:
                out[d] = seen.generation
            elif d not in out:
                out[d] = -1
                todo.append((d, data))

        async def one(item: tuple[bytes, bytes]) -> None:
            d, data = item
            out[d] = await self._ensure_one(d, data)

        await for_each(todo, one, CONCURRENCY)
        return out

    async def _ensure_one(self, d: bytes, data: bytes) -> int:
        ident = chunk_ident(self.share_id, d)
        now = int(time.time())
        for generation in range(GENERATIONS):
            try:
                payload = await backup_articles.fetch(self.client, self.keys, ident, generation, self.limiter)
            except E.ArticleNotFound:
                verified, size = await backup_articles.post(self.poster, self.keys, ident, data, self.group,
                                                            self.limiter, generation=generation)
                self.posted += 1
                self.posted_bytes += size
                self.record.note(d, verified, now)
                return verified
            except CodecError:
                continue  # someone else's article under this id
            if payload == data:
                self.record.note(d, generation, now)
                return generation
        raise UserError(f"share object {d[:8].hex()}: generations 0 to {GENERATIONS - 1} are taken by other "
                        "articles")

    def close(self) -> None:
        self.record.close()


class ObjectFetcher:
    """Tree objects from the server (or the local cache of ones already checked)."""

    def __init__(self, client: NNTPClient, keys: VolumeKeys, share_id: bytes, hash_key: bytes, cache_dir: Path,
                 limiter: trio.CapacityLimiter):
        self.client = client
        self.keys = keys
        self.share_id = share_id
        self.hash_key = hash_key
        self.cache_dir = cache_dir
        self.limiter = limiter
        self.fetched = 0
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, d: bytes) -> Path:
        return self.cache_dir / d.hex()

    async def get(self, ref: Ref, what: str) -> bytes:
        path = self._path(ref.digest)
        try:
            data = await trio.to_thread.run_sync(path.read_bytes, limiter=self.limiter)
        except FileNotFoundError:
            data = None
        if data is not None and object_digest(self.hash_key, data) == ref.digest:
            return data
        # The reference's generation first (a hint), then the others: an article someone
        # else posted under an object's id is stepped over, the digest decides.
        problems = []
        ident = chunk_ident(self.share_id, ref.digest)
        for generation in [ref.generation] + [g for g in range(GENERATIONS) if g != ref.generation]:
            try:
                data = await backup_articles.fetch(self.client, self.keys, ident, generation, self.limiter)
            except E.ArticleNotFound:
                problems.append("is missing")
                continue
            except CodecError as error:
                problems.append(f"does not decode ({type(error).__name__}: forged or corrupt)")
                continue
            if await trio.to_thread.run_sync(object_digest, self.hash_key, data, limiter=self.limiter) != ref.digest:
                problems.append("does not match its digest (forged or tampered)")
                continue
            self.fetched += 1
            await trio.to_thread.run_sync(_write_cached, path, data, limiter=self.limiter)
            return data
        reason = next((p for p in problems if p != "is missing"), "is missing")
        raise UserError(f"the share's index is damaged on the server: {what} {reason}")

    async def get_many(self, refs: list[Ref], what: str) -> list[bytes]:
        out: list[bytes] = [b""] * len(refs)

        async def one(i: int) -> None:
            out[i] = await self.get(refs[i], f"{what} (object {refs[i].digest[:8].hex()})")

        await for_each(range(len(refs)), one, CONCURRENCY)
        return out


def _write_cached(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


__all__ = ["ObjectFetcher", "ObjectPoster", "fetch_document", "newest_document", "number_taken", "post_document"]
