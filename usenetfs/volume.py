"""A volume on disk: its configuration, its wrapped key, its directories, its secrets.

    config_dir/volumes/NAME/volume.json   settings (servers without passwords, group, sizes)
    config_dir/volumes/NAME/key.json      the passphrase-wrapped master key and its key check
    config_dir/volumes/NAME/secrets.json  server passwords (mode 0600)
    data_dir/volumes/NAME/index.sqlite    the index
    data_dir/volumes/NAME/staging/        write-back staging (durable: not a cache)
    data_dir/volumes/NAME/mount.json      the running mount: mountpoint, pid, control socket
    data_dir/volumes/NAME/owner.lock      flock(2) held by the one process that owns the index
                                          and staging: the mount daemon, or an offline sync
    data_dir/volumes/NAME/backup-chunks   index chunks the server has (usenetfs.backup)
    data_dir/volumes/NAME/backup-snapshot.sqlite  the index copy a running backup posts from
    data_dir/volumes/NAME/backup-current  the index file is exactly what backup N holds (usenetfs.backup)
    cache_dir/volumes/NAME/               segment cache (may be deleted at any time)

Everything here is synchronous and small; nothing talks to a server.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError, read_user_file
from .home import Home
from .keys import VolumeKeys, create_envelope, rewrap_envelope, unwrap_envelope
from .nntp.config import ServerConfig, parse_server_url

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_NAME = "default"
LOCAL_SERVER = "local"  # the servers entry meaning "the project's own INN in the home"


@dataclass
class VolumeSettings:
    name: str
    volume_id: str  # 32 hex digits: the volume scope's 16-byte id
    servers: list[str]  # URLs without passwords, or ["local"]
    group: str
    connections: int = 4
    ca_file: str | None = None
    cipher: str = "aes-256-gcm"
    segment_size: int = 716_800
    pad_articles: bool = False
    quota_bytes: int | None = None  # statfs size; None: a large constant
    cache_bytes: int = 256 << 20
    # The on-disk segment cache under the volume's cache directory (0: none); a mount's
    # -o disk_cache=SIZE overrides it.
    disk_cache_bytes: int = 0
    staging_limit: int = 4 << 30
    # Upload a file still being written once this many whole segments past its uploaded
    # part wait (0: only after it is closed or idle). Off by default: measurements disagree
    # (docs/performance.md): cp + upload of 1 GiB 116-118 -> 127-128 MB/s with 8 on a quiet
    # disk, 88 -> 80 MB/s with GBs of dirty pages being written back (bench_nyuu), and cp
    # itself returns 40-80% slower.
    stream_segments: int = 0
    learned_connection_limit: int | None = None
    last_backup: int = 0  # number of the newest index backup posted (usenetfs.backup)
    backup_settle_seconds: float = 60.0  # back up while mounted once changes have settled this long
    backup_min_interval: float = 600.0  # and at most this often
    created: float = field(default_factory=time.time)


class Volume:
    def __init__(self, home: Home, name: str):
        if not NAME_PATTERN.match(name):
            raise UserError(f"invalid volume name {name!r}: use letters, digits, '.', '_' or '-'")
        self.home = home
        self.name = name
        self.config_dir = home.config_dir / "volumes" / name
        self.data_dir = home.data_dir / "volumes" / name
        self.cache_dir = home.cache_dir / "volumes" / name

    # ------------------------------------------------------------- locations
    @property
    def settings_file(self) -> Path:
        return self.config_dir / "volume.json"

    @property
    def key_file(self) -> Path:
        return self.config_dir / "key.json"

    @property
    def secrets_file(self) -> Path:
        return self.config_dir / "secrets.json"

    @property
    def index_file(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def backup_record_file(self) -> Path:
        return self.data_dir / "backup-chunks"

    @property
    def backup_current_file(self) -> Path:
        return self.data_dir / "backup-current"

    @property
    def backup_snapshot_file(self) -> Path:
        return self.data_dir / "backup-snapshot.sqlite"

    @property
    def mount_file(self) -> Path:
        return self.data_dir / "mount.json"

    @property
    def control_socket(self) -> Path:
        """The mount daemon's socket. Unix socket paths are limited to 107 bytes, so a deep
        data directory gets one in a private directory under /tmp instead."""
        path = self.data_dir / "control.sock"
        if len(os.fsencode(path)) <= 100:
            return path
        private = Path(f"/tmp/usenetfs-{os.getuid()}")
        private.mkdir(mode=0o700, exist_ok=True)
        if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
            raise UserError(f"{private} is not a private directory of this user")
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:20]
        return private / f"{digest}.sock"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "mount.log"

    def exists(self) -> bool:
        return self.settings_file.exists()

    # ---------------------------------------------------------------- create
    @classmethod
    def create(cls, home: Home, name: str, *, servers: list[str], group: str, passphrase: str,
               connections: int = 4, ca_file: str | None = None, log_n: int = 17,
               password_file: str | None = None) -> "Volume":
        volume = cls(home.ensure(), name)
        if volume.exists():
            raise UserError(f"volume {name!r} already exists in {volume.config_dir}")
        if not servers:
            raise UserError("give at least one --server URL, or --local")
        if not re.match(r"^[a-z0-9][a-z0-9.+_-]*$", group):
            raise UserError(f"invalid newsgroup name {group!r}")
        passwords: dict[str, str] = {}
        clean_urls = []
        for url in servers:
            if url == LOCAL_SERVER:
                clean_urls.append(url)
                continue
            config = parse_server_url(url, password_file=password_file, ca_file=ca_file)
            if config.password is not None:
                passwords[config.describe()] = config.password
            clean_urls.append(config.describe() + ("?starttls=1" if config.starttls else ""))
        master_key, envelope = create_envelope(passphrase, log_n=log_n)
        keys = VolumeKeys(master_key)
        settings = VolumeSettings(name=name, volume_id=os.urandom(16).hex(), servers=clean_urls,
                                  group=group, connections=connections, ca_file=ca_file)
        for directory in (volume.config_dir, volume.data_dir, volume.cache_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(volume.key_file, {"envelope": envelope, "key_check": keys.key_check().hex()})
        write_json_atomic(volume.secrets_file, passwords)
        volume.save(settings)
        return volume

    # ----------------------------------------------------------------- read
    def load(self) -> VolumeSettings:
        try:
            data = json.loads(self.settings_file.read_text())
        except FileNotFoundError:
            raise UserError(f"no volume named {self.name!r} (create it with 'usenetfs init')") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {self.settings_file}: {exc}") from None
        known = VolumeSettings.__dataclass_fields__
        return VolumeSettings(**{k: v for k, v in data.items() if k in known})

    def save(self, settings: VolumeSettings) -> None:
        write_json_atomic(self.settings_file, asdict(settings))

    def unlock(self, passphrase: str) -> VolumeKeys:
        """The volume's keys; WrongPassphrase (one line) if the passphrase is wrong."""
        stored = json.loads(self.key_file.read_text())
        keys = VolumeKeys(unwrap_envelope(stored["envelope"], passphrase))
        if not hmac.compare_digest(keys.key_check().hex(), stored["key_check"]):
            raise UserError("the key file does not match this volume's key check")
        return keys

    def change_passphrase(self, old: str, new: str) -> None:
        stored = json.loads(self.key_file.read_text())
        stored["envelope"] = rewrap_envelope(stored["envelope"], old, new)
        write_json_atomic(self.key_file, stored)

    def server_configs(self, settings: VolumeSettings, local_url: str | None = None) -> list[ServerConfig]:
        passwords = json.loads(self.secrets_file.read_text()) if self.secrets_file.exists() else {}
        configs = []
        for url in settings.servers:
            if url == LOCAL_SERVER:
                if local_url is None:
                    raise UserError("the local server is not running")
                url = local_url
            config = parse_server_url(url, ca_file=settings.ca_file)
            configs.append(config.with_password(passwords.get(config.describe(), config.password)))
        return configs

    @contextmanager
    def exclusive(self, holder: str) -> Iterator[None]:
        """Own the volume's index and staging area for the duration (flock on owner.lock,
        released by the kernel if the process dies). Only one process may: the mount
        daemon, or `usenetfs sync` on an unmounted volume. UserError naming the holder if
        another process owns it. `holder` says who we are, for that message."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_CLOEXEC: a server the daemon starts must not inherit (and so keep) the lock.
        fd = os.open(self.data_dir / "owner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
                raise UserError(f"volume {self.name!r} is in use by {other}") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
            yield
        finally:
            os.close(fd)

    def mount_info(self) -> dict | None:
        try:
            return json.loads(self.mount_file.read_text())
        except (OSError, ValueError):
            return None


def list_volumes(home: Home) -> list[str]:
    root = home.config_dir / "volumes"
    return sorted(p.name for p in root.iterdir() if (p / "volume.json").exists()) if root.exists() else []


def find_mounted(home: Home, mountpoint: str | os.PathLike) -> Volume:
    """The volume whose running mount is at `mountpoint`."""
    target = os.path.realpath(mountpoint)
    for name in list_volumes(home):
        volume = Volume(home, name)
        info = volume.mount_info()
        if info and os.path.realpath(info["mountpoint"]) == target:
            return volume
    raise UserError(f"no usenetfs volume of this home is mounted at {mountpoint}")


def read_passphrase(passphrase_file: str | None, *, confirm: bool = False, prompt: str = "Passphrase",
                    option: str = "--passphrase-file", environment: bool = True) -> str:
    """From a file (first line), $USENETFS_PASSPHRASE_FILE (unless `environment` is
    False: a new passphrase must not default to the current one), or a prompt on a
    terminal. `option` names the command's option in the error for none of these."""
    path = passphrase_file or (os.environ.get("USENETFS_PASSPHRASE_FILE") if environment else None)
    if path:
        text = read_user_file(path, "passphrase")
        passphrase = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        passphrase = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} again: ") != passphrase:
            raise UserError("the passphrases do not match")
    else:
        hint = " or set USENETFS_PASSPHRASE_FILE" if environment else ""
        raise UserError(f"no passphrase: give {option}{hint}")
    if not passphrase:
        raise UserError("the passphrase is empty")
    return passphrase


def write_json_atomic(path: Path, data) -> None:
    """Atomically: temporary file, fsync, rename, fsync the directory."""
    write_text_atomic(path, json.dumps(data, indent=2))


def write_text_atomic(path: Path, text: str) -> None:
    """Atomically (owner-only): temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
