"""The mount daemon: from an unlocked volume to a running filesystem, and back.

Sequence (protocol.md §4.3): the caller unlocks the keys (the passphrase prompt needs the
terminal), then, unless in the foreground, forks. The child does all the work inside one
`trio.run`: starts the local INN server if the volume uses it, checks that the server
answers and accepts our login, opens the index, adopts staging files left by a crash,
calls `pyfuse3.init`, and only once all of that worked writes "ok" to a pipe. The parent
waits for that line and returns 0, or raises the child's one-line error (exit 32, as
mount(8) expects) — so `usenetfs mount` returns once the mount answers, and a failed
mount never leaves a stale mountpoint.

While mounted, a Unix socket (volume.control_socket, owner-only) answers requests of one
JSON object per line: `status` (uploads pending, transfer rates, retries, connections,
cache use, files with problems), `flush` and `verify` (progress lines, then the result),
`sync` (usenetfs sync into the mounted volume: sync/control.py), `backup` (skipped,
answering the last backup's number, when the index had no write since it: see _BackedUp),
and `bootstrap` (after `usenetfs passwd`: the next backup posts the key under the new
passphrase). `usenetfs umount`, `status`, `flush`, `verify`, `sync` and `passwd` use it.
On unmount (by fusermount3 -u, umount(8) or SIGTERM) uploads in flight are abandoned:
their staging files stay and the next mount resumes them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from .codec.segment import tune_malloc
from .errors import UserError
from .keys import VolumeKeys
from .nntp.client import NNTPClient, PoolOptions
from .nntp.throughput import Throughput
from .process import process_alive
from .volume import LOCAL_SERVER, Volume, VolumeSettings, write_json_atomic

if TYPE_CHECKING:  # imported where they are used: the CLI loads this module for control requests
    from .backup.current import Basis
    from .data import FileData
    from .index import Index
    from .store import NNTPSegmentStore

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0  # seconds the parent waits for the child's verdict
EXIT_MOUNT_FAILED = 32  # mount(8)'s "mount failure"


@dataclass
class MountRequest:
    volume: Volume
    keys: VolumeKeys
    mountpoint: str
    foreground: bool = False
    read_only: bool = False
    allow_other: bool = False
    fuse_extra: list[str] = field(default_factory=list)  # passed through to libfuse
    uid: int | None = None  # ownership and mode overrides applied by usenetfs itself
    gid: int | None = None
    umask: int | None = None
    notify_systemd: bool = False
    fsname: str | None = None  # the mount's source in /proc/mounts; default "usenetfs:NAME"
    bootstrap_keys: VolumeKeys | None = None  # from the passphrase: lets backups post the bootstrap
    disk_cache_bytes: int | None = None  # the on-disk segment cache; None: the volume's setting
    # What runs the mount inside trio.run (request, ready fd) -> exit code; default `_serve`,
    # a volume's. A subscribed share brings its own (usenetfs/share/mount.py).
    serve: Callable[[MountRequest, int | None], Awaitable[int]] | None = None


def mount(request: MountRequest) -> int:
    """Mount; return 0 once the mount answers, or raise UserError (exit code 32) with one line."""
    mountpoint = os.path.realpath(request.mountpoint)
    if not os.path.isdir(mountpoint):
        raise UserError(f"mountpoint {request.mountpoint} is not a directory", EXIT_MOUNT_FAILED)
    if _mounted_at(mountpoint):
        raise UserError(f"{request.mountpoint} is already a mountpoint", EXIT_MOUNT_FAILED)
    info = request.volume.mount_info()
    if info and process_alive(info.get("pid")):
        raise UserError(f"volume {request.volume.name!r} is already mounted at {info['mountpoint']}",
                        EXIT_MOUNT_FAILED)
    request.mountpoint = mountpoint
    serve = request.serve or _serve
    if request.foreground:
        return trio.run(serve, request, None)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        code = 1
        try:
            os.setsid()
            os.chdir("/")
            _redirect_stdio(request.volume.log_file)
            code = trio.run(serve, request, write_end)
        except BaseException:  # noqa: BLE001 - the child must never return into the CLI
            log.exception("the mount daemon failed")
        finally:
            os._exit(code)
    os.close(write_end)
    verdict = _read_verdict(read_end, READY_TIMEOUT)
    os.close(read_end)
    if verdict == "ok":
        return 0
    if not verdict:
        _kill_quietly(pid)
        verdict = f"the mount daemon did not answer within {READY_TIMEOUT:.0f} s (see {request.volume.log_file})"
    raise UserError(verdict, EXIT_MOUNT_FAILED)


def tune_gc() -> None:
    """Take every object the daemon made while starting (modules, the schema, the keys,
    the connections) out of all later garbage collections (`gc.freeze()`). PROCESS-WIDE;
    call once, when start-up is done.

    Measured through a mount, 2,000 small files, six runs each, alternating: with the
    collector as it comes 1,314 files/s, frozen and with thresholds raised to 10,000 / 50 /
    100 1,456, off entirely 1,427-1,500; then frozen alone 1,449 against 1,469 for frozen
    and raised. The raised thresholds also cost uploads ~8% (cp + umount of 1 GiB 111-116
    against 123-125 MB/s frozen alone): cycles holding 700 KB buffers live longer, and
    fresh memory is slow on this VM (codec.segment.tune_malloc). So: frozen alone."""
    import gc
    gc.freeze()


def _chosen(option, setting):
    """A mount option's value where one was given, else the volume's setting."""
    return setting if option is None else option


async def _serve(request: MountRequest, ready_fd: int | None) -> int:
    from .backup import current as backup_current
    from .data import FileData
    from .data.staging import MOUNT_SPARES
    from .fs import Operations, fuse_options
    from .session import check_server, segment_store

    volume = request.volume
    tune_malloc()
    local_server = None
    index = None
    owner = ExitStack()
    backed_up = None
    try:
        settings = volume.load()
        owner.enter_context(volume.exclusive(f"the mount at {request.mountpoint} (pid {os.getpid()})"))
        local_url = None
        if LOCAL_SERVER in settings.servers:
            from .innserver import InnServer
            local_server = InnServer(volume.home.ensure().local_server_dir)
            if local_server.is_running():  # started by `server start`: not ours to stop
                local_url = local_server.url
                local_server = None
            else:
                local_server.start()
                local_url = local_server.url
        config = volume.server_configs(settings, local_url)[0]
        await check_server(config, group=settings.group)
        index, carried = backup_current.open_tracked(volume, settings)
        as_backed_up = carried is not None and not carried.pages
        backed_up = _BackedUp(index.writes if as_backed_up else None, settings.last_backup,
                              carried.basis if carried is not None else None)
        for ino in index.orphans():  # unlinked while open when the last mount crashed
            index.delete_inode(ino)  # its staging file, if any, is dropped by recover()
        pool = PoolOptions(max_connections=settings.learned_connection_limit or settings.connections)
        async with NNTPClient(config, pool) as client:
            store = segment_store(client, request.keys, settings)
            # Segments in flight mostly wait for their read-back (propagation delay), which
            # holds no connection: keep many in flight so the pool stays busy posting.
            data = FileData(index, store, volume.data_dir, segment_size=settings.segment_size,
                            staging_limit=settings.staging_limit, cache_bytes=settings.cache_bytes,
                            upload_concurrency=max(16, 8 * pool.max_connections),
                            stream_segments=settings.stream_segments, spare_files=MOUNT_SPARES,
                            disk_cache_bytes=_chosen(request.disk_cache_bytes, settings.disk_cache_bytes),
                            disk_cache_dir=volume.cache_dir / "segments")
            recovered = await data.recover()
            if recovered:
                log.info("resuming the upload of %d files left by an earlier run", recovered)
            tune_gc()
            operations = Operations(index, data, read_only=request.read_only, uid=request.uid,
                                    gid=request.gid, umask=request.umask,
                                    quota_bytes=settings.quota_bytes)
            options = fuse_options(request.fsname or f"usenetfs:{volume.name}",
                                   allow_other=request.allow_other, ro=request.read_only,
                                   extra=request.fuse_extra)
            with fuse_mounted(operations, request, options, volume.mount_file, volume.control_socket):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(data.run)
                    backup_lock = trio.Lock()  # one backup at a time (umount's and the timer's)

                    async def run_backup() -> dict:
                        from .backup import post_backup
                        async with backup_lock:
                            writes = index.writes  # the snapshot holds at least these
                            if writes == backed_up.writes:  # no change since the last backup
                                return {"ok": True, "backup": backed_up.seq, "unchanged": True}
                            stats = await post_backup(volume, volume.load(), request.keys, client,
                                                      request.bootstrap_keys, index=index,
                                                      basis=backed_up.basis)
                            backed_up.writes, backed_up.seq, backed_up.basis = writes, stats.seq, stats.basis
                        return {"ok": True, "backup": stats.seq, "hashed_chunks": stats.hashed,
                                "chunks": stats.chunks}

                    nursery.start_soon(_backup_when_settled, volume, data, run_backup)
                    throughput = Throughput(client.retrier.stats)
                    nursery.start_soon(throughput.run)
                    control = _Control(request, settings, index, data, store, client, throughput, run_backup,
                                       backed_up, operations)
                    await nursery.start(serve_control, volume.control_socket, _control_session, control)
                    fd, ready_fd = ready_fd, None  # announce_when_initialized reports from here on
                    await serve_until_unmounted(nursery, operations, request, fd)
                    # Then stop the uploads; what is not posted stays staged and resumes at
                    # the next mount.
                    nursery.cancel_scope.cancel()
                    pending = data.pending()
                    if pending.get("files"):  # umount(8) or a shutdown did not wait for them
                        log.warning("unmounted with %d files (%d bytes) not posted yet: they are "
                                    "kept and posted at the next mount", pending["files"], pending["bytes"])
                learned = client.pool.learned_limit
                if learned:
                    current = volume.load()  # backups updated it meanwhile: don't save a stale copy
                    if learned != current.learned_connection_limit:
                        current.learned_connection_limit = learned
                        volume.save(current)
        return 0
    except UserError as error:
        return failed_to_mount(ready_fd, error)
    finally:
        if index is not None:
            index.close()
            # The next mount's first backup then hashes only what changed since the last
            # one (and none at all, if nothing did).
            backup_current.note_closed(volume, index, backed_up.basis if backed_up is not None else None)
        if local_server is not None:
            local_server.stop()
        owner.close()


async def _backup_when_settled(volume: Volume, data, run_backup) -> None:
    """Back the index up while mounted: once it has not changed for `backup_settle_seconds`,
    nothing is waiting to be posted, and the last backup is `backup_min_interval` old.

    "Changed" is read from the index files' sizes and times (the WAL grows with every
    commit), which costs two stat() calls per look.
    """
    settings = volume.load()
    last_backup_at = trio.current_time()
    seen = _index_signature(volume)
    changed_at: float | None = None
    backed_up = seen
    while True:
        await trio.sleep(max(0.2, min(settings.backup_settle_seconds, 30.0) / 2))
        now = trio.current_time()
        current = _index_signature(volume)
        if current != seen:
            seen, changed_at = current, now
            continue
        if (changed_at is None or current == backed_up
                or now - changed_at < settings.backup_settle_seconds
                or now - last_backup_at < settings.backup_min_interval
                or any(data.pending().values())):
            continue
        try:
            await run_backup()
        except Exception:  # noqa: BLE001 - logged; the next settle tries again
            log.exception("periodic index backup failed")
        last_backup_at = trio.current_time()
        backed_up = seen = _index_signature(volume)  # the backup itself touched nothing
        changed_at = None


@dataclass
class _BackedUp:
    """The index as of the newest backup: the mount's Index write count then (None:
    unknown, the next backup runs), the backup's number and its chunks (None: unknown,
    the next backup hashes every chunk). An umount (or a timer) asking for a backup of an
    index with no write since gets that number back and costs nothing. backup/current.py
    carries the chunks and the pages written since from one mount to the next."""

    writes: int | None
    seq: int
    basis: Basis | None = None


def _index_signature(volume: Volume) -> tuple:
    out = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{volume.index_file}{suffix}")
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


@dataclass
class _Control:
    """What the control socket's requests work on."""

    request: MountRequest
    settings: VolumeSettings  # as read at mount
    index: Index
    data: FileData
    store: NNTPSegmentStore
    client: NNTPClient
    throughput: Throughput
    run_backup: Callable[[], Awaitable[dict]]
    backed_up: _BackedUp
    operations: object = None  # fs.Operations: sync changes the namespace beside the kernel
    sync_lock: trio.Lock = field(default_factory=trio.Lock)  # one sync at a time


async def serve_control(path, session, *args, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests on a Unix socket (owner-only): `session(stream, *args)` per
    connection. The volume's mount and a share's mount each bring their own session."""
    _remove(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            sock, _ = await listener.accept()
            nursery.start_soon(session, trio.SocketStream(sock), *args)


async def read_request(stream: trio.SocketStream) -> dict | None:
    """The request on a control connection: one JSON object on one line ({} if it is not
    one); None if the client left before sending a whole line."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        buffer += chunk
    try:
        request = json.loads(buffer.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


async def _control_session(stream: trio.SocketStream, control: _Control) -> None:
    try:
        async with stream:
            await _answer(stream, control)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        # The client went away (Ctrl-C on `usenetfs flush`, say): its request is dropped
        # (a verify stops; a flush goes on in the uploader anyway). Never the mount's end.
        log.info("a control client disconnected before its answer")


async def _answer(stream: trio.SocketStream, control: _Control) -> None:
    request = await read_request(stream)
    if request is None:
        return
    op = request.get("op")

    async def send(obj) -> None:
        await stream.send_all(json.dumps(obj).encode() + b"\n")

    data = control.data
    try:
        if op == "status":
            await send(await _status(control))
        elif op == "flush":
            await _with_progress(send, data.flush_all)
            await send({"ok": True, "pending": data.pending()})
        elif op == "verify":
            from .verify import Verifier

            async def verify(progress):
                verifier = Verifier(control.index, control.store, sample=request.get("sample"),
                                    repair=bool(request.get("repair")), source=data.cached_payload,
                                    on_repaired=data.segment_repaired, progress=progress,
                                    concurrency=2 * control.client.pool.cap)
                return await verifier.run()

            report = await _with_progress(send, verify)
            await send({"report": report.as_dict()})
        elif op == "sync":
            from .sync.control import serve_sync
            async with control.sync_lock:  # a second one waits (e.g. for a cancelled one to stop)
                await serve_sync(send, request, control.index, data, control.operations.model,
                                 read_only=control.request.read_only)
        elif op == "backup":
            try:
                await send(await control.run_backup())
            except Exception as error:  # noqa: BLE001 - reported to the caller, logged here
                log.exception("index backup failed")
                await send({"error": f"index backup failed: {error}"})
        elif op == "share_publish":  # usenetfs share publish|grant|revoke of this mounted volume
            from .share.publish import publish_mounted

            async def publish(progress):
                return await publish_mounted(control.request.volume, request.get("share"), control.index,
                                             control.request.keys, control.client, data, control.operations.model,
                                             rescan=bool(request.get("rescan")), progress=progress)

            await send({"ok": True, "result": await _with_progress(send, publish)})
        elif op == "bootstrap":
            # `usenetfs passwd` changed the passphrase: backups post the key under the new one.
            control.request.bootstrap_keys = VolumeKeys(bytes.fromhex(request["secret"]))
            control.backed_up.writes = None  # the next backup runs, even with no change, and posts it
            log.info("passphrase changed: the next backup posts the key under the new one")
            await send({"ok": True})
        else:
            await send({"error": f"unknown request {op!r}"})
    except* UserError as group:
        await send({"error": str(group.exceptions[0])})
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        raise  # the client went away: _control_session logs it
    except* Exception as group:  # a bug: the request fails, the mount goes on
        log.error("control request %r failed", op, exc_info=group)
        await send({"error": f"the mount daemon failed to answer {op!r}: {group.exceptions[0]!r} "
                             "(see its log)"})


async def _with_progress(send, work):
    """`await work(progress)`, sending the latest progress(done, total) as a line
    {"done", "total"} every half second meanwhile."""
    latest = {"done": 0, "total": 0}
    finished = trio.Event()

    def progress(done: int, total: int) -> None:  # called synchronously by the work
        latest.update(done=done, total=total)

    async def report() -> None:
        while not finished.is_set():
            await send(dict(latest))
            with trio.move_on_after(0.5):
                await finished.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        try:
            return await work(progress)
        finally:
            finished.set()


MAX_HEALTH_FILES = 20  # files with problems named in a status answer (the rest are counted)


async def _status(control: _Control) -> dict:
    from .index.schema import STATE_NAMES
    from .verify import file_paths

    data, client, pool = control.data, control.client, control.client.pool
    nntp = client.stats()
    unhealthy = data.unhealthy()
    named = unhealthy[:MAX_HEALTH_FILES]
    paths = await file_paths(control.index, named) if named else {}
    settings = control.settings
    return {
        "volume": control.request.volume.name,
        "mountpoint": control.request.mountpoint,
        "pid": os.getpid(),
        "pending": data.pending(),
        "segments": dict(zip(STATE_NAMES, control.index.stats().segments)),
        "transfer": control.throughput.rates(),
        "retries": nntp["retries"],
        "failures": nntp["failures"],
        "connections": {"in_use": pool.in_use, "open": pool.open_count, "cap": pool.cap,
                        "configured": settings.connections,
                        "learned_limit": pool.learned_limit or settings.learned_connection_limit},
        "cache": {"memory_bytes": data.cache.size, "memory_limit": data.cache.capacity,
                  "staging_bytes": data.staging.used, "staging_limit": data.staging.limit,
                  "disk_bytes": data.disk_cache.size if data.disk_cache else 0,
                  "disk_limit": data.disk_cache.capacity if data.disk_cache else 0},
        "health": [{"inode": ino, "paths": paths.get(ino, []), "problem": data.health(ino)} for ino in named],
        "unhealthy_files": len(unhealthy),
        "nntp": nntp,
    }


async def control_request(volume: Volume, op: str, on_line=None, **params) -> dict:
    """Client side of the control socket: send one request (`params` go along), pass
    progress lines ({"done", "total"}) to `on_line`, return the final answer."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(volume.control_socket))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot reach the mount daemon of {volume.name!r}: {exc.strerror}") from None
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(json.dumps({"op": op, **params}).encode() + b"\n")
        buffer = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise UserError(f"the mount daemon of {volume.name!r} closed the connection")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = json.loads(line)
                if "done" in answer:
                    if on_line is not None:
                        on_line(answer)
                    continue
                if "error" in answer:
                    raise UserError(answer["error"])
                return answer


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("signal received: unmounting")
            pyfuse3.terminate()
            return


INIT_TIMEOUT = 5.0  # announce the mount anyway if the kernel's INIT has not come by then


@contextmanager
def fuse_mounted(operations, request: MountRequest, options, record_file: Path, control_socket: Path,
                 **record) -> Iterator[None]:
    """The FUSE session at `request.mountpoint` (UserError if the kernel refuses it) and the
    mount record (`record_file`: mountpoint, pid, control socket, and `record`), for the
    block; afterwards the session is closed (unmounting) and the record and the control
    socket are gone. Volume and share mounts alike."""
    try:
        pyfuse3.init(operations, request.mountpoint, options)
    except RuntimeError as exc:
        raise UserError(f"cannot mount at {request.mountpoint}: {exc}") from None
    try:
        write_json_atomic(record_file, {"mountpoint": request.mountpoint, "pid": os.getpid(),
                                        "control": str(control_socket), **record})
        yield
    finally:
        pyfuse3.close(unmount=True)
        _remove(record_file)
        _remove(control_socket)


async def serve_until_unmounted(nursery: trio.Nursery, operations, request: MountRequest,
                                ready_fd: int | None) -> None:
    """Answer FUSE requests until the filesystem is unmounted (a SIGTERM, SIGINT or SIGHUP
    unmounts it), reporting the mount ready once INIT is answered; then release what the
    kernel still held (deleting files unlinked while open)."""
    nursery.start_soon(_terminate_on_signal)
    nursery.start_soon(announce_when_initialized, operations, request, ready_fd)
    await pyfuse3.main()
    await operations.close()


def failed_to_mount(ready_fd: int | None, error: UserError) -> int:
    """A mount that failed before it was announced: the one-line reason goes to the
    mount command waiting on `ready_fd` (exit EXIT_MOUNT_FAILED); without one, it is raised."""
    if ready_fd is None:
        raise error
    _signal_ready(ready_fd, str(error))
    return EXIT_MOUNT_FAILED


async def announce_when_initialized(operations, request: MountRequest, ready_fd: int | None) -> None:
    """Tell the mount command (`ready_fd`) and systemd (if asked) that the mount is ready, once
    the kernel's FUSE INIT has been answered and the read-ahead raised: a file opened before
    that keeps the 128 KiB read-ahead it was opened with, which halves its sequential reads."""
    with trio.move_on_after(INIT_TIMEOUT):
        await operations.initialized.wait()
    raise_readahead(request.mountpoint)
    _signal_ready(ready_fd, "ok")
    if request.notify_systemd:
        _sd_notify(b"READY=1")


def raise_readahead(mountpoint: str) -> None:
    """1 MiB kernel read-ahead instead of 128 KiB: doubles sequential reads (baselines.md).

    Only after FUSE INIT has been answered: the kernel lowers the read-ahead to what that
    answer says. Each open file takes the value it finds at open. The device number comes
    from /proc/self/mountinfo: stat() on our own mountpoint from this thread could deadlock.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mounts:
            for line in mounts:
                fields = line.split()
                if _unescape_mountinfo(fields[4]) == mountpoint and " - fuse" in line:
                    with open(f"/sys/class/bdi/{fields[2]}/read_ahead_kb", "w") as out:
                        out.write("1024")
    except (OSError, IndexError):
        pass  # not root, or no sysfs: reads still work, only with smaller requests


def _mounted_at(path: str) -> bool:
    """Is a filesystem mounted at `path`? An automount trigger (autofs) does not count:
    systemd's x-systemd.automount puts one there and then runs us to mount on top of it, and
    os.path.ismount() counts it. Read from /proc/self/mountinfo, which touches nothing under
    the trigger (listing it would wait for this very mount)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            for line in table:
                fields, _, rest = line.partition(" - ")
                fields = fields.split()
                fstype = rest.split()[:1]
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == path and fstype != ["autofs"]:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo (octal).
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _signal_ready(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.replace("\n", " ").encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _read_verdict(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break  # the child died without a verdict
        data += chunk
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    return line or "the mount daemon exited without mounting (see its log)"


def _sd_notify(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message, address)
        except OSError:
            pass


def _redirect_stdio(log_file) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass


def _remove(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, exc)
