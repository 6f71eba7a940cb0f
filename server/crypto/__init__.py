"""Encryption at rest: AES-256-GCM envelopes with data keys wrapped by a ``KeyProvider``."""

from server.crypto.aead import KeyUnavailable, new_data_key, open_sealed, seal
from server.crypto.base import KeyProvider
from server.crypto.local import LocalKeyProvider, decode_master_key

__all__ = [
    "KeyProvider",
    "KeyUnavailable",
    "LocalKeyProvider",
    "decode_master_key",
    "new_data_key",
    "open_sealed",
    "seal",
]
