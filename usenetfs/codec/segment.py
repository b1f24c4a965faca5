"""One segment payload <-> one article body: compress, pad, encrypt, yEnc, and back.

Owns `SegmentId` (what an article *is*: scope, kind, number), `EncodedSegment`, and
`SegmentCodec`, the pure, synchronous pipeline

    payload -> [zstd, only if a 64 KiB probe shrinks >= 5%] -> plaintext
            -> AEAD (AES-256-GCM or ChaCha20-Poly1305, identity in the AAD)
            -> blob = nonce(12) || keycheck(4) || ciphertext || tag(16)
            -> single-part yEnc body (see codec/yenc.py)

Plaintext (inside the AEAD): flags(1: bit0 compressed, bit1 padded) || content_len(4 BE)
|| content || zero padding. With `pad_to`, every plaintext is exactly `pad_to` bytes, so
every article has the same yEnc `size=`.

Nothing in the clear is constant: no magic, no version byte. The nonce is random, the
keycheck is a keyed hash of it (random-looking, yet lets decode tell a wrong key from a
forged article), and the version lives only in the AAD.

Thread safety: a `SegmentCodec` holds only immutable state (the AEAD objects of
`cryptography` are safe to share). Zstd (de)compressors are not thread safe, so each
thread gets its own, as well as reusable scratch buffers: fresh memory is expensive on
the target machines (baselines.md), so the per-article 700 KB intermediates are written
into per-thread bytearrays that stay warm. Nothing returned ever aliases those buffers.
"""

from __future__ import annotations

import hmac
import os
import threading
from dataclasses import dataclass
from functools import cached_property

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import yenc
from .kdf import hkdf
from .errors import NotOurArticle, TamperedArticle, TruncatedArticle, WrongKey

KIND_DATA = 0  # file data: number = segments.id
KIND_INDEX = 1  # index backup manifests and the bootstrap: number from usenetfs.backup
KIND_INDEX_CHUNK = 2  # index backup chunks: number = the first 8 bytes of their keyed hash

NONCE_SIZE = 12
KEYCHECK_SIZE = 4
TAG_SIZE = 16
HEADER_SIZE = 5  # flags(1) + content_len(4)
PREFIX_SIZE = NONCE_SIZE + KEYCHECK_SIZE
OVERHEAD = PREFIX_SIZE + TAG_SIZE + HEADER_SIZE  # blob size of an empty payload

_FLAG_COMPRESSED = 0x01
_FLAG_PADDED = 0x02
_KNOWN_FLAGS = _FLAG_COMPRESSED | _FLAG_PADDED

_AAD_LABEL = b"usenetfs/segment/v1"
# The id byte in the AAD: an article is only valid under the cipher it was made with.
_CIPHERS = {
    "aes-256-gcm": (1, AESGCM),
    "chacha20-poly1305": (2, ChaCha20Poly1305),
}

PROBE_SIZE = 64 * 1024
# Compress only if the level-1 probe saves at least 5%: below that, zstd costs far more
# CPU than the few bytes it saves (incompressible data is ~10x faster to skip).
_PROBE_RATIO = 0.95

_local = threading.local()


@dataclass(frozen=True, slots=True)
class SegmentId:
    """Which article this is: bound into the AAD and into the Message-ID."""

    scope: bytes  # 16 bytes: the volume/share id
    kind: int  # KIND_DATA (0), KIND_INDEX (1) or KIND_INDEX_CHUNK (2); one byte on the wire
    number: int  # u64

    def __post_init__(self) -> None:
        if not isinstance(self.scope, bytes) or len(self.scope) != 16:
            raise ValueError("SegmentId.scope must be 16 bytes")
        if not 0 <= self.kind <= 0xFF:
            raise ValueError("SegmentId.kind must fit in one byte")
        if not 0 <= self.number < 1 << 64:
            raise ValueError("SegmentId.number must be a u64")

    def to_bytes(self) -> bytes:
        """scope(16) || kind(1) || number(8 BE): the canonical 25-byte encoding."""
        return self.scope + bytes((self.kind,)) + self.number.to_bytes(8, "big")


@dataclass(frozen=True)
class EncodedSegment:
    """One encoded article body, held as three pieces so a transport can send them
    without joining (`body` joins them on first use and keeps the result)."""

    parts: tuple[bytes, bytes, bytes]  # (=ybegin+=ypart lines, yEnc data, CRLF+=yend line)
    stored_size: int  # bytes under yEnc (the `size=`): the encrypted blob
    crc32: int  # CRC32 of the blob (the pcrc32)
    compressed: bool
    payload_size: int

    @cached_property
    def body(self) -> bytes:
        """The full yEnc body: CRLF line endings, ends with CRLF. A 740 KB copy: a
        transport that can write `parts` one after another should do that instead."""
        return b"".join(self.parts)

    @property
    def body_size(self) -> int:
        return len(self.parts[0]) + len(self.parts[1]) + len(self.parts[2])


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Stop glibc from handing our ~1 MB buffers back to the kernel after every article.

    PROCESS-WIDE; call once at daemon start-up if wanted. Returns False when not on glibc.

    Why: glibc serves allocations above a dynamic threshold (it settles near the largest
    block freed so far, ~740 KB here) from the heap, and trims the heap top once more than
    twice that is free. One encode has three ~730 KB temporaries alive at once (blob,
    yEnc output, body), so every call trims and then page-faults ~2 MB back in: encode of
    a 716,800-byte random payload measured 1,050 us untuned vs 216 us tuned on the
    2-core target (baselines.md: "fresh memory is expensive"). Setting only the trim
    threshold is worse (it also pins mmap_threshold at 128 KiB, so every big block is
    mmap'ed); both must be set. Cost: up to `trim_threshold` of freed memory per malloc
    arena stays mapped (RSS), which `malloc_trim(0)` can release when idle.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold)
    )


def _scratch(name: str, size: int) -> bytearray:
    """A per-thread bytearray of at least `size` bytes, reused across calls (warm pages)."""
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        setattr(_local, name, buf)
    return buf


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comps = getattr(_local, "compressors", None)
    if comps is None:
        comps = _local.compressors = {}
    comp = comps.get(level)
    if comp is None:
        # write_content_size: decode uses the declared size to bound decompression.
        comp = comps[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


class SegmentCodec:
    """Turns payloads into article bodies and back, under one key. Thread safe."""

    def __init__(
        self,
        key: bytes,
        *,
        cipher: str = "aes-256-gcm",
        zstd_level: int = 3,
        pad_to: int | None = None,
        max_plaintext: int = 1 << 20,
    ) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("key must be 32 bytes")
        if cipher not in _CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r}; use one of {sorted(_CIPHERS)}")
        if not 1 <= zstd_level <= 22:
            raise ValueError("zstd_level must be 1..22")
        if max_plaintext < 1 or max_plaintext >= 1 << 32:
            raise ValueError("max_plaintext out of range")
        if pad_to is not None and not HEADER_SIZE <= pad_to < 1 << 32:
            raise ValueError(f"pad_to must be at least {HEADER_SIZE}")
        cipher_id, aead_cls = _CIPHERS[cipher]
        self.cipher = cipher
        self.zstd_level = zstd_level
        self.pad_to = pad_to
        self.max_plaintext = max_plaintext
        # The cipher is part of both labels: one key is never used with two algorithms, and
        # an article made with the other cipher reads as WrongKey (a settings mismatch),
        # not as forgery.
        label = cipher.encode()
        self._aead = aead_cls(hkdf(key, b"usenetfs/v1/segment/aead/" + label))
        self._keycheck_key = hkdf(key, b"usenetfs/v1/segment/keycheck/" + label)
        self._cipher_byte = bytes((cipher_id,))
        # Largest plaintext (and blob) this codec writes or accepts: a padded codec still
        # reads unpadded articles (and vice versa) within max_plaintext.
        self._max_pt = max(pad_to or 0, max_plaintext + HEADER_SIZE)
        self._max_blob = PREFIX_SIZE + self._max_pt + TAG_SIZE
        self._zeros = bytes(pad_to) if pad_to is not None else b""

    @property
    def max_payload(self) -> int:
        """Largest payload encode() accepts (before compression)."""
        if self.pad_to is None:
            return self.max_plaintext
        return min(self.max_plaintext, self.pad_to - HEADER_SIZE)

    def _aad(self, ident: SegmentId) -> bytes:
        return _AAD_LABEL + ident.to_bytes() + self._cipher_byte

    def _keycheck(self, nonce: bytes | memoryview) -> bytes:
        return hmac.digest(self._keycheck_key, nonce, "sha256")[:KEYCHECK_SIZE]

    def _maybe_compress(self, mv: memoryview) -> bytes | None:
        """The compressed payload, or None when compressing does not pay."""
        n = len(mv)
        if n == 0:
            return None
        probe_in = mv[:PROBE_SIZE]
        probe = _compressor(1).compress(probe_in)
        if len(probe) > _PROBE_RATIO * len(probe_in):
            return None
        if n <= PROBE_SIZE and self.zstd_level == 1:
            out = probe  # the probe already compressed all of it
        else:
            out = _compressor(self.zstd_level).compress(mv)
        return out if len(out) < n else None

    def encode(
        self,
        ident: SegmentId,
        payload: bytes | bytearray | memoryview,
        *,
        yenc_name: str | None = None,
    ) -> EncodedSegment:
        mv = memoryview(payload)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        n = len(mv)
        if n > self.max_plaintext:
            raise ValueError(f"payload of {n} bytes exceeds max_plaintext {self.max_plaintext}")

        packed = self._maybe_compress(mv)
        content = mv if packed is None else memoryview(packed)
        clen = len(content)
        flags = 0 if packed is None else _FLAG_COMPRESSED
        if self.pad_to is not None:
            if HEADER_SIZE + clen > self.pad_to:
                raise ValueError(
                    f"payload of {n} bytes ({clen} stored) does not fit pad_to={self.pad_to}"
                )
            pt_len = self.pad_to
            flags |= _FLAG_PADDED
        else:
            pt_len = HEADER_SIZE + clen

        # Plaintext into a warm per-thread buffer (one memcpy, no fresh pages).
        pt = memoryview(_scratch("pt", pt_len))[:pt_len]
        pt[0] = flags
        pt[1:HEADER_SIZE] = clen.to_bytes(4, "big")
        pt[HEADER_SIZE : HEADER_SIZE + clen] = content
        if pt_len > HEADER_SIZE + clen:
            pt[HEADER_SIZE + clen :] = memoryview(self._zeros)[: pt_len - HEADER_SIZE - clen]

        # Encrypt straight behind the prefix in a second warm buffer; then a single copy
        # out to `bytes`, which is the only type sabctools.yenc_encode accepts.
        blob_len = PREFIX_SIZE + pt_len + TAG_SIZE
        out = memoryview(_scratch("blob", blob_len))[:blob_len]
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        out[NONCE_SIZE:PREFIX_SIZE] = self._keycheck(nonce)
        self._aead.encrypt_into(nonce, pt, self._aad(ident), out[PREFIX_SIZE:])
        blob = out.tobytes()

        parts, crc = yenc.encode_parts(
            blob, yenc_name if yenc_name is not None else yenc.random_name()
        )
        return EncodedSegment(
            parts=parts,
            stored_size=blob_len,
            crc32=crc,
            compressed=packed is not None,
            payload_size=n,
        )

    @property
    def max_stored_size(self) -> int:
        """Largest yEnc `size=` this codec writes or accepts (for yenc.check_response)."""
        return self._max_blob

    def decode(self, ident: SegmentId, body: bytes | bytearray | memoryview) -> bytes:
        """The payload `encode(ident, payload)` was given, or a CodecError subclass."""
        return self.decode_blob(ident, yenc.decode(body, max_size=self._max_blob))

    def decode_blob(self, ident: SegmentId, blob: bytes | bytearray | memoryview) -> bytes:
        """The second half of `decode`, for a blob already yEnc-decoded and checked
        (e.g. by an NNTP layer running its own sabctools.Decoder + yenc.check_response)."""
        n = len(blob)
        if n < OVERHEAD:
            raise TruncatedArticle(f"article payload of {n} bytes is shorter than the minimum")
        bv = memoryview(blob)
        if bv.ndim != 1 or bv.format != "B":
            bv = bv.cast("B")
        if n > self._max_blob:
            raise NotOurArticle("article larger than any we write")
        nonce = bv[:NONCE_SIZE]
        if not hmac.compare_digest(self._keycheck(nonce), bv[NONCE_SIZE:PREFIX_SIZE]):
            raise WrongKey("article was encrypted under a different key")
        pt_len = n - PREFIX_SIZE - TAG_SIZE
        pt = memoryview(_scratch("dpt", pt_len))[:pt_len]
        try:
            self._aead.decrypt_into(nonce, bv[PREFIX_SIZE:], self._aad(ident), pt)
        except InvalidTag:
            raise TamperedArticle(
                "article failed authentication (modified, or not this segment)"
            ) from None

        # Authenticated from here on: anything odd is a format we don't know, not damage.
        flags = pt[0]
        if flags & ~_KNOWN_FLAGS:
            raise NotOurArticle(f"unknown segment flags {flags:#x}")
        clen = int.from_bytes(pt[1:HEADER_SIZE], "big")
        end = HEADER_SIZE + clen
        if end > pt_len or (not flags & _FLAG_PADDED and end != pt_len):
            raise NotOurArticle("segment content length does not match its plaintext")
        content = pt[HEADER_SIZE:end]
        if not flags & _FLAG_COMPRESSED:
            if clen > self.max_plaintext:
                raise NotOurArticle("segment payload larger than max_plaintext")
            return content.tobytes()
        return self._decompress(content)

    def _decompress(self, content: memoryview) -> bytes:
        # zstandard ignores max_output_size when the frame declares its content size (it
        # allocates the declared size: a 1.6 KB frame made 50 MB), so bound the declared
        # size ourselves, and refuse frames that don't declare it (we always write it).
        try:
            declared = zstandard.frame_content_size(content)
        except zstandard.ZstdError:
            raise NotOurArticle("compressed segment is not a zstd frame") from None
        if declared < 0:
            raise NotOurArticle("compressed segment does not declare its size")
        if declared > self.max_plaintext:
            raise NotOurArticle(
                f"compressed segment declares {declared} bytes, over max_plaintext"
            )
        try:
            out = _decompressor().decompress(content, max_output_size=self.max_plaintext)
        except zstandard.ZstdError as e:
            raise NotOurArticle(f"compressed segment does not decompress: {e}") from None
        if len(out) != declared:
            raise NotOurArticle("compressed segment decompressed to the wrong size")
        return out


__all__ = [
    "tune_malloc",
    "KIND_DATA",
    "KIND_INDEX",
    "KIND_INDEX_CHUNK",
    "SegmentId",
    "EncodedSegment",
    "SegmentCodec",
]
