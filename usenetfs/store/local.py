"""`LocalSegmentStore`: the SegmentStore contract on a local directory.

Owns a directory of encoded article bodies, one file per segment generation, named by the
local part of the segment's derived Message-ID (`<dir>/<2 chars>/<26 chars>`). It runs the
very same codec as the NNTP store (per-segment key, zstd, AEAD, yEnc), so it is a real
store: offline volumes, and fs-level tests that need real encryption and authentication
without a server. Files are written atomically: tmp -> fsync -> rename -> fsync(dir).

Without `keys`, the store makes a random master key once and keeps it in
`<dir>/local-store.key` (mode 0600): convenient for tests and scratch volumes, and no
weaker than the data next to it. Real volumes pass their `VolumeKeys`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import trio

from ..index.rows import SegmentRow
from ..keys import KEY_SIZE, VolumeKeys
from .base import PutResult, SegmentUnavailable, data_ident, decoded_payload, make_codec, pad_to

_KEY_FILE = "local-store.key"


def _load_or_make_key(directory: Path) -> bytes:
    path = directory / _KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_SIZE)
        _atomic_write(path, key, mode=0o600)
        return key
    if len(key) != KEY_SIZE:
        raise ValueError(f"{path}: not a {KEY_SIZE}-byte key")
    return key


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(path.parent)


class LocalSegmentStore:
    """Encoded segments as files under `directory` (created if missing)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keys: VolumeKeys | None = None,
        *,
        cipher: str = "aes-256-gcm",
        pad: int | bool | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keys = keys if keys is not None else VolumeKeys(_load_or_make_key(self.directory))
        self.cipher = cipher
        self.pad_to = pad_to(pad)
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(2)

    def path_for(self, seg: SegmentRow, scope_id: bytes, generation: int | None = None) -> Path:
        """Where generation `generation` (default: the row's) of `seg` is kept."""
        ident = data_ident(seg, scope_id)
        mid = self.keys.message_id(ident, seg.generation if generation is None else generation)
        local = mid[1 : mid.index("@")]
        return self.directory / local[:2] / local

    def _put_sync(self, seg: SegmentRow, scope_id: bytes, payload: bytes) -> PutResult:
        ident = data_ident(seg, scope_id)
        enc = make_codec(self.keys.data_key, ident, cipher=self.cipher, pad=self.pad_to).encode(ident, payload)
        path = self.path_for(seg, scope_id)
        path.parent.mkdir(exist_ok=True)
        _atomic_write(path, enc.body)
        return PutResult(seg.generation, enc.stored_size, enc.crc32)

    def _get_sync(self, seg: SegmentRow, scope_id: bytes) -> bytes:
        ident = data_ident(seg, scope_id)
        try:
            body = self.path_for(seg, scope_id).read_bytes()
        except FileNotFoundError:
            raise SegmentUnavailable(
                seg.id, f"article not found (generation {seg.generation})", missing=True
            ) from None
        return decoded_payload(
            seg, lambda: make_codec(self.keys.data_key, ident, cipher=self.cipher, pad=self.pad_to).decode(ident, body)
        )

    async def put(self, seg: SegmentRow, scope_id: bytes, payload: bytes) -> PutResult:
        # Encode and write in one thread call: the write is local disk I/O, the encode
        # pure CPU; both must stay off the event loop.
        return await trio.to_thread.run_sync(self._put_sync, seg, scope_id, payload, limiter=self.limiter)

    async def get(self, seg: SegmentRow, scope_id: bytes) -> bytes:
        return await trio.to_thread.run_sync(self._get_sync, seg, scope_id, limiter=self.limiter)


__all__ = ["LocalSegmentStore"]
