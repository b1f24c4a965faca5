"""What the index file holds relative to the last backup, carried from one mount to the next.

A backup reads and hashes only the chunks holding pages written since the last backup,
given that backup's chunk digests (its `Basis`); the mount's Index tracks the pages
(index/changes.py). Within a mount the daemon keeps both in memory. Across mounts this
note carries them: written when a mount ends (the index closed, its WAL empty), it records
the index file's size and modification time after it was closed, the last backup's number,
chunk size, database size and digests, and the pages written since that backup. The next
mount reads it (and removes it, so a crash can never leave a stale one behind) before
opening the index: if the file and the settings' last backup still match, tracking goes
on from there, and a note with no page written means the index is exactly what that
backup holds (the mount then skips backing it up). Without a matching note the next
backup reads the whole file.

The note is only ever a reason to skip work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..index import Index
from ..volume import Volume, VolumeSettings, write_json_atomic


@dataclass(frozen=True)
class Basis:
    """The chunks of a finished backup: what the next one starts from."""

    seq: int
    chunk_size: int
    db_size: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True)
class Carried:
    basis: Basis
    pages: frozenset[int]  # written since the basis was taken


def _signature(volume: Volume) -> list[int] | None:
    """(size, mtime_ns) of the index file, or None if a write-ahead log holds more of it."""
    try:
        if os.stat(f"{volume.index_file}-wal").st_size:
            return None
    except FileNotFoundError:
        pass
    try:
        st = os.stat(volume.index_file)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def take(volume: Volume, last_backup: int) -> Carried | None:
    """What the note says about the index file (not opened yet), if it still matches it
    and backup `last_backup`. Removes the note either way."""
    try:
        note = json.loads(volume.backup_current_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    volume.backup_current_file.unlink(missing_ok=True)
    signature = _signature(volume)
    try:
        if signature is None or last_backup <= 0 or note["backup"] != last_backup or note["index"] != signature:
            return None
        digests = bytes.fromhex(note["digests"])
        size = note["digest_size"]
        basis = Basis(last_backup, int(note["chunk_size"]), int(note["db_size"]),
                      tuple(digests[i:i + size] for i in range(0, len(digests), size)))
        return Carried(basis, frozenset(int(page) for page in note["pages"]))
    except (KeyError, TypeError, ValueError):
        return None  # an older note, or a damaged one


def note(volume: Volume, basis: Basis, pages: set[int] | frozenset[int]) -> None:
    """The index file was just closed; `pages` were written since backup `basis.seq`."""
    signature = _signature(volume)
    if signature is not None and basis.seq > 0:
        write_json_atomic(volume.backup_current_file, {
            "backup": basis.seq, "index": signature, "chunk_size": basis.chunk_size, "db_size": basis.db_size,
            "digest_size": len(basis.digests[0]) if basis.digests else 32,
            "digests": b"".join(basis.digests).hex(), "pages": sorted(pages)})


def open_tracked(volume: Volume, settings: VolumeSettings) -> tuple[Index, Carried | None]:
    """The volume's index (made if there is none) for the process that owns the volume,
    writes it and backs it up (the mount daemon, an offline sync): holding its locks
    (`Index.hold_lock`), tracking the pages written, and what the last session carried
    over (None: unknown, the next backup hashes it all)."""
    carried = take(volume, settings.last_backup) if volume.index_file.exists() else None
    index = Index.open(volume.index_file) if volume.index_file.exists() else \
        Index.create(volume.index_file, scope_id=bytes.fromhex(settings.volume_id),
                     uid=os.getuid(), gid=os.getgid())
    if index.migrated:
        carried = None  # the migration rewrote pages, and its checkpoints were not tracked
    try:
        index.track_changes(carried.pages if carried is not None else None)
        index.hold_lock()
    except BaseException:
        index.close()
        raise
    return index, carried


def note_closed(volume: Volume, index: Index, basis: Basis | None) -> None:
    """After `index.close()`: carry `basis` (the newest backup's chunks) and the pages
    written since to the next session, if the tracker accounted for every write."""
    changes = index.changes
    if basis is not None and changes is not None and not changes.lost:
        note(volume, basis, changes.pages)
