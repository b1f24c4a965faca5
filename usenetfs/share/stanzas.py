"""Wrapping a share's epoch key for whoever may read it: keyring stanzas and X25519 identities.

Stanzas (JSON objects in a keyring, docs/shares.md), each wrapping the 32-byte epoch key:

- `{"type": "open", "key"}`: the key itself: whoever holds the capability reads.
- `{"type": "scrypt", "log_n", "salt", "body"}`: AES-256-GCM under
  scrypt(password, salt, N = 2^log_n, r = 8, p = 1), nonce zero (the key is used once:
  a fresh salt every time), AAD = label || share id || epoch || log_n. It must be the only
  stanza: a password share is exactly that.
- `{"type": "x25519", "eph", "body"}`: age's recipient stanza, re-implemented with
  `cryptography`: an ephemeral X25519 key, wrap key = HKDF-SHA256(shared secret,
  salt = eph || recipient, info = "usenetfs/v1/share/x25519"), ChaCha20-Poly1305 with a zero
  nonce, AAD = share id || epoch. No recipient identifier: a reader tries every stanza. An
  all-zero shared secret (a low-order point) is refused, and a body must be exactly 48 bytes.

Identities: an identity file holds one X25519 secret key (`USENETFS-SECRET-KEY-1:` + base32
+ checksum); its public key, what an owner grants, is `usenetfs-pub1:` + base32 (lower case)
+ checksum. Pure and synchronous; scrypt takes a good part of a second (call it in a thread
from an event loop).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import UserError, read_user_file

KEY_SIZE = 32
PUBLIC_PREFIX = "usenetfs-pub1:"
SECRET_PREFIX = "USENETFS-SECRET-KEY-1:"
DEFAULT_LOG_N = 17
MIN_LOG_N, MAX_LOG_N = 10, 22  # read bounds: below is no protection, above a denial of service
_X25519_INFO = b"usenetfs/v1/share/x25519"
_SCRYPT_AAD = b"usenetfs/v1/share/scrypt"
_ZERO_NONCE = bytes(12)
_CHECKSUM = 4


class NotForUs(Exception):
    """No stanza opens with what we were given."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value, size: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not a string")
    raw = base64.b64decode(value, validate=True)
    if len(raw) != size:
        raise ValueError("wrong size")
    return raw


def _aad(share_id: bytes, epoch: int) -> bytes:
    return share_id + epoch.to_bytes(4, "big")


# ---------------------------------------------------------------- keys as text

def _checksum(label: str, raw: bytes) -> bytes:
    return hashlib.sha256(label.encode() + raw).digest()[:_CHECKSUM]


def _encode_key(prefix: str, raw: bytes) -> str:
    return prefix + base64.b32encode(raw + _checksum(prefix, raw)).decode("ascii").rstrip("=")


def _decode_key(prefix: str, text: str, what: str) -> bytes:
    text = text.strip()
    if text[:len(prefix)].lower() != prefix.lower():
        raise UserError(f"not a {what} (it should start with {prefix!r})")
    body = text[len(prefix):].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise UserError(f"{what} is damaged (not base32)") from None
    if len(raw) != KEY_SIZE + _CHECKSUM or _checksum(prefix, raw[:KEY_SIZE]) != raw[KEY_SIZE:]:
        raise UserError(f"{what} is damaged (its checksum does not match)")
    return raw[:KEY_SIZE]


def public_key_text(public: bytes) -> str:
    return _encode_key(PUBLIC_PREFIX, public).lower()


def parse_public_key(text: str) -> bytes:
    return _decode_key(PUBLIC_PREFIX, text, "recipient public key")


def fingerprint(raw: bytes) -> str:
    """16 hex digits naming a key in logs and listings (never the key itself)."""
    return hashlib.sha256(b"usenetfs/v1/fingerprint" + raw).hexdigest()[:16]


class Identity:
    """An X25519 key pair that can open the stanzas made for its public key."""

    def __init__(self, secret: bytes):
        self._private = X25519PrivateKey.from_private_bytes(secret)
        self.public = self._private.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(KEY_SIZE))

    def secret_text(self) -> str:
        raw = self._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        return _encode_key(SECRET_PREFIX, raw)

    def public_text(self) -> str:
        return public_key_text(self.public)

    def file_text(self) -> str:
        return (f"# usenetfs identity, created {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
                f"# public key: {self.public_text()}\n"
                f"{self.secret_text()}\n")

    def exchange(self, peer: bytes) -> bytes:
        return self._private.exchange(X25519PublicKey.from_public_bytes(peer))


def write_identity(path: Path, identity: Identity, *, force: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UserError(f"{path} exists: refusing to overwrite an identity (give --force)") from None
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(identity.file_text())
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, 0o600)


def read_identity(path: str) -> Identity:
    text = read_user_file(path, "identity")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise UserError(f"the identity file {path} should hold one {SECRET_PREFIX} line")
    return Identity(_decode_key(SECRET_PREFIX, lines[0], f"identity in {path}"))


# ---------------------------------------------------------------- stanzas

def open_stanza(key: bytes) -> dict:
    return {"type": "open", "key": _b64(key)}


def _scrypt(password: bytes, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_SIZE, n=1 << log_n, r=8, p=1).derive(password)


def scrypt_stanza(key: bytes, password: str, share_id: bytes, epoch: int, *, log_n: int = DEFAULT_LOG_N) -> dict:
    if not password:
        raise UserError("the share password must not be empty")
    salt = os.urandom(16)
    wrap = _scrypt(password.encode("utf-8"), salt, log_n)
    body = AESGCM(wrap).encrypt(_ZERO_NONCE, key, _SCRYPT_AAD + _aad(share_id, epoch) + bytes((log_n,)))
    return {"type": "scrypt", "log_n": log_n, "salt": _b64(salt), "body": _b64(body)}


def x25519_stanza(key: bytes, recipient: bytes, share_id: bytes, epoch: int) -> dict:
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:  # cryptography itself refuses an all-zero shared secret (a low-order point)
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:
        shared = bytes(32)
    if shared == bytes(32):
        raise UserError("this recipient public key is not usable (a low-order point)")
    wrap = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=eph_public + recipient,
                info=_X25519_INFO).derive(shared)
    body = ChaCha20Poly1305(wrap).encrypt(_ZERO_NONCE, key, _aad(share_id, epoch))
    return {"type": "x25519", "eph": _b64(eph_public), "body": _b64(body)}


def unwrap(stanzas: list, share_id: bytes, epoch: int, *, password: str | None = None,
           identity: Identity | None = None) -> bytes:
    """The epoch key from the first stanza that opens. Raises NotForUs (nothing opens),
    UserError naming what is missing (a password share without a password, ...)."""
    kinds = {s.get("type") for s in stanzas if isinstance(s, dict)}
    if "scrypt" in kinds and len(stanzas) != 1:
        raise ValueError("a password stanza must be the only one")
    for stanza in stanzas:
        kind = stanza.get("type") if isinstance(stanza, dict) else None
        try:
            if kind == "open":
                return _unb64(stanza.get("key"), KEY_SIZE)
            if kind == "scrypt":
                if password is None:
                    raise UserError("this share is password-protected: give --password-file")
                log_n = stanza.get("log_n")
                if type(log_n) is not int or not MIN_LOG_N <= log_n <= MAX_LOG_N:
                    raise ValueError("scrypt work factor out of bounds")
                salt, body = _unb64(stanza.get("salt"), 16), _unb64(stanza.get("body"), KEY_SIZE + 16)
                wrap = _scrypt(password.encode("utf-8"), salt, log_n)
                try:
                    return AESGCM(wrap).decrypt(_ZERO_NONCE, body, _SCRYPT_AAD + _aad(share_id, epoch)
                                                + bytes((log_n,)))
                except InvalidTag:
                    raise UserError("wrong password for this share") from None
            if kind == "x25519" and identity is not None:
                eph, body = _unb64(stanza.get("eph"), KEY_SIZE), _unb64(stanza.get("body"), KEY_SIZE + 16)
                shared = identity.exchange(eph)
                if hmac.compare_digest(shared, bytes(32)):
                    continue
                wrap = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=eph + identity.public,
                            info=_X25519_INFO).derive(shared)
                try:
                    return ChaCha20Poly1305(wrap).decrypt(_ZERO_NONCE, body, _aad(share_id, epoch))
                except InvalidTag:
                    continue  # another recipient's stanza
        except (ValueError, binascii.Error):
            continue  # a malformed stanza opens nothing
    if "x25519" in kinds and identity is None:
        raise UserError("this share is for named recipients: give --identity FILE")
    raise NotForUs()
