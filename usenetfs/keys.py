"""Volume keys: the passphrase-wrapped master key, and everything derived from it.

Owns
- the key envelope: a JSON-serialisable dict holding the 32-byte volume master key
  wrapped by scrypt(passphrase) + AES-256-GCM (`create_envelope`, `unwrap_envelope`,
  `rewrap_envelope`, `WrongPassphrase`, `BadEnvelope`);
- `VolumeKeys`: the HKDF-SHA256 subkeys (data, index, locate, key check) and the
  Message-IDs derived from `SegmentId`s, which anyone with the key can recompute and
  nobody else can link (protocol.md §6.3, §6.5).

Pure and synchronous; scrypt takes ~0.25-0.5 s at the default work factor, so callers on
an event loop should run envelope functions in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import unicodedata
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .codec.article import pseudo_word
from .codec.kdf import hkdf
from .codec.segment import SegmentId
from .errors import UserError

ENVELOPE_VERSION = 1
DEFAULT_LOG_N = 17
# Work-factor bounds for envelopes we read (someone else's may be hostile): below 2^10 is
# no protection, above 2^22 (4 GiB of scrypt memory at r=8) is a denial of service.
MIN_LOG_N = 10
MAX_LOG_N = 22
SCRYPT_R = 8
SCRYPT_P = 1
KEY_SIZE = 32
_SALT_SIZE = 16
_NONCE_SIZE = 12
_WRAPPED_SIZE = KEY_SIZE + 16  # key + GCM tag

_TLDS = ("com", "net", "org")
_DOMAIN_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class WrongPassphrase(UserError):
    """The passphrase does not open this key envelope."""

    def __init__(self, message: str = "wrong passphrase", exit_code: int = 1):
        super().__init__(message, exit_code)


class BadEnvelope(UserError):
    """The key envelope is malformed, of an unknown version, or asks for too much work."""


def _normalise(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, bytes):
        return passphrase
    # NFC so the same passphrase typed on different systems gives the same bytes.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64d(envelope: dict, field: str, size: int) -> bytes:
    value = envelope.get(field)
    if not isinstance(value, str):
        raise BadEnvelope(f"key envelope: missing or invalid {field!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadEnvelope(f"key envelope: {field!r} is not base64") from None
    if len(raw) != size:
        raise BadEnvelope(f"key envelope: {field!r} must be {size} bytes")
    return raw


def _aad(log_n: int, r: int, p: int, salt: bytes) -> bytes:
    # Binds every parameter to the wrapped key, so none can be altered (e.g. a lower
    # log_n) without the unwrap failing.
    return b"usenetfs/envelope/v1/scrypt" + bytes((log_n, r, p)) + salt


def _wrap_key(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    # cryptography's Scrypt sizes its memory limit itself; hashlib.scrypt caps maxmem below
    # INT_MAX (2 GiB), which would make log_n >= 21 at r=8 impossible.
    return Scrypt(salt=salt, length=KEY_SIZE, n=1 << log_n, r=r, p=p).derive(passphrase)


def _check_log_n(log_n: Any) -> int:
    if type(log_n) is not int or not MIN_LOG_N <= log_n <= MAX_LOG_N:
        raise BadEnvelope(
            f"key envelope: scrypt log_n must be an integer in [{MIN_LOG_N}, {MAX_LOG_N}], "
            f"got {log_n!r}"
        )
    return log_n


def _wrap(master_key: bytes, passphrase: str | bytes, log_n: int) -> dict:
    pw = _normalise(passphrase)
    if not pw:
        raise UserError("the passphrase must not be empty")
    log_n = _check_log_n(log_n)
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    wk = _wrap_key(pw, salt, log_n, SCRYPT_R, SCRYPT_P)
    wrapped = AESGCM(wk).encrypt(nonce, master_key, _aad(log_n, SCRYPT_R, SCRYPT_P, salt))
    return {
        "version": ENVELOPE_VERSION,
        "kdf": "scrypt",
        "log_n": log_n,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64e(salt),
        "nonce": _b64e(nonce),
        "wrapped": _b64e(wrapped),
    }


def create_envelope(passphrase: str | bytes, *, log_n: int = DEFAULT_LOG_N) -> tuple[bytes, dict]:
    """A fresh random master key and its envelope under `passphrase`."""
    master_key = os.urandom(KEY_SIZE)
    return master_key, _wrap(master_key, passphrase, log_n)


def unwrap_envelope(envelope: dict, passphrase: str | bytes) -> bytes:
    """The master key in `envelope`. WrongPassphrase if it doesn't open; BadEnvelope if
    the envelope is malformed or its work factor is out of bounds (checked before any
    scrypt work is done)."""
    if not isinstance(envelope, dict):
        raise BadEnvelope("key envelope: not a JSON object")
    if envelope.get("version") != ENVELOPE_VERSION:
        raise BadEnvelope(f"key envelope: unsupported version {envelope.get('version')!r}")
    if envelope.get("kdf") != "scrypt":
        raise BadEnvelope(f"key envelope: unsupported kdf {envelope.get('kdf')!r}")
    log_n = _check_log_n(envelope.get("log_n"))
    r, p = envelope.get("r"), envelope.get("p")
    # We only ever write r=8, p=1; anything else is not ours, and could multiply the work.
    if type(r) is not int or type(p) is not int or (r, p) != (SCRYPT_R, SCRYPT_P):
        raise BadEnvelope(f"key envelope: unsupported scrypt r={r!r} p={p!r}")
    salt = _b64d(envelope, "salt", _SALT_SIZE)
    nonce = _b64d(envelope, "nonce", _NONCE_SIZE)
    wrapped = _b64d(envelope, "wrapped", _WRAPPED_SIZE)
    wk = _wrap_key(_normalise(passphrase), salt, log_n, r, p)
    try:
        return AESGCM(wk).decrypt(nonce, wrapped, _aad(log_n, r, p, salt))
    except InvalidTag:
        # Also what a tampered salt/nonce/log_n looks like: indistinguishable by design.
        raise WrongPassphrase() from None


def rewrap_envelope(
    envelope: dict,
    old_passphrase: str | bytes,
    new_passphrase: str | bytes,
    *,
    log_n: int | None = None,
) -> dict:
    """The same master key under a new passphrase (fresh salt and nonce); `log_n`
    defaults to the envelope's own."""
    master_key = unwrap_envelope(envelope, old_passphrase)
    return _wrap(master_key, new_passphrase, envelope["log_n"] if log_n is None else log_n)


class VolumeKeys:
    """The subkeys of one volume master key, and its Message-IDs. Immutable; thread safe."""

    __slots__ = ("data_key", "index_key", "locate_key", "domain", "_key_check")

    def __init__(self, master_key: bytes, *, domain: str | None = None) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        self.data_key = hkdf(master_key, b"usenetfs/v1/data")
        self.index_key = hkdf(master_key, b"usenetfs/v1/index")
        self.locate_key = hkdf(master_key, b"usenetfs/v1/msgid")
        self._key_check = hkdf(master_key, b"usenetfs/v1/keycheck", 16)
        if domain is None:
            self.domain = self._derive_domain()
        else:
            d = domain.lower()
            if len(d) > 200 or not _DOMAIN_RE.fullmatch(d):
                raise ValueError(f"not a usable Message-ID domain: {domain!r}")
            self.domain = d

    def _derive_domain(self) -> str:
        """Two pronounceable words and a common TLD, e.g. "kavoritesu.net", fixed per key.

        Innocuous and syntactically valid for INN (dot-atom); it does make one volume's
        articles linkable to each other by anyone, but not to the tool or to other volumes.
        """
        counter = 0
        pool = b""

        def randbelow(n: int) -> int:
            nonlocal counter, pool
            if not pool:
                pool = hmac.digest(self.locate_key, b"domain" + counter.to_bytes(4, "big"), "sha256")
                counter += 1
            byte, pool = pool[0], pool[1:]
            return byte % n  # the slight bias is irrelevant: this only picks letters

        first = pseudo_word(randbelow, 2 + randbelow(2))
        second = pseudo_word(randbelow, 2 + randbelow(2))
        return f"{first}{second}.{_TLDS[randbelow(len(_TLDS))]}"

    def key_check(self) -> bytes:
        """16 bytes to store locally, to tell a wrong key quickly without touching Usenet."""
        return self._key_check

    def message_id(self, ident: SegmentId, generation: int = 0) -> str:
        """"<26 base32 chars@domain>": a keyed hash of (scope, kind, number, generation)."""
        if not 0 <= generation < 1 << 32:
            raise ValueError("generation must be a u32")
        mac = hmac.digest(
            self.locate_key, ident.to_bytes() + generation.to_bytes(4, "big"), "sha256"
        )
        left = base64.b32encode(mac).decode("ascii")[:26].lower()  # 130 bits
        return f"<{left}@{self.domain}>"


__all__ = [
    "WrongPassphrase",
    "BadEnvelope",
    "DEFAULT_LOG_N",
    "MIN_LOG_N",
    "MAX_LOG_N",
    "create_envelope",
    "unwrap_envelope",
    "rewrap_envelope",
    "VolumeKeys",
]
