"""The owner's side of a share on disk: its keys and settings, and its audit log.

    config_dir/volumes/VOL/shares/NAME/share.json   keys, mode, recipients, expiry, what was
                                                    last published (mode 0600)
    data_dir/volumes/VOL/shares/NAME/objects        tree objects the server has (ChunkRecord)
    data_dir/volumes/VOL/shares/NAME/dirs           per-directory signatures of the last publish
    data_dir/volumes/VOL/shares/NAME/audit.log      one JSON object a line

Owns `ShareState` (load, save, create, the keys as objects), `AuditLog`, and finding shares
by name or by folder. Synchronous, small files.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import UserError
from ..home import Home
from ..keys import VolumeKeys
from ..volume import NAME_PATTERN, Volume, list_volumes, write_json_atomic
from .capability import FLAG_PASSWORD, FLAG_RECIPIENTS, Capability
from .stanzas import fingerprint

MODES = ("open", "password", "recipients")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class ShareState:
    name: str
    volume: str
    path: str  # the folder inside the volume, as given at creation ("/photos")
    share_id: str  # hex
    access_key: str  # base64
    signing_key: str  # base64 of the raw Ed25519 private key
    mode: str  # open | password | recipients
    epoch: int = 1
    epoch_key: str = ""  # base64
    root_inode: int | None = None  # resolved at the first publish: the share follows renames
    keyring: int = 0  # number of the last keyring posted
    keyring_epoch: int = 0  # the epoch that keyring wraps
    keyring_stale: bool = True  # recipients or expiry changed since: the next publish posts one
    password_stanza: dict | None = None  # the scrypt stanza of the current epoch (password mode)
    recipients: list[dict] = field(default_factory=list)  # {"key": "usenetfs-pub1:...", "added": t}
    expires: float | None = None
    seq: int = 0  # the last root posted in this epoch
    tree: list | None = None  # that root's [digest hex, generation]
    published: float | None = None
    hint: str = ""
    expired_logged: bool = False
    created: float = field(default_factory=time.time)

    # -------------------------------------------------------------- keys
    @property
    def share_bytes(self) -> bytes:
        return bytes.fromhex(self.share_id)

    @property
    def access_bytes(self) -> bytes:
        return _unb64(self.access_key)

    @property
    def epoch_bytes(self) -> bytes:
        return _unb64(self.epoch_key)

    def signer(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(_unb64(self.signing_key))

    def verify_key(self) -> bytes:
        return self.signer().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def access_keys(self) -> VolumeKeys:
        return VolumeKeys(self.access_bytes)

    def epoch_keys(self) -> VolumeKeys:
        return VolumeKeys(self.epoch_bytes)

    def capability(self) -> Capability:
        flags = {"password": FLAG_PASSWORD, "recipients": FLAG_RECIPIENTS}.get(self.mode, 0)
        return Capability(self.share_bytes, self.access_bytes, self.verify_key(), flags, self.hint)

    def new_epoch(self) -> None:
        """A fresh epoch key (revoke): everything is published again under it."""
        self.epoch += 1
        self.epoch_key = _b64(os.urandom(32))
        self.seq = 0
        self.tree = None
        self.keyring_stale = True
        self.password_stanza = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def key_fingerprint(self) -> str:
        return fingerprint(self.epoch_bytes)


class ShareFiles:
    """Where one share's files are."""

    def __init__(self, volume: Volume, name: str):
        if not NAME_PATTERN.match(name):
            raise UserError(f"invalid share name {name!r}: use letters, digits, '.', '_' or '-'")
        self.volume = volume
        self.name = name
        self.config_dir = volume.config_dir / "shares" / name
        self.data_dir = volume.data_dir / "shares" / name

    @property
    def state_file(self) -> Path:
        return self.config_dir / "share.json"

    @property
    def object_record(self) -> Path:
        return self.data_dir / "objects"

    @property
    def dir_cache(self) -> Path:
        return self.data_dir / "dirs"

    @property
    def audit_file(self) -> Path:
        return self.data_dir / "audit.log"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> ShareState:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise UserError(f"no share named {self.name!r} in volume {self.volume.name!r}") from None
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {self.state_file}: {error}") from None
        known = ShareState.__dataclass_fields__
        return ShareState(**{k: v for k, v in data.items() if k in known})

    def save(self, state: ShareState) -> None:
        for directory in (self.config_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.state_file, asdict(state))

    def create(self, path: str, mode: str, *, expires: float | None, hint: str) -> ShareState:
        if self.exists():
            raise UserError(f"a share named {self.name!r} exists in volume {self.volume.name!r}")
        if mode not in MODES:
            raise ValueError(mode)
        signing = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw,
                                                            serialization.PrivateFormat.Raw,
                                                            serialization.NoEncryption())
        state = ShareState(name=self.name, volume=self.volume.name, path=path, share_id=os.urandom(16).hex(),
                           access_key=_b64(os.urandom(32)), signing_key=_b64(signing), mode=mode,
                           epoch_key=_b64(os.urandom(32)), expires=expires, hint=hint)
        self.save(state)
        return state

    def audit(self) -> AuditLog:
        return AuditLog(self.audit_file)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One command at a time changes a share (a publish, grant or revoke): a second one
        fails at once rather than posting a keyring or root the first one overwrites."""
        self.config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.config_dir / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"share {self.name!r} is being published by another command; try again "
                                "when it is done") from None
            yield
        finally:
            os.close(fd)


class AuditLog:
    def __init__(self, path: Path):
        self.path = path

    def record(self, event: str, **fields) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps({"time": time.time(), "event": event, **fields}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
        return out


def all_shares(home: Home) -> list[ShareFiles]:
    out = []
    for volume_name in list_volumes(home):
        volume = Volume(home, volume_name)
        root = volume.config_dir / "shares"
        if root.is_dir():
            out.extend(ShareFiles(volume, p.name) for p in sorted(root.iterdir()) if (p / "share.json").exists())
    return out


def find_share(home: Home, name: str, volume: str | None = None) -> ShareFiles:
    """The share called `name` (in `volume`, or in the only volume that has one so named)."""
    found = [s for s in all_shares(home) if s.name == name and (volume is None or s.volume.name == volume)]
    if not found:
        raise UserError(f"no share named {name!r}" + (f" in volume {volume!r}" if volume else ""))
    if len(found) > 1:
        raise UserError(f"several volumes have a share named {name!r}: give --volume")
    return found[0]


def note_expiry(files: ShareFiles, state: ShareState) -> bool:
    """Record in the audit log, once, that the share has expired; True if it has."""
    if not state.expired():
        return False
    if not state.expired_logged:
        files.audit().record("expired", expires=state.expires, epoch=state.epoch,
                             key=state.key_fingerprint())
        state.expired_logged = True
        files.save(state)
    return True
