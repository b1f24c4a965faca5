"""The note that the index file is, byte for byte, what the last backup holds.

A backup copies and hashes the whole index (seconds per GB) even when nothing changed, so
the mount skips it when the index had no write since the last one. Within a mount the
Index's write count tells; across mounts this note does: written when a mount ends with
no write since its last backup, it records the index file's size and modification time
after it was closed and the backup's number. The next mount reads it (and removes it,
so a crash can never leave a stale one behind) before opening the index: if the file and
the settings' last backup still match, the index as opened is the one backed up.

The note is only ever a reason to skip work: without it (or if it does not match) the
next backup runs as usual.
"""

from __future__ import annotations

import json
import os

from ..volume import Volume, write_json_atomic


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


def take(volume: Volume, last_backup: int) -> bool:
    """True if the index file (not opened yet) is exactly what backup `last_backup` holds.
    Removes the note either way."""
    try:
        note = json.loads(volume.backup_current_file.read_text())
    except (FileNotFoundError, ValueError):
        return False
    volume.backup_current_file.unlink(missing_ok=True)
    signature = _signature(volume)
    return (isinstance(note, dict) and signature is not None and last_backup > 0
            and note.get("backup") == last_backup and note.get("index") == signature)


def note(volume: Volume, backup: int) -> None:
    """The index file was just closed, with no write since backup `backup`."""
    signature = _signature(volume)
    if signature is not None and backup > 0:
        write_json_atomic(volume.backup_current_file, {"backup": backup, "index": signature})
