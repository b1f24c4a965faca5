"""`usenetfs share ...` and `usenetfs id create`: publishing folders, and mounting them elsewhere.

    usenetfs share publish PATH [--volume NAME] [--name NAME] [--password-file F] [--expires DATE]
                                [--out CAPFILE] [--rescan] [--passphrase-file F]
    usenetfs share grant PATH RECIPIENT [same options]      (a share for named recipients)
    usenetfs share revoke SHARE RECIPIENT [--volume NAME] [--passphrase-file F]
    usenetfs share list [--json]
    usenetfs share info SHARE [--volume NAME] [--capability] [--json]
    usenetfs share log SHARE [--volume NAME] [--json]
    usenetfs share refresh MOUNTPOINT
    usenetfs share ls CAPABILITY [PATH] [--password-file F] [--identity F] [--server URL]
    usenetfs id create FILE [--force]
    (usenetfs mount CAPABILITY MOUNTPOINT ...: `mount_capability`, called by volume_cmd)

PATH is a folder inside a mounted volume of this home (the publish then runs inside its
mount daemon, which posts what is not posted yet first), or, with --volume NAME, a path
from the root of the unmounted volume NAME ("/photos"; the passphrase is then needed to
read its keys). SHARE is a share's name or its folder's PATH. docs/shares.md has the design.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

import trio

from ..errors import UserError, read_user_file
from ..home import Home
from ..process import process_alive
from ..volume import LOCAL_SERVER, Volume, list_volumes, read_passphrase

EXIT_MOUNT_FAILED = 32

PUBLISH_EPILOG = """\
Publishes the folder PATH: its names, attributes and the keys of the segments holding its
files are posted, encrypted, as ordinary-looking articles; the file data stays where the
volume posted it. Prints (or writes to --out, mode 0600) a capability: one line that lets
anyone holding it mount the folder read-only elsewhere ('usenetfs mount CAPFILE DIR'). With
--password-file the capability alone is not enough: the password is needed too. Publishing
again posts only what changed since the last publish.

PATH is a folder inside a volume of this home mounted here, or, with --volume NAME, a path
inside the volume NAME from its root, like /photos (if it is not mounted, its passphrase is
needed, and files it has not posted yet cannot be published).

DATE: 2030-01-31, '2030-01-31 18:00', +N followed by m, h, d or w (from now), or never.

exit codes: 0 published; 1 error (one line says why); 2 bad usage"""

GRANT_EPILOG = """\
Gives the holder of the identity whose public key is RECIPIENT (from 'usenetfs id create')
read access to the share of PATH, which then opens for its named recipients only. The first
grant publishes the folder. The capability printed is the same for every recipient and
useless without a granted identity.

exit codes: 0 granted; 1 error; 2 bad usage"""

REVOKE_EPILOG = """\
Removes RECIPIENT from the share and re-keys it: the folder is published again under a new
key that only the remaining recipients can open, so nothing published from now on reaches
the revoked one. What they could read before stays readable to them while the server keeps
those articles (Usenet cannot delete): to take back a file, copy it into a new share.

exit codes: 0 revoked; 1 error; 2 bad usage"""

MOUNT_HELP = "CAPFILE: a capability file, '-' for stdin, or the capability itself"

REFRESH_EPILOG = """\
Asks the share mounted at MOUNTPOINT to look for what its publisher published since it was
mounted or last refreshed (a newer root, or a new key after a revoke) and to apply it: only
the folders that changed are fetched. Files open meanwhile stay readable until closed.

exit codes: 0 refreshed or up to date; 1 error (the share expired, access was revoked, the
server failed: the mount keeps what it had); 2 bad usage"""

LS_EPILOG = """\
Lists the share's top folder from the server with the capability alone (and the password
or identity it needs): the keyring, the root and the top folder's objects, whatever the
share's size. Nothing is written to the home.

exit codes: 0 listed; 1 error (a damaged capability, a wrong password, an expired share,
forged or damaged articles); 2 bad usage"""

LOG_EPILOG = """\
Prints the share's audit log: every create, publish, grant, revoke and expiry, when, with
the fingerprints of the keys involved (16 hex digits of a hash: recipients' public keys,
the share's epoch key and signing key), never the keys.

exit codes: 0 printed; 1 error (no such share); 2 bad usage"""

ID_EPILOG = """\
Makes an X25519 identity: its secret key goes to FILE (mode 0600, refused if FILE exists
unless --force); its public key (usenetfs-pub1:...) is printed. Give the public key to a
share's owner, who grants it with 'usenetfs share grant'; then mount the share with
--identity FILE.

exit codes: 0 created; 1 error; 2 bad usage"""


def register(commands) -> None:
    share = commands.add_parser("share", help="publish folders, and manage what is published",
                                description="Publish a folder of a volume so it can be mounted read-only "
                                "elsewhere from a capability.")
    actions = share.add_subparsers(dest="share_command", metavar="ACTION")
    actions.required = True

    def owner_options(parser, *, creating: bool) -> None:
        parser.add_argument("--volume", metavar="NAME",
                            help="the volume (PATH is then a path inside it, from its root)")
        parser.add_argument("--passphrase-file", metavar="F", help="the volume's passphrase (unmounted volume)")
        if creating:
            parser.add_argument("--name", metavar="NAME", help="the share's name (default: the folder's)")
            parser.add_argument("--expires", metavar="DATE", help="clients refuse the share after DATE")
            parser.add_argument("--out", metavar="CAPFILE", help="write the capability to CAPFILE (mode 0600)")

    publish = actions.add_parser("publish", help="publish a folder (again: only what changed)",
                                 description="Publish a folder of a volume as a share.", epilog=PUBLISH_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    publish.add_argument("path", metavar="PATH")
    owner_options(publish, creating=True)
    publish.add_argument("--password-file", metavar="F",
                         help="a password is needed besides the capability (first line of F)")
    publish.add_argument("--rescan", action="store_true",
                         help="read every file again (after 'verify --repair' re-posted segments)")
    publish.set_defaults(handler=_publish)

    grant = actions.add_parser("grant", help="give a recipient's identity read access",
                               description="Share a folder with a named recipient.", epilog=GRANT_EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    grant.add_argument("path", metavar="PATH", help="the folder (or the name of its share)")
    grant.add_argument("recipient", metavar="RECIPIENT", help="a public key: usenetfs-pub1:...")
    owner_options(grant, creating=True)
    grant.set_defaults(handler=_grant)

    revoke = actions.add_parser("revoke", help="take a recipient's access to what is published next",
                                description="Revoke a recipient and re-key the share.", epilog=REVOKE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    revoke.add_argument("share", metavar="SHARE", help="the share's name or its folder's PATH")
    revoke.add_argument("recipient", metavar="RECIPIENT", help="the public key to revoke")
    owner_options(revoke, creating=False)
    revoke.set_defaults(handler=_revoke)

    listing = actions.add_parser("list", help="list the shares of this home (and the subscribed ones)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    info = actions.add_parser("info", help="show a share")
    info.add_argument("share", metavar="SHARE", help="the share's name or its folder's PATH")
    info.add_argument("--volume", metavar="NAME")
    info.add_argument("--capability", action="store_true", help="print only the capability")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_info)

    log = actions.add_parser("log", help="show a share's audit log (publishes, grants, revokes, expiry)",
                             description="Show a share's audit log.", epilog=LOG_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    log.add_argument("share", metavar="SHARE", help="the share's name or its folder's PATH")
    log.add_argument("--volume", metavar="NAME")
    log.add_argument("--json", action="store_true")
    log.set_defaults(handler=_log)

    refresh = actions.add_parser("refresh", help="load what a mounted share's publisher published since",
                                 description="Load what a mounted share's publisher published since.",
                                 epilog=REFRESH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    refresh.add_argument("mountpoint", metavar="MOUNTPOINT")
    refresh.set_defaults(handler=_refresh)

    ls = actions.add_parser("ls", help="list a share's top folder from its capability, without mounting",
                            description="List the top folder of a share without mounting it.", epilog=LS_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("capability", metavar="CAPFILE", help=MOUNT_HELP)
    subscriber_options(ls)
    ls.set_defaults(handler=_ls)

    ident = commands.add_parser("id", help="recipient identities (for shares granted to you)")
    id_actions = ident.add_subparsers(dest="id_command", metavar="ACTION")
    id_actions.required = True
    create = id_actions.add_parser("create", help="make an X25519 identity file (0600) and print its public key",
                                   description="Make an identity for shares granted to you.", epilog=ID_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    create.add_argument("file", metavar="FILE")
    create.add_argument("--force", action="store_true", help="overwrite FILE")
    create.set_defaults(handler=_id_create)
    show = id_actions.add_parser("show", help="print the public key of an identity file")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(handler=_id_show)


def subscriber_options(parser) -> None:
    parser.add_argument("--password-file", metavar="F", help="the share's password (a password-protected share)")
    parser.add_argument("--identity", metavar="F", help="your identity file (a share granted to you)")
    parser.add_argument("--server", metavar="URL",
                        help="read from this server instead of the one the capability names")
    parser.add_argument("--server-password-file", metavar="F", help="the password of --server's account")
    parser.add_argument("--ca-file", metavar="F", help="trust this CA or certificate file for TLS")


# --------------------------------------------------------------------- helpers

def _home(args) -> Home:
    return Home.resolve(args.home)


def parse_when(text: str, *, now: float | None = None) -> float:
    """DATE as Unix seconds: ISO date/time (local time unless it says otherwise) or +N[mhdw]."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"\+(\d+)([smhdw])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return now + int(match.group(1)) * unit
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"invalid date {text!r}: use 2030-01-31, '2030-01-31 18:00' or +7d") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.timestamp()


def _read_first_line(path: str, what: str) -> str:
    text = read_user_file(path, what)
    value = text.splitlines()[0] if text else ""
    if not value:
        raise UserError(f"the {what} file {path} is empty")
    return value


def _mounted(volume: Volume) -> dict | None:
    info = volume.mount_info()
    return info if info and process_alive(info.get("pid")) else None


def _locate(home: Home, path: str, volume_name: str | None) -> tuple[Volume, str]:
    """(volume, path inside it) of PATH (see the module docstring)."""
    if volume_name:
        volume = Volume(home, volume_name)
        volume.load()
        if not path.startswith("/"):
            raise UserError(f"with --volume, PATH is a path inside the volume from its root, like /{path}")
        return volume, "/" + "/".join(p for p in path.split("/") if p and p != ".")
    target = os.path.realpath(path)
    for name in list_volumes(home):
        volume = Volume(home, name)
        info = _mounted(volume)
        if not info:
            continue
        top = os.path.realpath(info["mountpoint"])
        if target == top or target.startswith(top.rstrip("/") + "/"):
            if not os.path.isdir(target):
                raise UserError(f"{path} is not a folder")
            return volume, "/" + os.path.relpath(target, top) if target != top else "/"
    raise UserError(f"{path} is not inside a volume of this home mounted here (to publish from an unmounted "
                    "volume, give --volume NAME and the path inside it, like /photos)")


def _shares_of(volume: Volume):
    from ..share.state import ShareFiles
    root = volume.config_dir / "shares"
    if not root.is_dir():
        return []
    return [ShareFiles(volume, p.name) for p in sorted(root.iterdir()) if (p / "share.json").exists()]


def _find_by_path(volume: Volume, rel: str):
    for files in _shares_of(volume):
        if files.load().path == rel:
            return files
    return None


def _share_arg(home: Home, text: str, volume_name: str | None):
    """SHARE: a share's name, or its folder's PATH."""
    from ..share.state import find_share
    from ..volume import NAME_PATTERN
    if NAME_PATTERN.match(text) and not os.path.exists(text):
        return find_share(home, text, volume_name)
    volume, rel = _locate(home, text, volume_name)
    files = _find_by_path(volume, rel)
    if files is None:
        raise UserError(f"{text} is not shared")
    return files


def _default_name(volume: Volume, rel: str) -> str:
    base = rel.rstrip("/").rsplit("/", 1)[-1] or volume.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:64] or "share"
    return name


def _hint(volume: Volume) -> str:
    """The capability's server hint: the volume's first server, without any credentials."""
    from ..nntp.config import parse_server_url
    from ..share.capability import make_hint
    settings = volume.load()
    url = settings.servers[0]
    if url == LOCAL_SERVER:
        from ..innserver import InnServer
        url = InnServer(volume.home.ensure().local_server_dir).url
    config = parse_server_url(url)
    return make_hint(f"{'nntps' if config.tls else 'nntp'}://{config.host}:{config.port}", settings.group)


def _write_capability(state, out: str | None) -> None:
    text = state.capability().encode()
    if not out:
        print(text)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(f"# usenetfs share {state.name!r}: mount it with 'usenetfs mount {out} DIR'\n{text}\n")
    except OSError as error:
        raise UserError(f"cannot write the capability to {out}: {error.strerror}") from None
    print(f"capability of share {state.name!r} written to {out}", file=sys.stderr)


# --------------------------------------------------------------------- publishing

def _prepare(args, home: Home, path: str, mode: str):
    """(volume, files, state) of the share of PATH, created (mode `mode`) if new."""
    from ..share.state import ShareFiles
    volume, rel = _locate(home, path, args.volume)
    files = _find_by_path(volume, rel)
    given = getattr(args, "expires", None)
    expires = None if given in (None, "never") else parse_when(given)
    if expires is not None and expires <= time.time():
        raise UserError("--expires is in the past")
    if files is None:
        files = ShareFiles(volume, args.name or _default_name(volume, rel))
        if files.exists():
            raise UserError(f"a share named {files.name!r} exists for another folder ({files.load().path}): "
                            "give --name")
        state = files.create(rel, mode, expires=expires, hint=_hint(volume))
        files.audit().record("create", mode=mode, path=rel, epoch=state.epoch, key=state.key_fingerprint())
    else:
        if args.name and args.name != files.name:
            raise UserError(f"{rel} is already shared as {files.name!r}")
        state = files.load()
        if given is not None and expires != state.expires:  # a new date, or "never"
            state.expires, state.keyring_stale, state.expired_logged = expires, True, False
            files.save(state)
    return volume, files, state


def _run_publish(args, volume: Volume, files, *, rescan: bool = False) -> dict:
    """Publish the share now: in the mount daemon if the volume is mounted, else here."""
    from ..cli.progress import Progress
    info = _mounted(volume)
    if info:
        from ..mountd import control_request
        _syncfs(info["mountpoint"])
        with Progress("publishing", unit="folders") as progress:
            answer = trio.run(lambda: control_request(volume, "share_publish", progress.line, share=files.name,
                                                      rescan=rescan))
        return answer["result"]
    return _publish_offline(args, volume, files, rescan=rescan)


def _syncfs(mountpoint: str) -> None:
    """Make the kernel hand over what it still holds for the mount (with its writeback cache,
    written pages and the times of files closed a moment ago), so the publish sees them."""
    from ..data.staging import sync_filesystem
    try:
        sync_filesystem(Path(mountpoint))
    except OSError:
        pass  # not mounted, or the mount failed to write back: the publish reports what it has


def _publish_offline(args, volume: Volume, files, *, rescan: bool) -> dict:
    from ..cli.progress import Progress
    from ..data.staging import staged_inodes
    from ..index import Index
    from ..nntp.client import NNTPClient
    from ..session import check_server, volume_servers
    from ..share.publish import publish
    settings = volume.load()
    passphrase = read_passphrase(args.passphrase_file)
    keys = volume.unlock(passphrase)
    staged = staged_inodes(volume.data_dir / "staging")

    async def run(config, progress):
        await check_server(config)
        index = Index.open(volume.index_file)
        try:
            async with NNTPClient(config) as client:
                with files.locked():
                    state = files.load()
                    result = await publish(files, state, index, keys, settings, client,
                                           is_dirty=lambda ino: ino in staged, rescan=rescan, progress=progress)
        finally:
            index.close()
        return result.as_dict()

    with volume_servers(volume, settings) as configs, Progress("publishing", unit="folders") as progress:
        return trio.run(run, configs[0], progress.update)


def _report(result: dict) -> None:
    print(f"published share {result['name']!r}: root {result['seq']} of epoch {result['epoch']}, "
          f"{result['files']} files in {result['dirs']} folders ({result['bytes'] / 1e6:.1f} MB); "
          f"{result['changed_dirs']} folders changed, {result['objects_posted']} index articles posted "
          f"({result['posted_bytes'] / 1e3:.0f} KB)" + (f", keyring {result['keyring']}" if result["keyring"] else ""),
          file=sys.stderr)


def _offline_guard(volume: Volume) -> None:
    info = volume.mount_info()
    if info and process_alive(info.get("pid")):
        return
    if not volume.index_file.exists():
        raise UserError(f"volume {volume.name!r} has no index here")


def _publish(args) -> int:
    from ..share.stanzas import scrypt_stanza
    home = _home(args)
    password = _read_first_line(args.password_file, "password") if args.password_file else None
    volume, files, state = _prepare(args, home, args.path, "password" if password else "open")
    _offline_guard(volume)
    if password is not None:
        if state.mode != "password":
            raise UserError(f"share {state.name!r} was published without a password; a password cannot be "
                            "added to a capability already given out (publish the folder as a new share with "
                            "--name)")
        state.password_stanza = scrypt_stanza(state.epoch_bytes, password, state.share_bytes, state.epoch)
        state.keyring_stale = True
        files.save(state)
    elif state.mode == "password" and state.password_stanza is None:
        raise UserError(f"share {state.name!r} needs its password: give --password-file")
    result = _run_publish(args, volume, files, rescan=args.rescan)
    _report(result)
    _write_capability(files.load(), args.out)
    return 0


def _grant(args) -> int:
    from ..share.stanzas import fingerprint, parse_public_key
    home = _home(args)
    recipient = parse_public_key(args.recipient)
    volume, files, state = _prepare(args, home, args.path, "recipients")
    _offline_guard(volume)
    if state.mode != "recipients":
        raise UserError(f"share {state.name!r} opens with its capability alone{' and a password' if state.mode == 'password' else ''}; "
                        "recipients need a share of their own (publish the folder again with --name, then grant)")
    text = args.recipient.strip().lower()
    if any(parse_public_key(r["key"]) == recipient for r in state.recipients):
        print(f"{text} is already a recipient of share {state.name!r}", file=sys.stderr)
    else:
        state.recipients.append({"key": text, "added": time.time()})
        state.keyring_stale = True
        files.save(state)
    if state.tree and not state.keyring_stale and state.keyring_epoch == state.epoch:
        pass  # already a recipient of what is published: nothing to post
    elif state.tree and state.keyring_epoch == state.epoch and not state.expired():
        # Published already under this key: a keyring wrapping it for one more recipient is
        # all it takes (no walk, no volume keys: no passphrase needed either).
        number = _post_keyring_only(volume, files)
        print(f"granted: share {state.name!r}, keyring {number} posted", file=sys.stderr)
    else:
        _report(_run_publish(args, volume, files))
    state = files.load()
    files.audit().record("grant", recipient=fingerprint(recipient), keyring=state.keyring, epoch=state.epoch,
                         key=state.key_fingerprint())
    _write_capability(state, args.out)
    return 0


def _post_keyring_only(volume: Volume, files) -> int:
    from ..nntp.client import NNTPClient
    from ..session import check_server, volume_servers
    from ..share.publish import post_keyring
    settings = volume.load()

    async def run(config) -> int:
        await check_server(config)
        async with NNTPClient(config) as client:
            with files.locked():
                state = files.load()
                number = await post_keyring(state, client, settings.group)
                files.save(state)
                return number

    with volume_servers(volume, settings) as configs:
        return trio.run(run, configs[0])


def _revoke(args) -> int:
    from ..share.stanzas import fingerprint, parse_public_key
    home = _home(args)
    files = _share_arg(home, args.share, args.volume)
    volume = files.volume
    _offline_guard(volume)
    recipient = parse_public_key(args.recipient)
    with files.locked():
        state = files.load()
        if state.mode != "recipients":
            raise UserError(f"share {state.name!r} opens with its capability{' and a password' if state.mode == 'password' else ''}, "
                            "not for named recipients: there is no one to revoke (whoever has the capability keeps "
                            "it; publish the folder as a new share to leave them behind)")
        kept = [r for r in state.recipients if parse_public_key(r["key"]) != recipient]
        if len(kept) == len(state.recipients):
            raise UserError(f"{args.recipient.strip()} is not a recipient of share {state.name!r}")
        old_key = state.key_fingerprint()
        state.recipients = kept
        state.new_epoch()
        files.save(state)
    files.audit().record("revoke", recipient=fingerprint(recipient), epoch=state.epoch, old_key=old_key,
                         key=state.key_fingerprint())
    result = _run_publish(args, volume, files)
    _report(result)
    print(f"revoked {args.recipient.strip()}: share {state.name!r} re-keyed (epoch {state.epoch}); what was "
          "published before stays readable to them while the server keeps it", file=sys.stderr)
    return 0


# --------------------------------------------------------------------- looking

def _summary(files) -> dict:
    from ..share.publish import format_time
    from ..share.state import note_expiry
    state = files.load()
    expired = note_expiry(files, state)
    return {"name": state.name, "volume": state.volume, "path": state.path, "mode": state.mode,
            "share_id": state.share_id, "epoch": state.epoch, "root": state.seq, "keyring": state.keyring,
            "recipients": [r["key"] for r in state.recipients], "expires": state.expires,
            "expires_text": format_time(state.expires), "expired": expired, "published": state.published,
            "published_text": format_time(state.published) if state.published else "not yet",
            "server_hint": state.hint}


def _list(args) -> int:
    from ..share.state import all_shares
    from ..share.subscribe import list_subscriptions
    home = _home(args)
    owned = [_summary(files) for files in all_shares(home)]
    subscribed = []
    for sub in list_subscriptions(home):
        settings = sub.load_settings()
        info = sub.mount_info()
        subscribed.append({"subscription": sub.name, "share": settings.get("share_name"),
                           "server": settings.get("server"),
                           "mountpoint": info.get("mountpoint") if info and process_alive(info.get("pid")) else None})
    if args.json:
        print(json.dumps({"shares": owned, "subscriptions": subscribed}, indent=2))
        return 0
    if not owned and not subscribed:
        print("no shares")
    for s in owned:
        state = "expired" if s["expired"] else ("published" if s["published"] else "not published")
        print(f"{s['name']}\t{s['volume']}:{s['path']}\t{s['mode']}\t{state}\texpires {s['expires_text']}")
    for s in subscribed:
        print(f"{s['subscription']}\t(subscribed: {s['share'] or '?'})\t{s['mountpoint'] or 'not mounted'}")
    return 0


def _info(args) -> int:
    files = _share_arg(_home(args), args.share, args.volume)
    if args.capability:
        print(files.load().capability().encode())
        return 0
    summary = _summary(files)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key in ("name", "volume", "path", "mode", "share_id", "epoch", "root", "keyring", "published_text",
                "expires_text", "server_hint"):
        print(f"{key.replace('_text', '')}: {summary[key]}")
    for key in summary["recipients"]:
        print(f"recipient: {key}")
    return 0


def _log(args) -> int:
    files = _share_arg(_home(args), args.share, args.volume)
    from ..share.state import note_expiry
    note_expiry(files, files.load())
    entries = files.audit().entries()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time", 0)))
        shown = {k: (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(v)) if k == "expires" else v)
                 for k, v in entry.items() if k not in ("time", "event") and v is not None}
        rest = " ".join(f"{k}={shown[k]}" for k in sorted(shown))
        print(f"{when} {entry.get('event')} {rest}")
    return 0


def _refresh(args) -> int:
    from ..mountd import control_request
    from ..share.subscribe import find_mounted_subscription
    sub = find_mounted_subscription(_home(args), args.mountpoint)
    if sub is None:
        raise UserError(f"no share of this home is mounted at {args.mountpoint}")
    answer = trio.run(lambda: control_request(sub, "refresh"))
    if answer.get("changed"):
        print(f"refreshed to root {answer['seq']} of epoch {answer['epoch']}: {answer['names_changed']} names and "
              f"{answer['files_changed']} files changed")
    else:
        print(f"up to date (root {answer['seq']} of epoch {answer['epoch']})")
    return 0


# --------------------------------------------------------------------- subscribing

def _access(args):
    from ..share.stanzas import read_identity
    from ..share.subscribe import Access
    password = _read_first_line(args.password_file, "password") if args.password_file else None
    identity = read_identity(args.identity) if args.identity else None
    return Access(password=password, identity=identity)


def _server(cap, server: str | None, password_file: str | None, ca_file: str | None):
    from ..nntp.config import parse_server_url
    url = server or cap.server_url()
    if not url:
        raise UserError("the capability names no server: give --server URL")
    return parse_server_url(url, password_file=password_file, ca_file=ca_file)


def _check_access(cap, access) -> None:
    if cap.needs_password and access.password is None:
        raise UserError("this share is password-protected: give --password-file")
    if cap.needs_identity and access.identity is None:
        raise UserError("this share is for named recipients: give --identity FILE")


def _ls(args) -> int:
    from ..share.articles import ObjectFetcher
    from ..share.capability import read_capability
    from ..share.subscribe import open_share
    from ..share import tree
    from ..backup.chunks import hash_key
    from ..keys import VolumeKeys
    from ..nntp.client import NNTPClient
    from ..session import check_server
    import tempfile
    cap = read_capability(args.capability)
    access = _access(args)
    _check_access(cap, access)
    config = _server(cap, args.server, args.server_password_file, args.ca_file)

    async def run():
        await check_server(config)
        limiter = trio.CapacityLimiter(2)
        async with NNTPClient(config) as client:
            opened = await open_share(client, cap, access, limiter)
            keys = VolumeKeys(opened.epoch_key)
            with tempfile.TemporaryDirectory() as scratch:
                fetcher = ObjectFetcher(client, keys, cap.share_id, hash_key(keys), Path(scratch), limiter)
                pieces = tree.decode_directory(await fetcher.get(opened.root.tree_ref, "the top folder"))
                entries = []
                for raw in await fetcher.get_many(pieces, "the top folder"):
                    entries.extend(tree.decode_piece(raw).entries)
            return opened, entries

    opened, entries = trio.run(run)
    root = opened.root
    print(f"# share {root.name!r}, root {opened.root_number} of epoch {opened.keyring.epoch}: "
          f"{root.stats.get('files', '?')} files in {root.stats.get('dirs', '?')} folders", file=sys.stderr)
    for entry in entries:
        kind = "d" if entry.is_dir else ("l" if entry.is_symlink else "-")
        name = entry.name.decode("utf-8", "replace")
        print(f"{kind} {entry.size:>12} {name}{'/' if entry.is_dir else ''}")
    return 0


def mount_capability(home: Home, spec: str, mountpoint: str, options, *, password_file: str | None = None,
                     identity: str | None = None, server: str | None = None, server_password_file: str | None = None,
                     ca_file: str | None = None, fsname: str | None = None) -> int:
    """Mount the share a capability names (usenetfs mount, mount.usenetfs): fetch its index
    into a mirror in `home`, then mount read-only. Every failure is exit 32."""
    from ..cli.progress import Progress
    from ..mountd import MountRequest
    from ..share.capability import read_capability
    from ..share.mount import ShareMount, mount_share, subscribe
    from ..share.stanzas import read_identity
    from ..share.subscribe import Access, Subscription
    try:
        cap = read_capability(spec)
        access = Access(password=_read_first_line(password_file, "password") if password_file else None,
                        identity=read_identity(identity) if identity else None)
        _check_access(cap, access)
        config = _server(cap, server, server_password_file, ca_file)
        sub = Subscription(home, cap.share_id)
        info = sub.mount_info()
        if info and process_alive(info.get("pid")):
            raise UserError(f"this share is already mounted at {info['mountpoint']}")
        sub.ensure()
        with Progress("fetching the share's index", unit="folders") as progress:
            opened, _ = trio.run(subscribe, sub, cap, access, config, progress.update)
        sub.save_settings({"capability": cap.encode(), "share_name": opened.root.name,
                           "server": config.describe() + ("?starttls=1" if config.starttls else ""),
                           "subscribed": time.time()})
    except UserError as error:
        raise UserError(str(error), EXIT_MOUNT_FAILED) from None
    except BaseException as raised:
        from ..errors import user_error_behind
        error = user_error_behind(raised)
        if isinstance(error, UserError):
            raise UserError(str(error), EXIT_MOUNT_FAILED) from None
        raise
    request = MountRequest(volume=sub, keys=None, mountpoint=mountpoint, foreground=options.foreground,
                           notify_systemd=options.foreground, fsname=fsname or f"usenetfs:{sub.name}",
                           **options.request_fields())
    return mount_share(ShareMount(sub, cap, access, config, opened, poll=options.poll), request)


def _id_create(args) -> int:
    from ..share.stanzas import Identity, write_identity
    identity = Identity.generate()
    write_identity(Path(args.file), identity, force=args.force)
    print(identity.public_text())
    print(f"identity written to {args.file} (keep it secret; give the public key above to a share's owner)",
          file=sys.stderr)
    return 0


def _id_show(args) -> int:
    from ..share.stanzas import read_identity
    print(read_identity(args.file).public_text())
    return 0


__all__ = ["mount_capability", "parse_when", "register", "subscriber_options"]
