"""Mounting a subscribed share: read-only, reads through a keyed store, refresh on request.

`subscribe()` (the command's foreground part) opens the share (keyring, epoch key, newest
root: a wrong password, a revoked identity or an expired share is one line here, before
anything forks) and applies its tree to the subscription's mirror index. `serve_share` then
runs inside the mount daemon (`mountd.mount` with `MountRequest.serve`): the ordinary
Operations in read-only mode over the mirror, FileData with a `KeyedSegmentStore`, and a
control socket answering `status`, `refresh` (a newer keyring or root, applied in one
transaction, then the kernel's caches of what changed are invalidated), and the volume
requests `umount` sends (`flush`, `backup`: nothing to do for a read-only share).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import pyfuse3
import trio

from ..errors import UserError, user_error_behind
from ..index.mirror import Mirror
from ..mountd import (MountRequest, failed_to_mount, fuse_mounted, read_request, serve_control,
                      serve_until_unmounted)
from ..nntp.client import NNTPClient, PoolOptions
from ..nntp.config import ServerConfig
from ..store.keyed import KeyedSegmentStore
from .capability import Capability
from .subscribe import Access, Applier, Changes, Opened, Subscription, open_share

log = logging.getLogger(__name__)

CACHE_BYTES = 256 << 20


@dataclass
class ShareMount:
    """What the daemon needs besides the MountRequest."""

    subscription: Subscription
    capability: Capability
    access: Access
    server: ServerConfig
    opened: Opened
    connections: int = 4
    poll: float | None = None  # seconds between looks for a newer publish (None: on request only)


def open_mirror(sub: Subscription, scope: bytes) -> Mirror:
    if sub.mirror_file.exists():
        return Mirror.open(sub.mirror_file)
    return Mirror.create(sub.mirror_file, scope, uid=os.getuid(), gid=os.getgid())


async def subscribe(sub: Subscription, cap: Capability, access: Access, server: ServerConfig,
                    progress=None) -> tuple[Opened, Changes]:
    """Open the share and bring the mirror up to its newest root (the mount's first step)."""
    from ..session import check_server
    await check_server(server)
    limiter = trio.CapacityLimiter(2)
    async with NNTPClient(server) as client:
        opened = await open_share(client, cap, access, limiter)
        mirror = open_mirror(sub, bytes.fromhex(opened.root.data["scope"]))
        try:
            changes = await Applier(mirror, client, cap, opened.epoch_key, sub.objects_dir, limiter,
                                    progress=progress).apply(opened)
        finally:
            mirror.close()
    return opened, changes


def mount_share(share: ShareMount, request: MountRequest) -> int:
    from ..mountd import mount
    request.serve = lambda req, fd: serve_share(share, req, fd)
    request.read_only = True
    return mount(request)


async def serve_share(share: ShareMount, request: MountRequest, ready_fd: int | None) -> int:
    from ..codec.segment import tune_malloc
    from ..data import FileData
    from ..fs import Operations, fuse_options
    from ..mountd import tune_gc
    from ..session import check_server

    tune_malloc()  # as a volume's daemon: big buffers stay mapped (see there)
    sub = share.subscription
    mirror = None
    try:
        await check_server(share.server)
        mirror = Mirror.open(sub.mirror_file)
        index = mirror.ix
        for ino in index.orphans():  # nameless at the last unmount or refresh: nothing holds them now
            index.delete_inode(ino)
        state = mirror.state() or {}
        data_params = state.get("data") or share.opened.root.data
        async with NNTPClient(share.server, PoolOptions(max_connections=share.connections)) as client:
            store = KeyedSegmentStore(client, mirror.segment_secret, domain=data_params["domain"],
                                      cipher=data_params["cipher"], pad=data_params.get("pad"))
            # Read-only: nothing is ever staged, so no spare staging files either.
            data = FileData(index, store, sub.data_dir, cache_bytes=CACHE_BYTES, spare_files=0,
                            disk_cache_bytes=request.disk_cache_bytes or 0,
                            disk_cache_dir=sub.cache_dir / "segments")
            tune_gc()  # as a volume's daemon: start-up's objects leave the collector's scans
            operations = Operations(index, data, read_only=True, uid=request.uid, gid=request.gid,
                                    umask=request.umask, writeback_cache=False)
            options = fuse_options(request.fsname or f"usenetfs:{sub.name}", allow_other=request.allow_other,
                                   ro=True, extra=request.fuse_extra)
            with fuse_mounted(operations, request, options, sub.mount_file, sub.control_socket, share=True):
                control = _Control(share, mirror, data, operations, client)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(data.run)
                    await nursery.start(serve_control, sub.control_socket, _session, control)
                    if share.poll:
                        nursery.start_soon(_poll, control, share.poll)
                    fd, ready_fd = ready_fd, None  # announce_when_initialized reports from here on
                    await serve_until_unmounted(nursery, operations, request, fd)
                    nursery.cancel_scope.cancel()
        return 0
    except UserError as error:
        return failed_to_mount(ready_fd, error)
    finally:
        if mirror is not None:
            mirror.close()


class _Control:
    def __init__(self, share: ShareMount, mirror: Mirror, data, operations, client: NNTPClient):
        self.share = share
        self.mirror = mirror
        self.data = data
        self.operations = operations
        self.client = client
        self.opened = share.opened
        self.lock = trio.Lock()  # one refresh at a time
        self.limiter = trio.CapacityLimiter(2)

    def status(self) -> dict:
        state = self.mirror.state() or {}
        info = self.share.subscription.mount_info() or {}
        return {"share": state.get("name"), "subscription": self.share.subscription.name,
                "mountpoint": info.get("mountpoint"),
                "epoch": state.get("epoch"), "seq": state.get("seq"), "expires": state.get("expires"),
                "published": state.get("published"), "applied": state.get("applied"),
                "stats": state.get("stats"), "pending": {"files": 0, "bytes": 0, "segments": 0},
                "read_only": True}

    async def refresh(self) -> dict:
        async with self.lock:
            state = self.mirror.state() or {}
            opened = await open_share(self.client, self.share.capability, self.share.access, self.limiter,
                                      known_epoch_key=(self.opened.keyring.epoch, self.opened.epoch_key))
            if (opened.keyring.epoch, opened.root_number) == (state.get("epoch"), state.get("seq")):
                return {"ok": True, "changed": False, "epoch": opened.keyring.epoch, "seq": opened.root_number}
            model = self.operations.model
            changes = await Applier(self.mirror, self.client, self.share.capability, opened.epoch_key,
                                    self.share.subscription.objects_dir, self.limiter,
                                    held=lambda ino: ino in model.nodes).apply(opened)
            self.opened = opened
            await self._invalidate(changes)
            log.info("refreshed to epoch %d root %d: %s", opened.keyring.epoch, opened.root_number,
                     changes.summary())
            return {"ok": True, "changed": True, "epoch": opened.keyring.epoch, "seq": opened.root_number,
                    **changes.summary()}

    async def _invalidate(self, changes: Changes) -> None:
        index, model, reader = self.mirror.ix, self.operations.model, self.data.reader
        for ino in changes.contents | changes.deleted:
            reader.replaced(ino)
        touched = changes.inodes | changes.contents | {parent for parent, _ in changes.names}
        for ino in touched:
            node = model.nodes.get(ino)
            if node is not None:
                try:
                    node.set_row(index.get_inode(ino))
                except Exception:  # noqa: BLE001 - deleted meanwhile: the kernel will forget it
                    pass
        for parent, name in changes.names:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        for ino in touched:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, ino not in changes.contents)
            except OSError:
                pass  # the kernel does not know it: nothing cached


async def _poll(control: _Control, interval: float) -> None:
    """Refresh every `interval` seconds (-o poll=SECONDS); a failure is logged and tried again."""
    while True:
        await trio.sleep(interval)
        try:
            await control.refresh()
        except Exception as raised:  # noqa: BLE001 - the mount goes on with what it has
            error = user_error_behind(raised)
            if error is None:
                log.exception("periodic refresh failed")
            else:
                log.warning("periodic refresh: %s", error)


async def _session(stream: trio.SocketStream, control: _Control) -> None:
    try:
        async with stream:
            request = await read_request(stream)
            if request is None:
                return
            op = request.get("op")
            try:
                if op == "status":
                    answer = control.status()
                elif op == "refresh":
                    answer = await control.refresh()
                elif op in ("flush", "backup"):
                    answer = {"ok": True, "pending": {"files": 0, "bytes": 0, "segments": 0}}
                else:
                    answer = {"error": f"a mounted share does not answer {op!r}"}
            except Exception as raised:  # noqa: BLE001 - sorted below; the mount goes on either way
                error = user_error_behind(raised)
                if error is not None:
                    answer = {"error": str(error)}
                else:  # a bug
                    log.exception("control request %r failed", op)
                    answer = {"error": f"the share's mount failed to answer {op!r}: {raised!r} (see its log)"}
            await stream.send_all(json.dumps(answer).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("a control client disconnected before its answer")
