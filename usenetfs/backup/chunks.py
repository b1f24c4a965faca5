"""Index snapshots cut into fixed-size chunks, each named by a keyed hash of its bytes.

Owns the chunk size, the keyed hash (BLAKE2b-256 under a key derived from the volume's
index key: equal chunks have equal hashes, and nobody without the key learns anything from
a hash), and the article identity of a chunk: `SegmentId(scope, KIND_INDEX_CHUNK, first 8
bytes of the hash)`. A chunk's article is therefore the same for every backup that
contains those bytes: unchanged chunks are shared between backups, and posting one again
after a crash lands on the id already used.

Two different chunks whose hashes share their first 64 bits would want the same id; the
second then goes under the next Message-ID generation (the manifest records each chunk's
generation), and every reader checks the full 256-bit hash anyway.

Reading and hashing are synchronous (run them in a thread).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..codec.kdf import hkdf
from ..codec.segment import KIND_INDEX_CHUNK, SegmentId
from ..keys import VolumeKeys

# 64 SQLite pages. Measured (bench_backup.py): 100 new files touch 7-13 chunks of this size;
# smaller chunks post fewer bytes per change but make more articles, a longer chunk list
# and a slower restore (one request per chunk). Must be a multiple of the 4 KiB page.
CHUNK_SIZE = 256 * 1024
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 1 << 20  # the codec's default max_plaintext
DIGEST_SIZE = 32
_HASH_LABEL = b"usenetfs/v1/backup/chunk-hash"


class ChunkRef(NamedTuple):
    """One chunk as a manifest lists it: its keyed hash and the generation verified."""

    digest: bytes
    generation: int


def hash_key(keys: VolumeKeys) -> bytes:
    return hkdf(keys.index_key, _HASH_LABEL)


def chunk_digest(key: bytes, data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=DIGEST_SIZE).digest()


def chunk_ident(scope: bytes, digest: bytes) -> SegmentId:
    return SegmentId(scope, KIND_INDEX_CHUNK, int.from_bytes(digest[:8], "big"))


def check_chunk_size(chunk_size: int) -> int:
    if not (MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size % MIN_CHUNK_SIZE == 0):
        raise ValueError(f"chunk size {chunk_size} is not a multiple of 4 KiB up to 1 MiB")
    return chunk_size


def digest_file(path: Path, key: bytes, chunk_size: int) -> list[bytes]:
    """The keyed hash of every chunk of the file at `path`, in order (the last chunk may
    be short; an empty file has none)."""
    return digest_chunks(path, key, chunk_size, range(-(-os.path.getsize(path) // chunk_size)))


def digest_chunks(path: Path, key: bytes, chunk_size: int, numbers: Iterable[int]) -> list[bytes]:
    """The keyed hash of each numbered chunk of the file at `path`, in the order given.
    (BLAKE2b releases the GIL: two threads hashing halves of a list take half the time.)"""
    digests = []
    with open(path, "rb", buffering=0) as source:
        fd = source.fileno()
        for number in numbers:
            digests.append(chunk_digest(key, os.pread(fd, chunk_size, number * chunk_size)))
    return digests


def split_bytes(data: bytes, key: bytes, chunk_size: int) -> list[tuple[bytes, bytes]]:
    """(digest, chunk) for each chunk of `data` held in memory."""
    pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    return [(chunk_digest(key, piece), piece) for piece in pieces]


def read_chunk(path: Path, number: int, chunk_size: int) -> bytes:
    return read_chunks(path, chunk_size, (number,))[0]


def read_chunks(path: Path, chunk_size: int, numbers: Iterable[int]) -> list[bytes]:
    """The numbered chunks of the file at `path`, in the order given."""
    with open(path, "rb", buffering=0) as source:
        fd = source.fileno()
        return [os.pread(fd, chunk_size, number * chunk_size) for number in numbers]
