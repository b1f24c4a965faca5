"""The local record of index chunks this volume has on the server.

A chunk is noted here only once its article was read back by BODY (or found on the
server and checked against its hash), so "in the record" means "was verified": a backup
posts only chunks that are not. With each chunk goes the generation that was verified
and when it was last seen on the server; backups re-check the oldest ones with STAT, a
bounded number each time, and post again whatever went missing.

The record is a cache, never the truth: losing it (or a line of it) only costs probing
the server again before posting. So it is a plain append-only text file, one chunk per
line (`<digest hex> <generation> <checked unix seconds>`, later lines win), under a header
naming the volume; a line torn by a crash is ignored, and a record of another volume is
not used. After each finished backup it is rewritten with only the chunks that backup
references.

Synchronous, small file I/O on the caller's thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from ..volume import write_text_atomic
from .chunks import DIGEST_SIZE

_MAGIC = "usenetfs-index-chunks v1"


class Seen(NamedTuple):
    generation: int
    checked_s: int  # Unix seconds of the last BODY or STAT that found it


class ChunkRecord:
    def __init__(self, path: Path, volume_id: str, entries: dict[bytes, Seen]):
        self.path = path
        self.volume_id = volume_id
        self.entries = entries
        self._out = None

    @classmethod
    def load(cls, path: Path, volume_id: str) -> ChunkRecord:
        entries: dict[bytes, Seen] = {}
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        if lines and lines[0] == f"{_MAGIC} {volume_id}":
            for line in lines[1:]:
                parsed = _parse(line)
                if parsed is not None:
                    entries[parsed[0]] = parsed[1]
        return cls(path, volume_id, entries)

    def get(self, digest: bytes) -> Seen | None:
        return self.entries.get(digest)

    def note(self, digest: bytes, generation: int, checked_s: int) -> None:
        """Chunk `digest` is on the server under `generation` (verified at `checked_s`)."""
        self.entries[digest] = Seen(generation, checked_s)
        if self._out is None:
            torn = False
            if not self._has_our_header():
                self.rewrite(set(self.entries))
            else:
                torn = not self._ends_with_newline()
            self._out = open(self.path, "a")
            if torn:
                self._out.write("\n")  # a line torn by a crash stays apart from the next
        self._out.write(_format(digest, self.entries[digest]))

    def forget(self, digest: bytes) -> None:
        """The server no longer has it (the next rewrite drops it; until then a later
        note() supersedes the line on disk)."""
        self.entries.pop(digest, None)

    def flush(self) -> None:
        """Make the notes so far durable (they are only a cache: called once per backup)."""
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())

    def rewrite(self, keep: set[bytes]) -> None:
        """Replace the file by the entries in `keep` (atomically)."""
        self.close()
        self.entries = {d: seen for d, seen in self.entries.items() if d in keep}
        lines = [f"{_MAGIC} {self.volume_id}\n"] + [_format(d, s) for d, s in self.entries.items()]
        write_text_atomic(self.path, "".join(lines))

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _has_our_header(self) -> bool:
        try:
            with open(self.path) as source:
                return source.readline().rstrip("\n") == f"{_MAGIC} {self.volume_id}"
        except FileNotFoundError:
            return False

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as source:
            source.seek(-1, os.SEEK_END)
            return source.read(1) == b"\n"


def _format(digest: bytes, seen: Seen) -> str:
    return f"{digest.hex()} {seen.generation} {seen.checked_s}\n"


def _parse(line: str) -> tuple[bytes, Seen] | None:
    parts = line.split()
    if len(parts) != 3 or len(parts[0]) != 2 * DIGEST_SIZE:
        return None
    try:
        return bytes.fromhex(parts[0]), Seen(int(parts[1]), int(parts[2]))
    except ValueError:
        return None
