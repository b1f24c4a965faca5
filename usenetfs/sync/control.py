"""The mount daemon's `sync` request: a Sync run inside the daemon, with progress.

While a volume is mounted only its daemon may write the index and the staging area, so
`usenetfs sync` on a mounted volume asks the daemon (mountd.py's control socket) to run
the sync:

    -> {"op": "sync", "source": "/abs/src", "dest": "/path/in/volume",
        "checksum": false, "delete": false, "dry_run": false, "itemize": false,
        "batch_files": 2000, "exclude": ["/abs/mountpoint"]}
    <- {"done": W, "total": W, "stats": {...}, "items": ["new file      a/b", ...]}   every 0.5 s
    <- {"ok": true, "stats": {...}}                                                  at the end

`done`/`total` are units of work (bytes to copy plus a fixed cost per file) for a
progress bar; `stats` is `SyncStats.as_dict()`; `items` (with --dry-run or --itemize)
are the changes since the last line. If the client goes away (Ctrl-C, kill), sending
fails and the sync is cancelled: what was committed stays, the rest is undone, and the
next sync picks up from there.
"""

from __future__ import annotations

import os

import trio

from ..errors import UserError
from .engine import Sync, SyncOptions, SyncStats
from .target import MountedTarget

REPORT_INTERVAL = 0.5
FILE_COST = 4096  # a file's fixed cost in progress work units (bytes)
MAX_ITEMS_PER_LINE = 5000


def work(stats: SyncStats | dict) -> tuple[int, int]:
    """(done, total) units of work: the bytes to copy, plus FILE_COST per file."""
    s = stats if isinstance(stats, dict) else stats.as_dict()
    done = s["copied_bytes"] + FILE_COST * s["copied_files"]
    total = s["to_copy_bytes"] + FILE_COST * s["to_copy_files"]
    return done, max(total, done)


async def serve_sync(send, request: dict, index, data, model, *, read_only: bool = False) -> None:
    """Run the sync `request` asks for in this mount; `send(obj)` writes one line."""
    if read_only and not request.get("dry_run"):
        raise UserError("the volume is mounted read-only: nothing can be synced into it")
    source, dest = request.get("source"), request.get("dest")
    if not isinstance(source, str) or not isinstance(dest, str):
        raise UserError("a sync request needs 'source' and 'dest'")
    options = SyncOptions(checksum=bool(request.get("checksum")), delete=bool(request.get("delete")),
                          dry_run=bool(request.get("dry_run")))
    exclude = request.get("exclude") or []
    if isinstance(exclude, list) and all(isinstance(path, str) for path in exclude):
        options.exclude = tuple(os.fsencode(path) for path in exclude)
    batch_files = request.get("batch_files")
    if isinstance(batch_files, int) and batch_files > 0:
        options.batch_files = batch_files
    items: list[str] = []
    want_items = options.dry_run or bool(request.get("itemize"))
    sync = Sync(index, data, MountedTarget(index, data, model), source, dest, options,
                on_item=items.append if want_items else None)
    finished = trio.Event()

    async def report() -> None:
        while True:
            last = finished.is_set()
            while True:  # the changes in pieces, so no line grows without bound
                done, total = work(sync.stats)
                line = {"done": done, "total": total, "stats": sync.stats.as_dict()}
                if items:
                    line["items"] = items[:MAX_ITEMS_PER_LINE]
                    del items[:MAX_ITEMS_PER_LINE]
                await send(line)
                if not items:
                    break
            if last:
                return
            with trio.move_on_after(REPORT_INTERVAL):
                await finished.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        try:
            stats = await sync.run()
        finally:
            finished.set()
    await send({"ok": True, "stats": stats.as_dict()})


__all__ = ["serve_sync", "work"]
