"""`KeyedSegmentStore`: reading segments whose keys are given, not derived (a mounted share).

A subscriber has no volume keys: the share index carries, for each segment it references,
the segment's own key and the local part of its Message-ID (docs/shares.md). This store
looks both up (`secrets(segment id)`, the mirror index's table) and otherwise decodes
exactly like `NNTPSegmentStore.get`: BODY, yEnc, AEAD under that key with the segment's
identity in the associated data, length check against the index. It never posts.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..codec.segment import SegmentCodec
from ..index.rows import SegmentRow
from ..nntp.client import NNTPClient
from ..nntp.errors import ArticleNotFound
from .base import ConnectionThreadDecoder, PutResult, SegmentUnavailable, data_ident, max_plaintext_for


class ReadOnlyStore(Exception):
    """A keyed store cannot post: the share is read-only."""


class KeyedSegmentStore:
    """secrets: segment id -> (key, Message-ID locator) or None; domain: the Message-IDs'
    right-hand side; cipher and pad (a plaintext size or None) as the publisher encoded."""

    def __init__(self, client: NNTPClient, secrets: Callable[[int], tuple[bytes, str] | None], *, domain: str,
                 cipher: str, pad: int | None, limiter: trio.CapacityLimiter | None = None):
        self.client = client
        self.secrets = secrets
        self.domain = domain
        self.cipher = cipher
        self.pad = pad
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(2)
        self.decoding = ConnectionThreadDecoder(int(self.limiter.total_tokens))

    def _decode(self, key: bytes, ident, body: bytes) -> bytes:
        codec = SegmentCodec(key, cipher=self.cipher, pad_to=self.pad, max_plaintext=max_plaintext_for(self.pad))
        return codec.decode(ident, body)

    async def get(self, seg: SegmentRow, scope_id: bytes) -> bytes:
        secret = self.secrets(seg.id)
        if secret is None:
            raise SegmentUnavailable(seg.id, "the share index carries no key for it")
        key, locator = secret
        ident = data_ident(seg, scope_id)
        try:
            return await self.client.body(f"<{locator}@{self.domain}>", stuffed=True,  # yEnc un-stuffs
                                          then=self.decoding.then(seg, lambda body: self._decode(key, ident, body)))
        except ArticleNotFound:
            raise SegmentUnavailable(seg.id, "article not found", missing=True) from None

    async def put(self, seg: SegmentRow, scope_id: bytes, payload: bytes) -> PutResult:
        raise ReadOnlyStore("a share is read-only")


__all__ = ["KeyedSegmentStore", "ReadOnlyStore"]
