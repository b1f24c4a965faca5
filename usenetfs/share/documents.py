"""The two signed documents of a share: keyrings and roots (docs/shares.md).

Both are JSON, signed with the publisher's Ed25519 key (its public half is in the
capability), and posted as one article each:

    payload = signature(64) || json,   signature over  label || json

Article encryption keeps them secret from the world; the signature keeps them authentic
against whoever else holds the decryption key (every subscriber does: without signatures, a
subscriber could post a forged root for the others). The share id and the number are inside
the signed JSON, so a genuine document cannot be replayed under another number or share.

Owns `Keyring`, `Root`, `sign`, `open_signed`; malformed or forged input is `Forged` (a
reader skips it and tries the next generation) or a `UserError` for the caller.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .tree import DIGEST_SIZE, Ref

FORMAT_VERSION = 1
SIGNATURE_SIZE = 64
KEYRING_LABEL = b"usenetfs/v1/share/keyring"
ROOT_LABEL = b"usenetfs/v1/share/root"


class Forged(ValueError):
    """Not a document the share's publisher signed (or not one we can read)."""


def sign(private: Ed25519PrivateKey, label: bytes, document: dict) -> bytes:
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return private.sign(label + raw) + raw


def open_signed(public: bytes, label: bytes, payload: bytes) -> dict:
    if len(payload) <= SIGNATURE_SIZE:
        raise Forged("too short to be signed")
    signature, raw = payload[:SIGNATURE_SIZE], payload[SIGNATURE_SIZE:]
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, label + raw)
    except (InvalidSignature, ValueError):
        raise Forged("the publisher's signature does not verify") from None
    try:
        document = json.loads(raw)
    except ValueError:
        raise Forged("signed, but not JSON") from None
    if not isinstance(document, dict):
        raise Forged("signed, but not a JSON object")
    if document.get("v") != FORMAT_VERSION:
        raise Forged(f"format {document.get('v')!r}, which this usenetfs cannot read")
    return document


@dataclass
class Keyring:
    share: str  # share id, hex
    number: int  # the keyring's number (1, 2, ...): a new one at every grant and revoke
    epoch: int  # the epoch whose key the stanzas wrap
    stanzas: list[dict]
    expires: float | None = None
    created: float = field(default_factory=time.time)

    def sign(self, private: Ed25519PrivateKey) -> bytes:
        return sign(private, KEYRING_LABEL, {"v": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def open(cls, public: bytes, payload: bytes, share: bytes, number: int) -> Keyring:
        d = open_signed(public, KEYRING_LABEL, payload)
        try:
            ring = cls(share=d["share"], number=d["number"], epoch=d["epoch"], stanzas=d["stanzas"],
                       expires=d.get("expires"), created=d.get("created", 0.0))
        except (KeyError, TypeError):
            raise Forged("a keyring with missing fields") from None
        if ring.share != share.hex() or ring.number != number:
            raise Forged("a keyring of another share or number")
        if (type(ring.epoch) is not int or ring.epoch < 1 or not isinstance(ring.stanzas, list)
                or not _time_or_none(ring.expires)):
            raise Forged("a keyring with malformed fields")
        return ring


@dataclass
class Root:
    share: str  # hex
    epoch: int
    seq: int  # 1, 2, ... within the epoch
    name: str  # the share's name, as the publisher calls it
    top: dict  # the top directory's attributes: mode, uid, gid, mtime_ns, ctime_ns
    tree: list  # [digest hex, generation] of the top directory's object
    data: dict  # scope (hex), cipher, pad (plaintext size or None), domain, group
    stats: dict = field(default_factory=dict)  # dirs, files, bytes
    expires: float | None = None
    created: float = field(default_factory=time.time)

    def sign(self, private: Ed25519PrivateKey) -> bytes:
        return sign(private, ROOT_LABEL, {"v": FORMAT_VERSION, **asdict(self)})

    @property
    def tree_ref(self) -> Ref:
        return Ref(bytes.fromhex(self.tree[0]), self.tree[1])

    @classmethod
    def open(cls, public: bytes, payload: bytes, share: bytes, epoch: int, seq: int) -> Root:
        d = open_signed(public, ROOT_LABEL, payload)
        try:
            root = cls(share=d["share"], epoch=d["epoch"], seq=d["seq"], name=d["name"], top=d["top"],
                       tree=d["tree"], data=d["data"], stats=d.get("stats") or {}, expires=d.get("expires"),
                       created=d.get("created", 0.0))
        except (KeyError, TypeError):
            raise Forged("a root with missing fields") from None
        if root.share != share.hex() or root.epoch != epoch or root.seq != seq:
            raise Forged("a root of another share, epoch or number")
        try:
            digest = bytes.fromhex(root.tree[0])
            ok = (len(digest) == DIGEST_SIZE and type(root.tree[1]) is int and 0 <= root.tree[1] < 1 << 32
                  and isinstance(root.name, str) and isinstance(root.top, dict)
                  and all(type(root.top.get(k)) is int for k in ("mode", "uid", "gid", "mtime_ns", "ctime_ns"))
                  and isinstance(root.data, dict) and len(bytes.fromhex(root.data["scope"])) == 16
                  and isinstance(root.data["cipher"], str) and isinstance(root.data["domain"], str)
                  and (root.data.get("pad") is None or type(root.data["pad"]) is int)
                  and _time_or_none(root.expires))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            ok = False
        if not ok:
            raise Forged("a root with malformed fields")
        return root


def _time_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
