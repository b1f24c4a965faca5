"""The -o options of a usenetfs mount: one parser for `usenetfs mount -o` and `mount.usenetfs`.

    usenetfs's own      home=DIR, passphrase_file=FILE, config=FILE, foreground,
                        disk_cache=SIZE (an on-disk segment cache of that many bytes: 10G, 512M, 0 off)
    shares (capability) identity=FILE, share_password_file=FILE, server=URL, server_password_file=FILE,
                        poll=SECONDS
    applied by usenetfs ro, rw, uid=, gid=, umask= (pyfuse3 refuses uid/gid/umask)
    passed to FUSE      allow_other, allow_root, default_permissions, nosuid, suid, nodev, dev,
                        noexec, exec, noatime, atime, sync, async, dirsync, max_read=N,
                        auto_unmount (each checked to be accepted by pyfuse3 3.5 / libfuse 3.14)
    ignored             _netdev, nofail, auto, noauto, user, user=NAME, users, nouser, owner, defaults,
                        comment=..., x-* (x-systemd.*, x-gvfs-*): they are for mount(8) and systemd
    refused             passphrase=, password= and other secrets: options show in ps, logs, fstab

Anything else is an error, unless `sloppy` (mount -s) asks to ignore unknown options.

`config=FILE` names a file of more options, one per line, `#` starts a comment:

    # /etc/usenetfs/media.conf
    home=/var/lib/usenetfs
    passphrase_file=/etc/usenetfs/media.passphrase
    allow_other
    uid=1000

Its options come first, so the -o options override them. Paths in it must be absolute (it is
read at boot, where no working directory means anything) and it cannot name another config.
Values may be double-quoted to hold commas (`comment="a,b"`), as in libmount.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from ..errors import UserError, read_user_file

FUSE_FLAGS = frozenset({
    "allow_other", "allow_root", "default_permissions", "nosuid", "suid", "nodev", "dev", "noexec",
    "exec", "noatime", "atime", "sync", "async", "dirsync", "auto_unmount",
})
FUSE_VALUED = frozenset({"max_read"})
IGNORED = frozenset({"_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "defaults"})
IGNORED_VALUED = frozenset({"comment", "user"})  # user=NAME: mount(8) records who mounted it
# Every known option, by whether it takes a value: for the error on a misspelt form.
FLAGS = FUSE_FLAGS | IGNORED | {"ro", "rw", "foreground"}
SHARE_PATHS = frozenset({"identity", "share_password_file", "server_password_file"})  # mounting a capability
VALUED = FUSE_VALUED | IGNORED_VALUED | SHARE_PATHS | {"uid", "gid", "umask", "home", "passphrase_file", "config",
                                                      "server", "poll", "disk_cache"}
SECRETS = frozenset({"passphrase", "password", "passwd", "pass", "secret", "key"})


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = False
    uid: int | None = None  # applied by usenetfs to every file it reports
    gid: int | None = None
    umask: int | None = None
    fuse_extra: list[str] = field(default_factory=list)  # passed on to libfuse as given
    home: str | None = None
    passphrase_file: str | None = None
    config: str | None = None
    foreground: bool = False
    identity: str | None = None  # a share granted to an identity
    share_password_file: str | None = None  # a password-protected share
    server: str | None = None  # read a share from this server (URL without a password)
    server_password_file: str | None = None
    poll: float | None = None  # a mounted share looks for a newer publish this often (seconds)
    disk_cache_bytes: int | None = None  # the on-disk segment cache (None: the volume's setting)
    ignored: list[str] = field(default_factory=list)  # for -v: what was dropped and why

    def share_fields(self) -> dict:
        """The share options, as `share_cmd.mount_capability` takes them."""
        return {"identity": self.identity, "password_file": self.share_password_file, "server": self.server,
                "server_password_file": self.server_password_file}

    def has_share_fields(self) -> bool:
        return any(self.share_fields().values()) or self.poll is not None

    def request_fields(self) -> dict:
        """The fields of a `mountd.MountRequest` these options set."""
        return {"read_only": self.read_only, "allow_other": self.allow_other, "uid": self.uid,
                "gid": self.gid, "umask": self.umask, "fuse_extra": list(self.fuse_extra),
                "disk_cache_bytes": self.disk_cache_bytes}


def parse_mount_options(text: str, *, sloppy: bool = False) -> MountOptions:
    """`text` as given to -o (several -o are joined with commas). UserError for an unknown
    option (unless sloppy), a malformed value or a secret."""
    items = split_options(text)
    configs = [item for item in items if item.partition("=")[0] == "config"]
    if len(configs) > 1:
        raise UserError("mount option 'config' given more than once")
    options = MountOptions()
    if configs:
        path = _path_value(configs[0], from_file=False)
        options.config = path
        for item in read_config_file(path):
            _apply(options, item, sloppy=sloppy, from_file=True)
    for item in items:
        if item not in configs:
            _apply(options, item, sloppy=sloppy, from_file=False)
    return options


def split_options(text: str) -> list[str]:
    """Split at commas outside double quotes; drop empty items and the quotes."""
    items, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise UserError(f"unbalanced double quote in mount options {text!r}")
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def read_config_file(path: str) -> list[str]:
    text = read_user_file(path, "config")
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.partition("=")[0].strip() == "config":
            raise UserError(f"{path}:{number}: a config file cannot name another (config=)")
        items.append(line)
    return items


def _apply(options: MountOptions, item: str, *, sloppy: bool, from_file: bool) -> None:
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key in SECRETS:
        if key == "passphrase":
            hint = "put it in a file and give passphrase_file=FILE"
        else:
            hint = "server passwords are kept with the volume ('usenetfs init --password-file')"
        raise UserError(f"mount option {key!r} refused: secrets must not be mount options "
                        f"(ps, logs and fstab show them); {hint}")
    if key in ("ro", "rw") and not has_value:
        options.read_only = key == "ro"
    elif key in ("uid", "gid") and has_value:
        setattr(options, key, _id_value(item, key, value))
    elif key == "umask" and has_value:
        try:
            umask = int(value, 8)
        except ValueError:
            umask = -1
        if not 0 <= umask <= 0o777:
            raise UserError(f"invalid mount option {item!r}: umask takes an octal number up to 777")
        options.umask = umask
    elif key in ("home", "passphrase_file") and has_value:
        setattr(options, key, _path_value(item, from_file=from_file))
    elif key in SHARE_PATHS and has_value:
        setattr(options, key, _path_value(item, from_file=from_file))
    elif key == "poll" and has_value:
        try:
            poll = float(value)
        except ValueError:
            poll = 0.0
        if not 1 <= poll <= 7 * 86400:
            raise UserError(f"invalid mount option {item!r}: poll takes seconds, from 1 to 604800")
        options.poll = poll
    elif key == "disk_cache" and has_value:
        options.disk_cache_bytes = parse_size(value, f"invalid mount option {item!r}")
    elif key == "server" and has_value:
        authority = value.partition("://")[2].split("/", 1)[0]
        if "@" in authority and ":" in authority.split("@", 1)[0]:
            raise UserError("mount option 'server' refused: a password in the URL would show in ps, logs and "
                            "fstab; give server_password_file=FILE")
        options.server = value
    elif key == "foreground" and not has_value:
        options.foreground = True
    elif key == "allow_other" and not has_value:
        options.allow_other = True
    elif key in FUSE_FLAGS and not has_value:
        if item not in options.fuse_extra:
            options.fuse_extra.append(item)
    elif key in FUSE_VALUED and has_value:
        if not value.isdigit():
            raise UserError(f"invalid mount option {item!r}: {key} takes a number")
        options.fuse_extra = [opt for opt in options.fuse_extra if not opt.startswith(key + "=")] + [item]
    elif (key in IGNORED and not has_value) or (key in IGNORED_VALUED and has_value) or key.startswith("x-"):
        options.ignored.append(item)
    elif key in FLAGS or key in VALUED:  # known, but with or without a value where it must not be
        takes = "takes no value" if key in FLAGS else "takes a value"
        raise UserError(f"invalid mount option {item!r}: {key} {takes}")
    elif sloppy:
        options.ignored.append(f"{item} (unknown)")
    else:
        raise UserError(f"unknown mount option {item!r}")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, error: str) -> int:
    """Bytes from `10G`, `512M`, `64k`, `1.5G` or a plain number (binary units, an
    optional trailing B); UserError(`error` + what is expected) otherwise."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = -1.0
    if not 0 <= number < 1 << 20 or number != number:
        raise UserError(f"{error}: give a size such as 10G, 512M or 0")
    return int(number * _UNITS[unit])


def _id_value(item: str, key: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:  # a name, as in fstab lines written for people
        return pwd.getpwnam(value).pw_uid if key == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        kind = "user" if key == "uid" else "group"
        raise UserError(f"invalid mount option {item!r}: no {kind} named {value!r}") from None


def _path_value(item: str, *, from_file: bool) -> str:
    key, _, value = item.partition("=")
    if not value:
        raise UserError(f"invalid mount option {item!r}: {key} takes a path")
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        if from_file:
            raise UserError(f"invalid option {item!r} in a config file: the path must be absolute")
        path = os.path.abspath(path)
    return path
