"""The manifest of one index backup: which chunks, in which order, make the snapshot.

A manifest is one `KIND_INDEX` article numbered `MANIFEST_BASE | seq`, posted only after
every chunk it names was read back, so a manifest on the server always describes a
complete backup. Its payload is JSON:

    {"version": 1, "seq": n, "created": unix seconds, "db_size": bytes,
     "chunk_size": bytes, "chunks": count,
     "list": [[digest hex, generation], ...],   the chunks holding the chunk list
     "settings": {...}}                         the volume settings at that backup

The chunk list itself (`count` entries of digest(32) || generation(4, big-endian), in file
order) is cut into chunks and posted like the index's own, so the manifest stays one
small article whatever the index size, and the list's unchanged parts are shared too. At
the design scale (1.4 GB, 256 KiB chunks) the list is 5.6K entries, 200 KB: one chunk.

Pure: encoding, decoding and validation. Anything malformed is a `UserError` naming the
backup, since a manifest only decodes at all if it authenticated under the volume's key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ..codec.segment import KIND_INDEX, SegmentId
from ..errors import UserError
from .chunks import DIGEST_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, ChunkRef

MANIFEST_BASE = 1 << 62  # KIND_INDEX numbers: MANIFEST_BASE | seq
MAX_SEQ = (1 << 62) - 2  # below BOOTSTRAP_NUMBER's bits
FORMAT_VERSION = 1
ENTRY_SIZE = DIGEST_SIZE + 4


@dataclass
class Manifest:
    seq: int
    db_size: int
    chunk_size: int
    chunks: int  # entries in the chunk list
    list_chunks: list[ChunkRef]  # where the chunk list is stored
    settings: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        return json.dumps({
            "version": FORMAT_VERSION, "seq": self.seq, "created": self.created,
            "db_size": self.db_size, "chunk_size": self.chunk_size, "chunks": self.chunks,
            "list": [[ref.digest.hex(), ref.generation] for ref in self.list_chunks],
            "settings": self.settings,
        }).encode()

    @classmethod
    def decode(cls, raw: bytes, seq: int) -> Manifest:
        where = f"index backup {seq}: its manifest"
        try:
            data = json.loads(raw)
            if data.get("version") != FORMAT_VERSION:
                raise UserError(f"{where} has format {data.get('version')!r}, which this "
                                "version of usenetfs cannot read")
            manifest = cls(seq=data["seq"], db_size=data["db_size"], chunk_size=data["chunk_size"],
                           chunks=data["chunks"],
                           list_chunks=[ChunkRef(_digest(d), _generation(g)) for d, g in data["list"]],
                           settings=data.get("settings") or {}, created=data.get("created", 0.0))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{where} is malformed") from None
        if manifest.seq != seq:
            raise UserError(f"{where} says it is backup {manifest.seq}")
        if not (MIN_CHUNK_SIZE <= manifest.chunk_size <= MAX_CHUNK_SIZE
                and isinstance(manifest.db_size, int) and isinstance(manifest.chunks, int)
                and manifest.chunks == -(-manifest.db_size // manifest.chunk_size)
                and isinstance(manifest.settings, dict)):
            raise UserError(f"{where} is inconsistent (size, chunk size and chunk count disagree)")
        return manifest


def manifest_ident(scope: bytes, seq: int) -> SegmentId:
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"backup number {seq} out of range")
    return SegmentId(scope, KIND_INDEX, MANIFEST_BASE | seq)


def encode_list(refs: list[ChunkRef]) -> bytes:
    return b"".join(ref.digest + ref.generation.to_bytes(4, "big") for ref in refs)


def decode_list(data: bytes, count: int, seq: int) -> list[ChunkRef]:
    if len(data) != count * ENTRY_SIZE:
        raise UserError(f"index backup {seq}: its chunk list has {len(data)} bytes, "
                        f"{count * ENTRY_SIZE} expected")
    return [ChunkRef(data[i:i + DIGEST_SIZE], int.from_bytes(data[i + DIGEST_SIZE:i + ENTRY_SIZE], "big"))
            for i in range(0, len(data), ENTRY_SIZE)]


def _digest(text) -> bytes:
    digest = bytes.fromhex(text)
    if len(digest) != DIGEST_SIZE:
        raise ValueError("digest size")
    return digest


def _generation(value) -> int:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise ValueError("generation")
    return value
