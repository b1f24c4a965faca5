"""HKDF-SHA256, the one key-derivation step every subkey in usenetfs goes through."""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(key: bytes, info: bytes, length: int = 32) -> bytes:
    """A subkey of `key` for the purpose named by `info` (no salt: keys are uniform)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)
