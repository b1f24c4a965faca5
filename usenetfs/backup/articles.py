"""One backup article (a chunk, a manifest, the bootstrap): posted and read back, or
fetched and authenticated.

Each is encrypted under its own key, HKDF(index key, "usenetfs/v1/segment-key/" ||
SegmentId) (store/base.py's `segment_key`, applied to the index key instead of the data
key), with its identity in the AEAD's associated data, so an article cannot stand in for
another. The bootstrap uses keys derived from the passphrase instead of the volume's.

Encoding and decoding run in worker threads behind the caller's `CapacityLimiter`.
"""

from __future__ import annotations

import trio

from ..codec.article import build_article
from ..codec.errors import CodecError
from ..codec.segment import SegmentCodec, SegmentId
from ..keys import VolumeKeys
from ..nntp import errors as E
from ..nntp.client import NNTPClient
from ..nntp.posting import ArticlePoster
from ..store.base import segment_key

GENERATIONS_PROBED = 3  # Message-ID generations tried for an article whose generation is unknown


def _codec(keys: VolumeKeys, ident: SegmentId) -> SegmentCodec:
    return SegmentCodec(segment_key(keys.index_key, ident))


async def post(poster: ArticlePoster, keys: VolumeKeys, ident: SegmentId, payload: bytes, group: str,
               limiter: trio.CapacityLimiter, *, generation: int = 0,
               may_exist: bool = False) -> tuple[int, int]:
    """Post `payload` as article `ident` and read it back; (generation verified, body bytes).

    A later generation (the first was lost or taken) carries the same body: the identity
    in the AAD does not include the generation, so it authenticates under any of them.
    """
    body = await trio.to_thread.run_sync(lambda: _codec(keys, ident).encode(ident, payload).body,
                                         limiter=limiter)

    def make(gen: int) -> tuple[str, bytes]:
        message_id = keys.message_id(ident, gen)
        return message_id, build_article(message_id, group, body)

    result = await poster.post_verified(make, generation=generation, may_exist=may_exist, dot_free=True)
    return result.generation, len(body)


async def fetch(client: NNTPClient, keys: VolumeKeys, ident: SegmentId, generation: int,
                limiter: trio.CapacityLimiter) -> bytes:
    """The authenticated payload of `ident` under `generation`; `ArticleNotFound` if the
    server does not have it, a `CodecError` if what it has is not that article."""
    body = await client.body(keys.message_id(ident, generation), stuffed=True)  # yEnc un-stuffs
    return await trio.to_thread.run_sync(lambda: _codec(keys, ident).decode(ident, body), limiter=limiter)


async def fetch_first(client: NNTPClient, keys: VolumeKeys, ident: SegmentId,
                      limiter: trio.CapacityLimiter) -> bytes | None:
    """The first generation of `ident` that exists and authenticates, or None."""
    for generation in range(GENERATIONS_PROBED):
        try:
            return await fetch(client, keys, ident, generation, limiter)
        except (E.ArticleNotFound, CodecError):
            continue
    return None


async def exists(client: NNTPClient, keys: VolumeKeys, ident: SegmentId) -> bool:
    """Whether the server has `ident` under any of the generations probed (STAT)."""
    for generation in range(GENERATIONS_PROBED):
        if await client.stat(keys.message_id(ident, generation)):
            return True
    return False
