"""The ``KeyProvider`` protocol: wraps and unwraps data keys with a master key held elsewhere.

Envelope encryption: each document gets its own random 256-bit data key; only the wrapped
(encrypted) data key is stored next to the data. A KMS (AWS KMS, Vault transit, an HSM) plugs
in by implementing these three methods; the built-in provider keeps the master key in the
environment or in a key file.
"""

from __future__ import annotations

from typing import Protocol


class KeyProvider(Protocol):
    @property
    def current_key_id(self) -> str:
        """The master key that ``wrap`` uses now."""
        ...

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """Encrypt a data key under the current master key: (master key id, wrapped key)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key wrapped under the named master key (raises ``KeyUnavailable``)."""
        ...
