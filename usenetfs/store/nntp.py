"""`NNTPSegmentStore`: segments as articles on a Usenet server, posted and verified.

Owns the mapping segment row -> article: the SegmentId (scope, KIND_DATA, segments.id), the
per-segment codec (store/base.py), the derived Message-ID of the row's generation, and the
four headers (codec/article.py). Posting goes through `ArticlePoster.post_verified`, which
checks first when the article may already exist (a resumed or retried upload), reads it
back by BODY, and moves to the next generation only when the current one is verified
missing; `put` reports the generation that was verified, and the caller records it.

A resumed upload (`may_exist`: the row is past pending or was tried before) first reads the
row's current generation back and keeps it if it authenticates to the same payload.

Re-posts under a later generation are encoded afresh (a fresh random nonce, foundation.md)
inside `make_article`, on the trio thread: that happens only after a verified loss, so
the ~1 ms it blocks the loop is rare; the first generation is encoded in a worker thread.
"""

from __future__ import annotations

import zlib

import trio

from ..codec import yenc
from ..codec.article import article_head
from ..codec.errors import CodecError
from ..codec.segment import EncodedSegment
from ..index.rows import SegmentRow
from ..index.schema import PENDING
from ..keys import VolumeKeys
from ..nntp.client import NNTPClient
from ..nntp.errors import ArticleNotFound
from ..nntp.posting import ArticlePoster, VerifyOptions
from .base import ConnectionThreadDecoder, PutResult, SegmentUnavailable, data_ident, make_codec, pad_to


class NNTPSegmentStore:
    """Segments as verified articles in `group` on the server behind `client`.

    pad: None (no padding), a payload size every article is padded to (so all articles
    have the same size; use the segment size), or True for 700 KiB.
    limiter: the CapacityLimiter the codec threads run behind (share one per process).
    """

    def __init__(
        self,
        client: NNTPClient,
        keys: VolumeKeys,
        group: str,
        *,
        cipher: str = "aes-256-gcm",
        pad: int | bool | None = None,
        limiter: trio.CapacityLimiter | None = None,
        verify: VerifyOptions = VerifyOptions(),
        poster: ArticlePoster | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.cipher = cipher
        self.pad_to = pad_to(pad)
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(2)
        self.decoding = ConnectionThreadDecoder(int(self.limiter.total_tokens))  # for get
        self.poster = poster if poster is not None else ArticlePoster(client, verify)

    def _encode(self, ident, payload) -> EncodedSegment:
        return make_codec(self.keys.data_key, ident, cipher=self.cipher, pad=self.pad_to).encode(ident, payload)

    def _decode(self, ident, body: bytes) -> bytes:
        return make_codec(self.keys.data_key, ident, cipher=self.cipher, pad=self.pad_to).decode(ident, body)

    def _inspect(self, ident, body: bytes) -> tuple[bytes, int, int]:
        """(payload, stored_size, crc32) of an article body; CodecError if it is not ours."""
        codec = make_codec(self.keys.data_key, ident, cipher=self.cipher, pad=self.pad_to)
        blob = yenc.decode(body, max_size=codec.max_stored_size)
        return codec.decode_blob(ident, blob), len(blob), zlib.crc32(blob)

    async def _already_stored(self, seg: SegmentRow, ident, payload) -> PutResult | None:
        """The row's current generation, if it is on the server and authenticates to
        exactly `payload`. post_verified alone cannot tell: it compares bodies byte for
        byte, and our re-encoding has a fresh nonce, so a resumed upload would always
        abandon a perfectly good article and post the next generation."""
        try:
            body = await self.client.body(self.keys.message_id(ident, seg.generation), stuffed=True)
        except ArticleNotFound:
            return None
        try:
            got, stored_size, crc = await trio.to_thread.run_sync(self._inspect, ident, body, limiter=self.limiter)
        except CodecError:
            return None  # someone else's article: post_verified moves to the next generation
        if got != payload:
            return None
        return PutResult(seg.generation, stored_size, crc)

    async def put(self, seg: SegmentRow, scope_id: bytes, payload: bytes) -> PutResult:
        ident = data_ident(seg, scope_id)
        # A row that was ever tried (or got further than pending) may be on the server
        # already: look before posting.
        may_exist = seg.state != PENDING or seg.attempts > 0
        if may_exist:
            found = await self._already_stored(seg, ident, payload)
            if found is not None:
                return found
        first = await trio.to_thread.run_sync(self._encode, ident, payload, limiter=self.limiter)
        encodings: dict[int, EncodedSegment] = {}

        def make_article(generation: int) -> tuple[str, tuple[bytes, ...]]:
            enc = encodings.get(generation)
            if enc is None:
                # The first generation uses the encoding made in the thread; a re-post gets
                # a fresh nonce, so two articles never share a ciphertext.
                enc = first if not encodings else self._encode(ident, payload)
                encodings[generation] = enc
            message_id = self.keys.message_id(ident, generation)
            # In pieces: posted and compared as they are, never joined (740 KB copies).
            return message_id, (article_head(message_id, self.group), *enc.parts)

        result = await self.poster.post_verified(
            make_article,
            generation=seg.generation,
            may_exist=may_exist,
            dot_free=True,
        )
        enc = encodings[result.generation]
        return PutResult(result.generation, enc.stored_size, enc.crc32)

    async def get(self, seg: SegmentRow, scope_id: bytes) -> bytes:
        ident = data_ident(seg, scope_id)
        message_id = self.keys.message_id(ident, seg.generation)
        try:
            # Dot-stuffing is left to the yEnc decoder (sabctools), saving a scan per body;
            # decoding runs in the thread that received the body (one hand-off less each way).
            return await self.client.body(message_id, stuffed=True,
                                          then=self.decoding.then(seg, lambda body: self._decode(ident, body)))
        except ArticleNotFound:
            raise SegmentUnavailable(
                seg.id, f"article not found (generation {seg.generation})", missing=True
            ) from None


__all__ = ["NNTPSegmentStore"]
