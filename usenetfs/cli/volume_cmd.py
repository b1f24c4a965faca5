"""`usenetfs init | mount | umount | cache clear | fsck`: a volume's life cycle.

    usenetfs init [NAME] (--server URL... | --local) --group G [--connections N]
                  [--passphrase-file F] [--password-file F] [--ca-file F]
    usenetfs mount [VOLUME] MOUNTPOINT [-f] [-o OPTS] [--passphrase-file F]
    usenetfs umount MOUNTPOINT [--no-wait]
    usenetfs cache clear [VOLUME]
    usenetfs fsck [VOLUME] [--no-repair]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ..errors import UserError
from ..home import Home
from ..process import process_alive
from ..volume import DEFAULT_NAME, LOCAL_SERVER, Volume, find_mounted, list_volumes, read_passphrase
from .mount_options import MountOptions, parse_mount_options
from .ops_cmd import wait_for_uploads
from .progress import Progress

EXIT_MOUNT_FAILED = 32  # mount(8)'s "mount failure"


def register(commands) -> None:
    init = commands.add_parser("init", help="create a volume")
    init.add_argument("name", nargs="?", default=DEFAULT_NAME, help=f"volume name (default {DEFAULT_NAME!r})")
    init.add_argument("--server", action="append", default=[], metavar="URL",
                      help="nntp://[user@]host[:port] or nntps://...; repeatable")
    init.add_argument("--local", action="store_true", help="use the local INN server (no account needed)")
    init.add_argument("--group", required=True, metavar="G", help="newsgroup to post to")
    init.add_argument("--connections", type=int, default=4, metavar="N", help="connection cap (default 4)")
    init.add_argument("--passphrase-file", metavar="F", help="read the new passphrase from F")
    init.add_argument("--password-file", metavar="F", help="read the server password from F")
    init.add_argument("--ca-file", metavar="F", help="trust this CA or certificate file for TLS")
    init.add_argument("--kdf-log-n", type=int, default=17, help=argparse.SUPPRESS)
    init.set_defaults(handler=_init)

    mount = commands.add_parser("mount", help="mount a volume (returns once the mount answers)")
    mount.add_argument("args", nargs="+", metavar="[VOLUME] MOUNTPOINT")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", dest="options", default="", metavar="OPTS",
                       help="comma-separated, as for mount.usenetfs (see 'mount.usenetfs --help'): "
                       "ro, rw, allow_other, uid=N, gid=N, umask=NNN, home=DIR, passphrase_file=F, ...")
    mount.add_argument("--passphrase-file", metavar="F", help="read the passphrase from F")
    shares = mount.add_argument_group("mounting a share (VOLUME is then a capability file, '-' for stdin, or "
                                      "the capability itself; the mount is read-only)")
    shares.add_argument("--password-file", metavar="F", help="the share's password")
    shares.add_argument("--identity", metavar="F", help="your identity file (a share granted to you)")
    shares.add_argument("--server", metavar="URL", help="read from this server, not the capability's")
    shares.add_argument("--server-password-file", metavar="F", help="the password of --server's account")
    shares.add_argument("--poll", type=float, metavar="SECONDS",
                        help="look for a newer publish this often (default: only at 'share refresh')")
    mount.set_defaults(handler=_mount)

    umount = commands.add_parser("umount", help="post everything, then unmount")
    umount.add_argument("mountpoint")
    umount.add_argument("--no-wait", action="store_true",
                        help="unmount now; what is not posted yet is resumed at the next mount")
    umount.set_defaults(handler=_umount)

    cache = commands.add_parser("cache", help="manage the local segment cache")
    cache_actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_actions.required = True
    clear = cache_actions.add_parser("clear", help="drop cached segment data (keeps the index)")
    clear.add_argument("volume", nargs="?", default=DEFAULT_NAME)
    clear.set_defaults(handler=_cache_clear)

    restore = commands.add_parser("restore", help="rebuild a volume from its backup on the server",
                                  description="Rebuild a volume's keys, settings and index from the "
                                  "server alone, with its id and passphrase (for a lost machine).")
    restore.add_argument("name", nargs="?", default=DEFAULT_NAME, help="name for the volume here")
    restore.add_argument("--volume-id", required=True, metavar="ID", help="the 32-hex-digit volume id")
    restore.add_argument("--server", metavar="URL", help="server URL (as for init)")
    restore.add_argument("--local", action="store_true", help="use the local INN server")
    restore.add_argument("--passphrase-file", metavar="F")
    restore.add_argument("--password-file", metavar="F")
    restore.add_argument("--ca-file", metavar="F")
    restore.set_defaults(handler=_restore)

    fsck = commands.add_parser("fsck", help="check the index and repair what can be repaired")
    fsck.add_argument("volume", nargs="?", default=DEFAULT_NAME)
    fsck.add_argument("--no-repair", action="store_true", help="only report")
    fsck.set_defaults(handler=_fsck)


def _home(args) -> Home:
    return Home.resolve(args.home)


def _init(args) -> int:
    from ..index import Index
    servers = list(args.server) + ([LOCAL_SERVER] if args.local else [])
    if args.connections < 1:
        raise UserError("--connections must be at least 1")
    passphrase = read_passphrase(args.passphrase_file, confirm=True)
    volume = Volume.create(_home(args), args.name, servers=servers, group=args.group,
                           passphrase=passphrase, connections=args.connections, ca_file=args.ca_file,
                           log_n=args.kdf_log_n, password_file=args.password_file)
    settings = volume.load()
    Index.create(volume.index_file, scope_id=bytes.fromhex(settings.volume_id),
                 uid=os.getuid(), gid=os.getgid()).close()
    print(f"created volume {volume.name!r} (id {settings.volume_id}); mount it with "
          f"'usenetfs mount {volume.name} MOUNTPOINT'")
    return 0


def _mount(args) -> int:
    if len(args.args) > 2:
        raise UserError("usage: usenetfs mount [VOLUME] MOUNTPOINT")
    name, mountpoint = (args.args if len(args.args) == 2 else [DEFAULT_NAME, args.args[0]])
    try:
        options = parse_mount_options(args.options)
    except UserError as error:  # mount(8)'s convention, as for every other mount failure
        raise UserError(str(error), EXIT_MOUNT_FAILED) from None
    options.foreground = options.foreground or args.foreground
    options.passphrase_file = _only_once("passphrase file", args.passphrase_file, options.passphrase_file)
    home = Home.resolve(_only_once("home", args.home, options.home))
    shared = {"identity": args.identity, "password_file": args.password_file, "server": args.server,
              "server_password_file": args.server_password_file}
    if len(args.args) == 2 and is_capability(home, name):
        from .share_cmd import mount_capability
        if options.passphrase_file:
            raise UserError("a share takes --password-file or --identity, not a passphrase", EXIT_MOUNT_FAILED)
        if args.poll is not None:
            options.poll = parse_mount_options(f"poll={args.poll}").poll
        fields = options.share_fields()
        for key, value in shared.items():
            fields[key] = _only_once(key.replace("_", " "), value, fields[key]) if key != "server" else (
                value or fields[key])
        return mount_capability(home, name, mountpoint, options, **fields)
    if any(shared.values()) or args.poll is not None or options.has_share_fields():
        raise UserError("--password-file, --identity, --server and --poll are for mounting a share's capability",
                        EXIT_MOUNT_FAILED)
    return mount_volume(home, name, mountpoint, options)


def is_capability(home: Home, spec: str) -> bool:
    """Whether a mount's first operand names a capability (a file, '-', or the text) rather than
    a volume: a volume of that name wins."""
    if spec in list_volumes(home):
        return False
    return spec == "-" or spec.lower().startswith("usenetfs-cap") or "/" in spec or os.path.isfile(spec)


def _only_once(what: str, flag: str | None, option: str | None) -> str | None:
    if flag and option and os.path.abspath(flag) != option:
        raise UserError(f"two different {what}s given (the flag and the -o option)", EXIT_MOUNT_FAILED)
    return flag or option


def mount_volume(home: Home, name: str, mountpoint: str, options: MountOptions, *,
                 fsname: str | None = None) -> int:
    """Unlock the volume and mount it (usenetfs mount, mount.usenetfs): returns 0 once the
    mount answers; every failure is a UserError with mount(8)'s exit code 32."""
    from ..backup import bootstrap_keys
    from ..mountd import MountRequest, mount
    try:
        volume = Volume(home, name)
        settings = volume.load()  # a clear error for a volume that doesn't exist, before the passphrase
        passphrase = read_passphrase(options.passphrase_file)
        keys = volume.unlock(passphrase)
        bootstrap = bootstrap_keys(passphrase, bytes.fromhex(settings.volume_id))
    except UserError as error:
        raise UserError(str(error), EXIT_MOUNT_FAILED) from None
    request = MountRequest(volume=volume, keys=keys, mountpoint=mountpoint, foreground=options.foreground,
                           notify_systemd=options.foreground, bootstrap_keys=bootstrap, fsname=fsname,
                           **options.request_fields())
    return mount(request)


def _umount(args) -> int:
    from ..mountd import control_request
    home = _home(args)
    try:
        volume = find_mounted(home, args.mountpoint)
    except UserError:
        from ..share.subscribe import find_mounted_subscription
        volume = find_mounted_subscription(home, args.mountpoint)  # a mounted share: nothing to post
        if volume is None:
            raise
    info = volume.mount_info()
    if args.no_wait:
        status = trio.run(control_request, volume, "status")
        pending = status["pending"]
        if pending.get("bytes") or pending.get("files"):
            print(f"usenetfs: {pending.get('files', 0)} files ({pending.get('bytes', 0) / 1e6:.1f} MB) "
                  "not posted yet; they will be posted at the next mount", file=sys.stderr)
    else:
        wait_for_uploads(volume)
        try:  # so a lost machine doesn't lose the volume
            trio.run(control_request, volume, "backup")
        except UserError as error:  # the data is posted: don't keep the mount hostage
            print(f"usenetfs: warning: {error}; unmounting anyway (the next umount tries again)",
                  file=sys.stderr)
    _fusermount_unmount(info["mountpoint"])
    _wait_for_exit(info.get("pid"), 60)
    return 0


def _fusermount_unmount(mountpoint: str) -> None:
    tool = _program("fusermount3") or _program("fusermount")
    command = [tool, "-u", mountpoint] if tool else [_program("umount") or "umount", mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"cannot unmount {mountpoint}: {reason[-1] if reason else 'unknown error'}")


def _program(name: str) -> str | None:
    # systemd runs ExecStop= and mount helpers with a minimal PATH or none: look in the
    # system directories too.
    return shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def _wait_for_exit(pid, seconds: float) -> None:
    if not isinstance(pid, int):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.05)
    raise UserError(f"the mount daemon (pid {pid}) is still running after {seconds:.0f} s")


@contextmanager
def _offline_volume(args, name: str, doing: str) -> Iterator[Volume]:
    """The unmounted volume `name`, owned (Volume.exclusive) while the block runs: no mount
    and no `usenetfs sync` can start meanwhile and change the index under our feet."""
    volume = Volume(_home(args), name)
    volume.load()
    info = volume.mount_info()
    if info:
        if process_alive(info.get("pid")):
            raise UserError(f"volume {name!r} is mounted at {info['mountpoint']}: unmount it first")
    with volume.exclusive(f"usenetfs {doing} (pid {os.getpid()})"):
        yield volume


def _restore(args) -> int:
    from ..backup import restore
    from ..nntp.client import NNTPClient
    from ..nntp.config import parse_server_url
    from ..nntp.retry import scaled_policies
    if bool(args.server) == bool(args.local):
        raise UserError("give either --server URL or --local")
    home = _home(args)
    server = None
    if args.local:
        from ..innserver import InnServer
        server = InnServer(home.ensure().local_server_dir)
        started_here = not server.is_running()
        server.start()
        url, servers = server.url, [LOCAL_SERVER]
    else:
        url = args.server
    config = parse_server_url(url, password_file=args.password_file, ca_file=args.ca_file)
    if not args.local:
        servers = [config.describe() + ("?starttls=1" if config.starttls else "")]
    passphrase = read_passphrase(args.passphrase_file)

    async def run():
        async with NNTPClient(config, policies=scaled_policies(0.1)) as client:
            return await restore(home, args.name, args.volume_id, passphrase, client, servers,
                                 progress.update)

    try:
        with Progress("fetching the index", unit="chunks") as progress:
            volume, seq = trio.run(run)
    finally:
        if server is not None and started_here:
            server.stop()
    if config.password and not args.local:
        from ..volume import write_json_atomic
        write_json_atomic(volume.secrets_file, {config.describe(): config.password})
    print(f"restored volume {volume.name!r} from index backup {seq}; mount it with "
          f"'usenetfs mount {volume.name} MOUNTPOINT'")
    return 0


def _cache_clear(args) -> int:
    with _offline_volume(args, args.volume, "cache clear") as volume:
        return _clear_cache(volume)


def _clear_cache(volume: Volume) -> int:
    from ..data.staging import staged_inodes
    from ..index import Index
    if staged_inodes(volume.data_dir / "staging"):
        raise UserError("some files are not posted yet: mount the volume and let them upload first")
    index = Index.open(volume.index_file)
    try:
        pending, posted = index.stats().segments[:2]
    finally:
        index.close()
    if pending or posted:
        raise UserError(f"{pending + posted} segments are not verified yet: mount the volume and let "
                        "them upload first")
    freed = 0
    if volume.cache_dir.exists():
        for entry in volume.cache_dir.iterdir():
            if entry.is_dir():
                freed += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                shutil.rmtree(entry)
            else:
                freed += entry.stat().st_size
                entry.unlink()
    print(f"cache cleared ({freed / 1e6:.1f} MB freed)")
    return 0


def _fsck(args) -> int:
    with _offline_volume(args, args.volume, "fsck") as volume:
        return _check(volume, repair=not args.no_repair)


def _check(volume: Volume, *, repair: bool) -> int:
    from ..index import Index
    index = Index.open(volume.index_file)
    try:
        with Progress("fsck", unit="steps") as progress:
            problems = index.fsck(repair=repair, progress=progress.update)
        if problems and repair:
            with Progress("fsck (checking the repairs)", unit="steps") as progress:
                remaining = index.fsck(repair=False, progress=progress.update)
        else:
            remaining = problems
    finally:
        index.close()
    for problem in problems:
        print(problem)
    if remaining:
        print(f"fsck: {len(remaining)} problems remain", file=sys.stderr)
        return 1
    print("fsck: clean" if not problems else f"fsck: repaired {len(problems)} problems")
    return 0


__all__ = ["register", "list_volumes"]
