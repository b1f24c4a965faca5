"""The `SegmentStore` contract, its result and error types, and per-segment keys.

Owns
- `SegmentStore`: what `data/` calls to put a segment payload somewhere durable and get it
  back (`put` returns only once the segment is stored AND verified; `get` returns only
  authenticated bytes);
- `PutResult` (generation, stored_size, crc32: what `Index.mark_posted` records);
- `SegmentUnavailable`: a segment that cannot be had (no such article, or it does not
  decode/authenticate). Network trouble that outlived the NNTP retry policies is NOT
  turned into this: it stays an `NNTPError`, because it says nothing about the segment;
- `segment_key` / `make_codec`: every data segment is encrypted under its own key
  HKDF-SHA256(data_key, info = LABEL || SegmentId bytes), so a share can later carry the
  32-byte keys of exactly the segments it references and nothing else.

Codec work (encode, decode, and the HKDF + AEAD set-up of ~10 µs) runs in worker threads
behind a `trio.CapacityLimiter`, except the decode of a segment read, which runs in the
connection's worker thread right after BODY (`ConnectionThreadDecoder`, bounded alike); the
functions handed to threads touch no shared state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable


from ..codec.errors import CodecError
from ..codec.segment import HEADER_SIZE, SegmentCodec, SegmentId
from ..codec.kdf import hkdf
from ..errors import UsenetfsError
from ..index.rows import SegmentRow

# The HKDF info label in front of the 25 SegmentId bytes. Part of the on-disk format:
# changing it makes every existing article unreadable.
SEGMENT_KEY_LABEL = b"usenetfs/v1/segment-key/"

DEFAULT_PAD = 716_800  # `pad=True` pads every article as if it held a full 700 KiB segment


class SegmentUnavailable(UsenetfsError):
    """Segment `segment` (segments.id) cannot be read: `reason` says why. `missing`: there
    is no article under its id (otherwise there is one, and it is not what we posted)."""

    def __init__(self, segment: int, reason: str, *, missing: bool = False):
        super().__init__(f"segment {segment}: {reason}")
        self.segment = segment
        self.reason = reason
        self.missing = missing


class PutResult(NamedTuple):
    generation: int  # the Message-ID generation that was verified
    stored_size: int  # bytes under yEnc (the encrypted blob)
    crc32: int  # unsigned CRC32 of the blob


@runtime_checkable
class SegmentStore(Protocol):
    async def put(self, seg: SegmentRow, scope_id: bytes, payload: bytes) -> PutResult:
        """Store `payload` as segment `seg` (its row is committed, state pending or later);
        return once it is stored and read back."""
        ...

    async def get(self, seg: SegmentRow, scope_id: bytes) -> bytes:
        """The verified, decrypted payload of `seg` (generation `seg.generation`), or
        `SegmentUnavailable`."""
        ...


def segment_key(data_key: bytes, ident: SegmentId) -> bytes:
    """The 32-byte key segment `ident` is encrypted under."""
    return hkdf(data_key, SEGMENT_KEY_LABEL + ident.to_bytes())


def pad_to(pad: int | bool | None) -> int | None:
    """`pad` (a payload size, True for DEFAULT_PAD, None/False for none) as SegmentCodec's
    plaintext size: the payload plus the 5-byte plaintext header."""
    if pad is None or pad is False:
        return None
    if pad is True:
        pad = DEFAULT_PAD
    if pad < 1:
        raise ValueError("pad must be a positive payload size")
    return pad + HEADER_SIZE


def max_plaintext_for(pad: int | None) -> int:
    """The codec's max_plaintext for a store padding to `pad` (a plaintext size, or None)."""
    return max(1 << 20, pad or 0)


def make_codec(data_key: bytes, ident: SegmentId, *, cipher: str, pad: int | None) -> SegmentCodec:
    """The codec of one segment (pad: plaintext size, from `pad_to`). Cheap (~10 µs) but
    not free: build it in the worker thread, next to the encode/decode it serves. (A store
    given the segment's key instead of the data key, keyed.py, builds the same codec.)"""
    return SegmentCodec(segment_key(data_key, ident), cipher=cipher, pad_to=pad, max_plaintext=max_plaintext_for(pad))


def decoded_payload(seg: SegmentRow, decode: Callable[[], bytes]) -> bytes:
    """`decode()`'s payload for `seg`, or SegmentUnavailable if the article does not
    decode (corrupt, tampered, not ours) or its payload is not the size the index says.
    Pure CPU: stores call it in a worker thread."""
    try:
        payload = decode()
    except CodecError as e:
        raise SegmentUnavailable(seg.id, f"{type(e).__name__}: {e}") from None
    if len(payload) != seg.payload_size:
        raise SegmentUnavailable(seg.id, f"payload of {len(payload)} bytes, the index says {seg.payload_size}")
    return payload


class ConnectionThreadDecoder:
    """Decoding in the worker thread that received the body (`NNTPClient.body(then=...)`):
    no hand-off through the trio thread to a codec thread and back per article (a third of
    a cold read's CPU went to such hand-offs). At most `limit` decodes at once, like the
    codec's CapacityLimiter, whatever the number of connections."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(max(1, limit))

    def then(self, seg: SegmentRow, decode: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """The `then` for BODY of `seg`: `decode(body)`'s payload, as `decoded_payload` checks it."""
        def run(body: bytes) -> bytes:
            with self._slots:
                return decoded_payload(seg, lambda: decode(body))
        return run


def data_ident(seg: SegmentRow, scope_id: bytes) -> SegmentId:
    from ..codec.segment import KIND_DATA

    return SegmentId(scope_id, KIND_DATA, seg.id)


__all__ = [
    "ConnectionThreadDecoder",
    "decoded_payload",
    "DEFAULT_PAD",
    "PutResult",
    "SEGMENT_KEY_LABEL",
    "SegmentStore",
    "SegmentUnavailable",
    "data_ident",
    "make_codec",
    "max_plaintext_for",
    "pad_to",
    "segment_key",
]
