"""`usenetfs status | flush | verify | passwd`: day-to-day commands of a volume.

    usenetfs status [MOUNTPOINT] [--json]
    usenetfs flush MOUNTPOINT
    usenetfs verify [VOLUME] [--sample PERCENT] [--repair] [--json] [--passphrase-file F]
    usenetfs passwd [VOLUME] [--passphrase-file OLD] [--new-passphrase-file NEW]

status and flush ask a running mount (its control socket). verify asks the mount when
the volume is mounted (the mount's read cache is then what --repair re-posts from, and
only the mount writes the index); otherwise it opens the index and the server itself.
passwd re-wraps the key on disk and tells a running mount.

Exit codes
    status   0 reported, nothing wrong; 1 error; 2 bad usage; 3 no volume is mounted;
             4 some files have problems (failed reads or uploads, missing segments)
    flush    0 everything posted and read back; 1 error; 2 bad usage; 130 interrupted
    verify   0 every segment checked is readable (or was repaired); 1 error (the server
             failed, a wrong passphrase, ...); 2 bad usage; 3 damaged segments remain
    passwd   0 changed; 1 error (a wrong current passphrase: nothing changed); 2 bad usage
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

from ..errors import UserError
from ..home import Home
from ..process import process_alive
from ..volume import DEFAULT_NAME, Volume, find_mounted, list_volumes, read_passphrase
from .progress import Progress

EXIT_NOTHING_MOUNTED = 3
EXIT_UNHEALTHY = 4
EXIT_DAMAGED = 3

STATUS_EPILOG = """\
Shows, for each mounted volume: what is not posted yet (files, bytes, segments), upload
and download rates over the last ten seconds, NNTP retries by response code, connections
in use against the cap (and the limit learned from the server), cache use against its
bounds (memory: decoded segments; disk: staging of unposted files), and files with
problems (failed reads, failing uploads).

exit codes: 0 nothing wrong; 1 error; 2 bad usage; 3 no volume of this home is mounted;
4 some files have problems (run 'usenetfs verify --repair' for missing segments)"""

FLUSH_EPILOG = """\
Posts every file not posted yet now, and returns once all of it is read back from the
server. The volume stays mounted.

exit codes: 0 everything posted and verified; 1 error; 2 bad usage; 130 interrupted"""

VERIFY_EPILOG = """\
Reads the segments that hold file data back from the server by BODY, decrypts and
authenticates each one (STAT would only show that something has the Message-ID), and
reports missing or corrupt ones with the files they belong to. --sample checks a random
PERCENT of them. With --repair, a damaged segment whose data the local cache still has
is posted again under its next Message-ID and read back. Only a mounted volume has a
cache to repair from (the data of files read recently), so on a mounted volume verify
runs inside the mount; otherwise it needs the passphrase and reads the server itself.

exit codes: 0 every segment checked is readable (or was repaired); 1 error (server
failure, wrong passphrase, ...); 2 bad usage; 3 damaged segments remain"""

PASSWD_EPILOG = """\
Re-wraps the volume's key under a new passphrase (nothing is re-encrypted); the key file
is replaced atomically, and a wrong current passphrase changes nothing. The next index
backup (at umount, or while mounted once changes settle) posts the key under the new
passphrase, so 'usenetfs restore' works with it.

The old passphrase is NOT revoked on the server: backups posted before the change hold
the key wrapped by the old passphrase, and Usenet cannot delete them. Anyone who has the
old passphrase and the volume id can still get the key from the server until those
articles expire, and with it every file, also those written after the change (the key
itself does not change). If the old passphrase leaked, copy your files to a new volume.

exit codes: 0 changed; 1 error (a wrong current passphrase: nothing changed); 2 bad usage"""


def register(commands) -> None:
    formatter = argparse.RawDescriptionHelpFormatter

    status = commands.add_parser("status", help="what mounted volumes are doing", epilog=STATUS_EPILOG,
                                 formatter_class=formatter,
                                 description="Report on a mounted volume, or on every mounted volume.")
    status.add_argument("mountpoint", nargs="?", help="a mounted volume (default: every one of this home)")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    status.set_defaults(handler=_status)

    flush = commands.add_parser("flush", help="post everything not posted yet, and wait", epilog=FLUSH_EPILOG,
                                formatter_class=formatter,
                                description="Post everything not posted yet, and wait until it is verified.")
    flush.add_argument("mountpoint")
    flush.set_defaults(handler=_flush)

    verify = commands.add_parser("verify", help="check that file data is still on the server",
                                 epilog=VERIFY_EPILOG, formatter_class=formatter,
                                 description="Check that the articles holding file data are on the "
                                 "server and intact;\noptionally post damaged ones again.")
    verify.add_argument("volume", nargs="?", default=DEFAULT_NAME,
                        help=f"volume name or mountpoint (default {DEFAULT_NAME!r})")
    verify.add_argument("--sample", type=_percent, metavar="PERCENT",
                        help="check a random PERCENT of the segments (default: all)")
    verify.add_argument("--repair", action="store_true",
                        help="post damaged segments again from the local cache")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--passphrase-file", metavar="F",
                        help="read the passphrase from F (unmounted volume only)")
    verify.set_defaults(handler=_verify)

    passwd = commands.add_parser("passwd", help="change a volume's passphrase", epilog=PASSWD_EPILOG,
                                 formatter_class=formatter, description="Change a volume's passphrase.")
    passwd.add_argument("volume", nargs="?", default=DEFAULT_NAME, help=f"volume name (default {DEFAULT_NAME!r})")
    passwd.add_argument("--passphrase-file", metavar="OLD", help="read the current passphrase from OLD")
    passwd.add_argument("--new-passphrase-file", metavar="NEW", help="read the new passphrase from NEW")
    passwd.set_defaults(handler=_passwd)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("must be above 0 and at most 100")
    return value


def _home(args) -> Home:
    return Home.resolve(args.home)


def _running(volume: Volume) -> dict | None:
    """The volume's mount record if its daemon is alive."""
    info = volume.mount_info()
    return info if info and process_alive(info.get("pid")) else None


def _ask(volume: Volume, op: str, on_line=None, **params) -> dict:
    from ..mountd import control_request
    return trio.run(lambda: control_request(volume, op, on_line, **params))


# ---------------------------------------------------------------------- flush

def wait_for_uploads(volume: Volume) -> dict:
    """Ask the mount of `volume` to post everything, showing progress; its last answer.
    (umount uses this too.)"""
    with Progress("posting", unit="bytes") as progress:
        return _ask(volume, "flush", progress.line)


def _flush(args) -> int:
    volume = find_mounted(_home(args), args.mountpoint)
    if _running(volume) is None:
        raise UserError(f"the mount daemon of {volume.name!r} is not running (unmount {args.mountpoint} "
                        "with 'fusermount3 -u', then mount it again)")
    wait_for_uploads(volume)
    print(f"flushed: everything of {volume.name!r} is posted and read back")
    return 0


# ---------------------------------------------------------------------- status

def _status(args) -> int:
    home = _home(args)
    if args.mountpoint:
        volumes = [find_mounted(home, args.mountpoint)]
        if _running(volumes[0]) is None:
            raise UserError(f"the mount daemon of {volumes[0].name!r} is not running")
    else:
        volumes = [v for v in (Volume(home, name) for name in list_volumes(home)) if _running(v)]
    reports = [_ask(volume, "status") for volume in volumes]
    if args.json:
        print(json.dumps(reports if not args.mountpoint else reports[0], indent=2))
    elif not reports:
        print("no volume of this home is mounted")
    else:
        print("\n\n".join("\n".join(status_lines(report)) for report in reports))
    if not reports:
        return EXIT_NOTHING_MOUNTED
    return EXIT_UNHEALTHY if any(_unhealthy(report) for report in reports) else 0


def _unhealthy(report: dict) -> bool:
    return bool(report["unhealthy_files"] or report["segments"].get("missing"))


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def status_lines(report: dict) -> list[str]:
    pending, transfer, conns, cache = report["pending"], report["transfer"], report["connections"], report["cache"]
    segments = report["segments"]
    retries = ", ".join(f"{code}: {count}" for code, count in sorted(report["retries"].items())) or "none"
    failures = ", ".join(f"{code}: {count}" for code, count in sorted(report["failures"].items()))
    learned = conns["learned_limit"] if conns["learned_limit"] is not None else "none"
    lines = [
        f"volume {report['volume']!r} mounted at {report['mountpoint']} (pid {report['pid']})",
        f"  pending:      {pending['files']} files, {_size(pending['bytes'])}; "
        f"{pending['segments']} segments not verified yet",
        f"  upload:       {_size(transfer['upload_bytes_per_second'])}/s ({_size(transfer['bytes_sent'])} in all)",
        f"  download:     {_size(transfer['download_bytes_per_second'])}/s "
        f"({_size(transfer['bytes_received'])} in all)",
        f"  retries:      {retries}" + (f"; failed requests: {failures}" if failures else ""),
        f"  connections:  {conns['in_use']} in use, {conns['open']} open, cap {conns['cap']} "
        f"(configured {conns['configured']}, learned limit {learned})",
        f"  cache:        memory {_size(cache['memory_bytes'])} of {_size(cache['memory_limit'])}, "
        f"disk (staging) {_size(cache['staging_bytes'])} of {_size(cache['staging_limit'])}"
        + (f", disk (segments) {_size(cache['disk_bytes'])} of {_size(cache['disk_limit'])}"
           if cache.get("disk_limit") else ""),
        "  segments:     " + ", ".join(f"{count} {state}" for state, count in segments.items()),
    ]
    if not _unhealthy(report):
        lines.append("  health:       ok")
        return lines
    count = report["unhealthy_files"]
    lines.append(f"  health:       {count} file{'s' if count != 1 else ''} with problems")
    for item in report["health"]:
        names = ", ".join(item["paths"]) or f"(inode {item['inode']})"
        lines.append(f"    {names}: {item['problem']}")
    if report["unhealthy_files"] > len(report["health"]):
        lines.append(f"    ... and {report['unhealthy_files'] - len(report['health'])} more")
    if segments.get("missing"):
        lines.append(f"    {segments['missing']} segments are missing on the server: "
                     "run 'usenetfs verify --repair'")
    return lines


# ---------------------------------------------------------------------- verify

def _volume_arg(home: Home, spec: str) -> Volume:
    """A volume by name, or by the mountpoint it is mounted at."""
    if os.sep in spec or (spec not in list_volumes(home) and os.path.isdir(spec)):
        return find_mounted(home, spec)
    volume = Volume(home, spec)
    volume.load()
    return volume


def _verify(args) -> int:
    from ..verify import report_lines
    volume = _volume_arg(_home(args), args.volume)
    with Progress("verifying", unit="segments") as progress:
        if _running(volume):
            if args.passphrase_file:
                print("usenetfs: note: the volume is mounted: verify runs in the mount, which has the key",
                      file=sys.stderr)
            answer = _ask(volume, "verify", progress.line, sample=args.sample, repair=args.repair)
            report = answer["report"]
        else:
            report = _verify_offline(volume, args, progress.update)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(report_lines(report)))
    return 0 if report["ok"] else EXIT_DAMAGED


def _verify_offline(volume: Volume, args, progress) -> dict:
    """Verify an unmounted volume: this process opens the index and the server, and owns
    the volume meanwhile (a mount started now says, in one line, that verify holds it; the
    mount holds the index's locks, so the two could not share it anyway)."""
    from ..index import Index
    from ..nntp.client import NNTPClient, PoolOptions
    from ..session import check_server, segment_store, volume_servers
    from ..verify import Verifier

    settings = volume.load()
    keys = volume.unlock(read_passphrase(args.passphrase_file))
    pool = PoolOptions(max_connections=settings.learned_connection_limit or settings.connections)
    with volume.exclusive(f"usenetfs verify (pid {os.getpid()})"), volume_servers(volume, settings) as configs:
        if _running(volume):  # mounted since we looked: the lock is ours, so it is on its way down
            raise UserError(f"volume {volume.name!r} is mounted: run verify again (it then runs in the mount)")

        async def run() -> dict:
            await check_server(configs[0])
            async with NNTPClient(configs[0], pool) as client:
                index = Index.open(volume.index_file)
                try:
                    verifier = Verifier(index, segment_store(client, keys, settings), sample=args.sample,
                                        repair=args.repair, progress=progress,
                                        concurrency=2 * pool.max_connections)
                    return (await verifier.run()).as_dict()
                finally:
                    index.close()

        return trio.run(run)


# ---------------------------------------------------------------------- passwd

def _passwd(args) -> int:
    from ..backup import bootstrap_secret
    from ..keys import WrongPassphrase
    volume = Volume(_home(args), args.volume)
    settings = volume.load()
    old = read_passphrase(args.passphrase_file, prompt="Current passphrase")
    new = read_passphrase(args.new_passphrase_file, prompt="New passphrase", confirm=True,
                          option="--new-passphrase-file", environment=False)
    if new == old:
        raise UserError("the new passphrase is the same as the current one: nothing changed")
    try:
        volume.change_passphrase(old, new)
    except WrongPassphrase:
        raise UserError("wrong passphrase: the current passphrase does not open the key; nothing changed") from None
    print(f"passphrase of volume {volume.name!r} changed")
    if _running(volume):
        secret = bootstrap_secret(new, bytes.fromhex(settings.volume_id))
        try:
            _ask(volume, "bootstrap", secret=secret.hex())
        except UserError as error:
            print(f"usenetfs: warning: {error}; the backups of this mount keep the old passphrase's "
                  "key copy until it is mounted again", file=sys.stderr)
    print("The next index backup posts the key under the new passphrase. Backups posted before "
          "still open with the old one (Usenet cannot delete them): see 'usenetfs passwd --help'.")
    return 0


__all__ = ["register", "status_lines", "wait_for_uploads"]
