"""The capability: one line of text that lets its holder find, check and (maybe) read a share.

    usenetfs-cap1:<lower-case base32, no padding>

of  version(1) || flags(1) || share id(16) || access key(32) || signing public key(32)
    || hint length(1) || hint || checksum(4)

flags: 1 a password is needed, 2 an identity is needed (hints for a clear message; the
keyring says what really opens it). The hint is `nntp[s]://host:port/group` of the
publisher's server, never a user name or password. The checksum (SHA-256 of the label and
everything before it, first 4 bytes) catches a damaged or mistyped capability; it is not
a security measure (the signing key and the AEAD are).

Owns `Capability`, `parse` (every failure is one `UserError` line) and `read_capability`
(from a file, stdin as "-", or the text itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError

PREFIX = "usenetfs-cap1:"
VERSION = 1
FLAG_PASSWORD = 1
FLAG_RECIPIENTS = 2
_LABEL = b"usenetfs-cap1"
_FIXED = 1 + 1 + 16 + 32 + 32 + 1
_CHECKSUM = 4


@dataclass(frozen=True)
class Capability:
    share_id: bytes
    access_key: bytes
    verify_key: bytes  # Ed25519 public key of the publisher
    flags: int = 0
    hint: str = ""  # nntp[s]://host:port/group, or ""

    def encode(self) -> str:
        hint = self.hint.encode("utf-8")
        if len(hint) > 255:
            raise ValueError("server hint too long")
        body = (bytes((VERSION, self.flags)) + self.share_id + self.access_key + self.verify_key
                + bytes((len(hint),)) + hint)
        raw = body + hashlib.sha256(_LABEL + body).digest()[:_CHECKSUM]
        return PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    @property
    def needs_password(self) -> bool:
        return bool(self.flags & FLAG_PASSWORD)

    @property
    def needs_identity(self) -> bool:
        return bool(self.flags & FLAG_RECIPIENTS)

    def server_url(self) -> str | None:
        """The hint's server URL (without the group), or None."""
        if not self.hint:
            return None
        parts = urlsplit(self.hint)
        return f"{parts.scheme}://{parts.netloc}"

    def group(self) -> str | None:
        if not self.hint:
            return None
        return urlsplit(self.hint).path.strip("/") or None


def make_hint(scheme_host_port: str, group: str) -> str:
    """`nntp://host:port` (a URL without credentials) and a group, as a capability hint."""
    parts = urlsplit(scheme_host_port)
    if parts.username or parts.password:
        raise ValueError("a capability hint must not carry credentials")
    return f"{parts.scheme}://{parts.hostname}:{parts.port}/{group}"


def parse(text: str) -> Capability:
    """The capability in `text` (surrounding white space ignored); UserError if damaged."""
    text = text.strip()
    if not text.lower().startswith(PREFIX):
        if text.lower().startswith("usenetfs-cap"):
            raise UserError("capability: unsupported version (this usenetfs reads usenetfs-cap1)")
        raise UserError("not a usenetfs capability (it should start with 'usenetfs-cap1:')")
    encoded = "".join(text[len(PREFIX):].split()).upper()
    try:
        raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise UserError("capability is damaged: it is not base32 (was it cut or mistyped?)") from None
    if len(raw) < _FIXED + _CHECKSUM:
        raise UserError("capability is damaged: too short (was it cut?)")
    body, checksum = raw[:-_CHECKSUM], raw[-_CHECKSUM:]
    if hashlib.sha256(_LABEL + body).digest()[:_CHECKSUM] != checksum:
        raise UserError("capability is damaged: its checksum does not match (was it cut or mistyped?)")
    if body[0] != VERSION:
        raise UserError(f"capability: unsupported version {body[0]}")
    hint_len = body[_FIXED - 1]
    if len(body) != _FIXED + hint_len:
        raise UserError("capability is damaged: wrong length")
    try:
        hint = body[_FIXED:].decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("capability is damaged: its server hint is not text") from None
    return Capability(share_id=body[2:18], access_key=body[18:50], verify_key=body[50:82], flags=body[1],
                      hint=hint)


def read_capability(source: str) -> Capability:
    """A capability from a file path, from stdin ("-"), or the capability text itself."""
    if source.lower().startswith(PREFIX):
        return parse(source)
    if source == "-":
        return parse(sys.stdin.readline())
    try:
        text = Path(source).read_text()
    except FileNotFoundError:
        raise UserError(f"capability file {source} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"capability file {source} is a directory") from None
    except OSError as error:
        raise UserError(f"cannot read the capability file {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"capability file {source} is not text") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UserError(f"capability file {source} is empty")
    return parse(lines[0])
