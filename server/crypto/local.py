"""The built-in ``KeyProvider``: master keys from ``PAPERCHART_MASTER_KEY`` or a key file.

The key file (``<data_dir>/master.key``, created on first start with mode 0600) is a JSON
keyring ``{"current": id, "keys": {id: base64 key}}`` so a rotation can add a key, re-wrap every
data key under it and then drop the old one (``paperchart keys rotate``). In production keep the
file off the data volume (``PAPERCHART_MASTER_KEY_FILE``) or use a KMS-backed provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from server.crypto.aead import KEY_BYTES, KeyUnavailable, new_data_key, open_sealed, seal
from server.errors import ConfigurationError

_WRAP_CONTEXT = b"paperchart/data-key"


def key_id_of(master_key: bytes) -> str:
    """A stable, non-secret name for a master key (a prefix of its SHA-256)."""
    return "mk-" + hashlib.sha256(b"paperchart key id" + master_key).hexdigest()[:16]


def decode_master_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ConfigurationError("the master key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"the master key must be {KEY_BYTES} bytes (base64 of 32 random bytes)")
    return key


class LocalKeyProvider:
    """Master keys held in this process; wraps data keys with AES-256-GCM."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ConfigurationError("the current master key is not in the keyring")
        self._keys = dict(keys)
        self._current = current

    @classmethod
    def from_key(cls, master_key: bytes) -> LocalKeyProvider:
        kid = key_id_of(master_key)
        return cls({kid: master_key}, kid)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> LocalKeyProvider:
        if not path.exists():
            if not create:
                raise ConfigurationError("master key file not found")
            cls._write(path, {key_id_of(key := new_data_key()): key}, key_id_of(key))
        try:
            data = json.loads(path.read_text())
            keys = {kid: decode_master_key(value) for kid, value in data["keys"].items()}
            return cls(keys, data["current"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigurationError("the master key file is not a paperchart keyring") from None

    @staticmethod
    def _write(path: Path, keys: dict[str, bytes], current: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"current": current, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}})
        temporary = path.with_name(path.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def with_new_key(self, path: Path) -> LocalKeyProvider:
        """Add a fresh master key to the keyring file and make it current (old keys stay to unwrap)."""
        key = new_data_key()
        keys = {**self._keys, key_id_of(key): key}
        self._write(path, keys, key_id_of(key))
        return LocalKeyProvider(keys, key_id_of(key))

    def retire_others(self, path: Path) -> LocalKeyProvider:
        """Drop every master key but the current one from the keyring file (after re-wrapping)."""
        keys = {self._current: self._keys[self._current]}
        self._write(path, keys, self._current)
        return LocalKeyProvider(keys, self._current)

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        return self._current, seal(self._keys[self._current], data_key, _WRAP_CONTEXT)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        master = self._keys.get(key_id)
        if master is None:
            raise KeyUnavailable("the master key that wrapped this data key is not available")
        return open_sealed(master, wrapped, _WRAP_CONTEXT)
