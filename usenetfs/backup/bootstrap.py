"""The bootstrap article: what a new machine needs, given only the passphrase and the
volume id, to unlock the volume's backups.

It holds the passphrase-wrapped key envelope, the key check and the settings, as one
`KIND_INDEX` article numbered `BOOTSTRAP_NUMBER`, under keys derived from
`scrypt(passphrase, salt = label || volume id)` (`bootstrap_keys`): its Message-ID and its
encryption key both come from the passphrase, so only the passphrase holder can find and
read it. What it exposes to anyone is what `key.json` holds: a key wrapped by scrypt of
the passphrase (choose a strong one).

It is posted once per passphrase (a new passphrase derives a new id): posting it again
would make a new encryption of it, which read-back rightly calls different. Changing
the passphrase means posting a bootstrap under the new passphrase's keys
(`post_bootstrap(..., bootstrap_keys(new, volume_id))`); the old one stays on the server
and keeps opening with the old passphrase (Usenet cannot delete).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import trio
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..codec.segment import KIND_INDEX, SegmentId
from ..keys import VolumeKeys
from ..nntp.client import NNTPClient
from ..nntp.posting import ArticlePoster, VerifyOptions
from ..volume import Volume, VolumeSettings
from . import articles

BOOTSTRAP_NUMBER = (1 << 63) - 1
BOOTSTRAP_LOG_N = 15  # a second scrypt of the passphrase, bound to this volume's id


def bootstrap_secret(passphrase: str, volume_id: bytes) -> bytes:
    """What the bootstrap keys come from (`usenetfs passwd` hands it to a running mount).
    ~0.1 s of scrypt: call it in a thread from an event loop."""
    return Scrypt(salt=b"usenetfs/bootstrap/v1" + volume_id, length=32, n=1 << BOOTSTRAP_LOG_N,
                  r=8, p=1).derive(passphrase.encode())


def bootstrap_keys(passphrase: str, volume_id: bytes) -> VolumeKeys:
    """Keys only the passphrase holder can derive, bound to one volume."""
    return VolumeKeys(bootstrap_secret(passphrase, volume_id))


def bootstrap_ident(volume_id: bytes) -> SegmentId:
    return SegmentId(volume_id, KIND_INDEX, BOOTSTRAP_NUMBER)


async def post_bootstrap(client: NNTPClient, volume: Volume, settings: VolumeSettings,
                         passphrase_keys: VolumeKeys, *, limiter: trio.CapacityLimiter | None = None,
                         verify: VerifyOptions = VerifyOptions(delay=0.0, tries=6, interval=1.0)) -> bool:
    """Post the bootstrap (the envelope in `volume.key_file`, and `settings`) under
    `passphrase_keys`, unless the server already has one there; True if it was posted."""
    limiter = limiter or trio.CapacityLimiter(2)
    ident = bootstrap_ident(bytes.fromhex(settings.volume_id))
    if await articles.fetch_first(client, passphrase_keys, ident, limiter) is not None:
        return False
    stored = json.loads(volume.key_file.read_text())
    payload = json.dumps({"envelope": stored["envelope"], "key_check": stored["key_check"],
                          "settings": asdict(settings)}).encode()
    await articles.post(ArticlePoster(client, verify), passphrase_keys, ident, payload, settings.group,
                        limiter)
    return True


async def fetch_bootstrap(client: NNTPClient, passphrase_keys: VolumeKeys, volume_id: bytes,
                          limiter: trio.CapacityLimiter) -> dict | None:
    """The bootstrap's content ({"envelope", "key_check", "settings"}), or None when the
    server has none under these keys (no backup, or a wrong passphrase or volume id)."""
    raw = await articles.fetch_first(client, passphrase_keys, bootstrap_ident(volume_id), limiter)
    if raw is None:
        return None
    try:
        bootstrap = json.loads(raw)
        if isinstance(bootstrap, dict) and isinstance(bootstrap.get("envelope"), dict):
            return bootstrap
    except ValueError:
        pass
    return None
