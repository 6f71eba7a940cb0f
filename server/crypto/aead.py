"""AES-256-GCM sealing of values at rest, bound to where they live.

A sealed value is ``version || nonce (12 bytes) || ciphertext+tag``. The associated data names
the row the value belongs to (e.g. ``b"documents/<id>/resource"``), so a ciphertext copied into
another row fails to open instead of being read as that row's data.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION: Final = b"\x01"
_NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32


class KeyUnavailable(Exception):
    """A key is missing, destroyed (crypto-shredded) or wrong; the data cannot be read."""


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond our per-key volumes
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
        raise KeyUnavailable("not a sealed value")
    nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise KeyUnavailable("value does not open with this key (wrong key or tampered data)") from None
