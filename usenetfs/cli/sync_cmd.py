"""`usenetfs sync SRC [VOLUME:]DEST`: copy a local tree into a volume, fast, and keep it in step.

    usenetfs sync SRC [VOLUME:]DEST [--checksum] [--delete] [-n] [-i] [--wait] [--json]
                  [--batch-files N] [--passphrase-file F]

DEST is VOLUME:PATH (a path inside volume VOLUME), or a path inside a mounted volume's
mountpoint, or else a path inside the volume named 'default'. On a mounted volume the
sync runs inside the mount daemon (the one process that owns the index and the staging
area), which streams its progress here; on an unmounted volume this process opens the
volume itself (passphrase needed), syncs, and posts everything before it returns.
The logic is in usenetfs/sync/.
"""

from __future__ import annotations

import json
import os
import re
import sys

import trio

from ..errors import UserError
from ..home import Home
from ..process import process_alive
from ..volume import DEFAULT_NAME, Volume, list_volumes, read_passphrase
from ..sync.engine import SyncOptions
from .arguments import positive_int
from .progress import Progress, SyncProgress

EXIT_PARTIAL = 1

EPILOG = """\
Copies what is new or changed in SRC into DEST, like 'rsync -a SRC/ DEST' but without a
FUSE round trip per operation: the source is scanned by several threads, the index is
written in batches of a few thousand entries per transaction, and file data goes into
the staging area, from where the ordinary uploader packs small files per directory and
posts them, waiting for staging space when it is full. DEST (and missing parents) is
created. Kept: regular files, directories, symlinks, FIFOs, hard links among the files of
one run, permission bits, owner and group (when run as root; otherwise the files are
yours), modification times, user.* extended attributes. Devices and sockets are skipped.

A file is copied again when its size or modification time differs (--checksum: when its
SHA-256 differs; the digest is kept in the volume, in the attribute user.usenetfs.sha256,
and a file without one is read back once). Without --delete nothing in DEST is removed.

DEST is VOLUME:PATH, or a path inside the mountpoint of a mounted volume, or else a path
in the volume 'default'. On a mounted volume the sync runs in the mount and the result
is visible there at once; posting goes on in the background ('usenetfs flush', or
--wait). On an unmounted volume the sync opens it itself (passphrase needed) and posts
everything before it returns. Interrupted at any point, a sync leaves the volume
consistent: run it again and it finishes the job.

exit codes: 0 synced; 1 error, or some entries could not be synced (listed on stderr);
2 bad usage; 130 interrupted"""

_VOLUME_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63}):(.*)$", re.S)


def register(commands) -> None:
    import argparse

    sync = commands.add_parser("sync", help="copy a local tree into a volume, fast; keep it in step",
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                               description="Copy what is new or changed in a local directory into a volume.")
    sync.add_argument("source", metavar="SRC", help="the local directory whose contents are copied")
    sync.add_argument("dest", metavar="[VOLUME:]DEST", help="the directory in the volume (made if missing)")
    sync.add_argument("--checksum", action="store_true",
                      help="compare contents by SHA-256 instead of size and modification time")
    sync.add_argument("--delete", action="store_true", help="delete what is in DEST but not in SRC")
    sync.add_argument("-n", "--dry-run", action="store_true", help="change nothing; list what would change")
    sync.add_argument("-i", "--itemize", action="store_true", help="list every change as it is made")
    sync.add_argument("--wait", action="store_true",
                      help="mounted volume: also wait until everything is posted and read back")
    sync.add_argument("--json", action="store_true",
                      help="print the counts as JSON (with the changes, given -n or -i)")
    sync.add_argument("--batch-files", type=positive_int, metavar="N", default=SyncOptions.batch_files,
                      help=f"files copied per index transaction (default {SyncOptions.batch_files})")
    sync.add_argument("--passphrase-file", metavar="F", help="read the passphrase from F (unmounted volume only)")
    sync.set_defaults(handler=_sync)


# ---------------------------------------------------------------------- arguments

def resolve_dest(home: Home, spec: str) -> tuple[Volume, str]:
    """(volume, path inside it) for DEST as the user wrote it."""
    match = _VOLUME_PREFIX.match(spec)
    if match and "/" not in match.group(1):
        name, path = match.group(1), match.group(2)
        volume = Volume(home, name)
        volume.load()  # "no volume named ..." if it does not exist
        return volume, "/" + path.strip("/")
    target = os.path.abspath(spec)
    for name in list_volumes(home):
        volume = Volume(home, name)
        info = volume.mount_info()
        if not info or not process_alive(info.get("pid")):
            continue
        mountpoint = info["mountpoint"]
        if target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/"):
            return volume, "/" + os.path.relpath(target, mountpoint).strip(".").strip("/")
    volume = Volume(home, DEFAULT_NAME)
    if not volume.exists():
        raise UserError(f"{spec} is not inside a mounted volume and there is no volume named "
                        f"{DEFAULT_NAME!r}: write VOLUME:PATH")
    return volume, "/" + spec.strip("/")


def check_source(spec: str) -> str:
    path = os.path.abspath(spec)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise UserError(f"source {spec} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read the source {spec}: {e.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"source {spec} is not a directory")
    return os.path.realpath(path)


def _running(volume: Volume) -> dict | None:
    info = volume.mount_info()
    return info if info and process_alive(info.get("pid")) else None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---------------------------------------------------------------------- the command

def _sync(args) -> int:
    home = Home.resolve(args.home)
    source = check_source(args.source)
    volume, dest = resolve_dest(home, args.dest)
    mounted = _running(volume)
    exclude = []
    if mounted:
        mountpoint = os.path.realpath(mounted["mountpoint"])
        if _inside(source, mountpoint):
            raise UserError(f"source {args.source} is inside the mount of volume {volume.name!r} itself")
        if _inside(mountpoint, source):
            exclude.append(mountpoint)  # never copy the volume into itself
    show_items = args.dry_run or args.itemize
    items: list[str] = []

    def item_lines(lines) -> None:
        if args.json:
            items.extend(lines)
            return
        for line in lines:
            print(line)

    def report(stats: dict, posted: bool | None) -> None:
        if args.json:
            print(json.dumps({"volume": volume.name, "dest": dest, "source": source, **stats,
                              **({"items": items} if show_items else {})}, indent=2))
        else:
            _summary(source, volume, dest, stats, args.dry_run, posted)

    if mounted:
        if args.passphrase_file:
            print("usenetfs: note: the volume is mounted: the sync runs in the mount, which has the key",
                  file=sys.stderr)
        from ..mountd import control_request

        with SyncProgress() as progress:
            def on_line(answer: dict) -> None:
                if show_items and answer.get("items"):
                    progress.close()
                    item_lines(answer["items"])
                progress.line(answer)

            answer = trio.run(lambda: control_request(volume, "sync", on_line, source=source, dest=dest,
                                                      checksum=args.checksum, delete=args.delete,
                                                      dry_run=args.dry_run, itemize=show_items,
                                                      batch_files=args.batch_files, exclude=exclude))
        stats = answer["stats"]
        if args.wait and not args.dry_run:
            from .ops_cmd import wait_for_uploads
            report(stats, None)
            wait_for_uploads(volume)
            if not args.json:
                print(f"posted: everything of {volume.name!r} is posted and read back")
        else:
            report(stats, False)
    else:
        stats = _sync_offline(volume, source, dest, args, item_lines if show_items else None)
        report(stats, True)
    return _errors(stats)


def _summary(source: str, volume: Volume, dest: str, s: dict, dry_run: bool, posted: bool | None) -> None:
    seconds = max(s["seconds"], 1e-6)
    verb = "would sync" if dry_run else "synced"
    lines = [
        f"{verb} {source} to {volume.name}:{dest} in {s['seconds']:.1f} s: "
        f"{s['files_found']:,} files checked; {s['new_files']:,} new, {s['changed_files']:,} changed, "
        f"{s['copied_bytes'] / 1e6:,.1f} MB {'to copy' if dry_run else 'copied'}",
        f"  {s['new_dirs']:,} new directories, {s['symlinks']:,} symlinks, {s['hard_links']:,} hard links, "
        f"{s['attributes']:,} attribute updates, {s['deleted']:,} deleted, {s['unchanged']:,} unchanged "
        f"({s['scanned'] / seconds:,.0f} entries/s, {s['copied_files'] / seconds:,.0f} files/s)",
    ]
    if s.get("checksummed"):
        lines.append(f"  --checksum: {s['checksummed']:,} files hashed, {s['read_back']:,} read back from the volume")
    notes = []
    if s.get("skipped"):
        notes.append(f"{s['skipped']:,} devices or sockets skipped")
    if s.get("vanished"):
        notes.append(f"{s['vanished']:,} files vanished from the source meanwhile")
    if s.get("unstable"):
        notes.append(f"{s['unstable']:,} files changed while being copied (sync again to catch up)")
    if notes:
        lines.append("  note: " + "; ".join(notes))
    if dry_run:
        lines.append("  dry run: nothing was changed")
    elif posted is False:
        lines.append("  posting goes on in the background ('usenetfs flush' waits for it)")
    elif posted:
        lines.append("  everything is posted and read back")
    print("\n".join(lines))


def _errors(stats: dict) -> int:
    count = stats.get("errors", 0)
    if not count:
        return 0
    for line in stats.get("error_lines", []):
        print(f"usenetfs: sync: {line}", file=sys.stderr)
    more = count - len(stats.get("error_lines", []))
    tail = f" ({more} more not shown)" if more > 0 else ""
    print(f"usenetfs: {count} entries could not be synced{tail}; the rest was", file=sys.stderr)
    return EXIT_PARTIAL


# ---------------------------------------------------------------------- unmounted volumes

def _sync_offline(volume: Volume, source: str, dest: str, args, on_items) -> dict:
    """This process owns the volume for the duration: index, staging, uploads."""
    from ..backup import current as backup_current
    from ..data import FileData
    from ..nntp.client import NNTPClient, PoolOptions
    from ..session import check_server, segment_store, volume_servers
    from ..sync import OfflineTarget, Sync
    from ..sync.control import work

    settings = volume.load()
    passphrase = read_passphrase(args.passphrase_file)
    keys = volume.unlock(passphrase)
    options = SyncOptions(checksum=args.checksum, delete=args.delete, dry_run=args.dry_run,
                          batch_files=args.batch_files)
    pool = PoolOptions(max_connections=settings.learned_connection_limit or settings.connections)
    with volume.exclusive(f"usenetfs sync (pid {os.getpid()})"), volume_servers(volume, settings) as configs:
        if _running(volume):  # mounted since we looked: the lock is ours, so it is on its way down
            raise UserError(f"volume {volume.name!r} is mounted: run the sync again")

        async def run() -> dict:
            await check_server(configs[0])
            async with NNTPClient(configs[0], pool) as client:
                # As a mount does: the pages written are tracked, so the backup at the end
                # reads only what changed since the last one, without copying the index.
                index, carried = backup_current.open_tracked(volume, settings)
                basis = carried.basis if carried is not None else None
                try:
                    for ino in index.orphans():  # unlinked while open when a mount crashed
                        index.delete_inode(ino)
                    data = FileData(index, segment_store(client, keys, settings), volume.data_dir,
                                    segment_size=settings.segment_size, staging_limit=settings.staging_limit,
                                    cache_bytes=settings.cache_bytes,
                                    upload_concurrency=max(16, 8 * pool.max_connections))
                    await data.recover()
                    try:
                        async with trio.open_nursery() as nursery:
                            await nursery.start(data.run)
                            with SyncProgress() as progress:
                                def on_item(line: str) -> None:
                                    progress.close()
                                    on_items([line])

                                sync = Sync(index, data, OfflineTarget(index, data), source, dest, options,
                                            progress=lambda s: progress.sync_update(s.as_dict(), *work(s)),
                                            on_item=on_item if on_items else None)
                                stats = await sync.run()
                            if not args.dry_run:
                                with Progress("posting", unit="bytes") as posting:
                                    await data.flush_all(posting.update)
                            nursery.cancel_scope.cancel()
                    finally:
                        data.close()
                    if stats.batches:  # like umount: the index changed, back it up
                        from ..backup import bootstrap_keys, post_backup
                        backed_up = await post_backup(volume, volume.load(), keys, client,
                                                      bootstrap_keys(passphrase, bytes.fromhex(settings.volume_id)),
                                                      index=index, basis=basis)
                        basis = backed_up.basis
                    return stats.as_dict()
                finally:
                    index.close()
                    backup_current.note_closed(volume, index, basis)

        return trio.run(run)


__all__ = ["register", "resolve_dest"]
