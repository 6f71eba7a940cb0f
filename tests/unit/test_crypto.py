"""Encryption at rest: sealing, key wrapping, keyring files, rotation, and shredding in the store."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from server.crypto import KeyUnavailable, LocalKeyProvider, new_data_key, open_sealed, seal
from server.errors import ConfigurationError
from server.store import SqliteStore


def test_sealed_values_open_only_with_their_key_and_place() -> None:
    key = new_data_key()
    sealed = seal(key, b"Jane Doe", b"documents/1")
    assert b"Jane" not in sealed
    assert open_sealed(key, sealed, b"documents/1") == b"Jane Doe"
    with pytest.raises(KeyUnavailable):
        open_sealed(new_data_key(), sealed, b"documents/1")
    with pytest.raises(KeyUnavailable):  # moved to another row
        open_sealed(key, sealed, b"documents/2")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(KeyUnavailable):
        open_sealed(key, tampered, b"documents/1")


def test_keyring_file_is_private_and_rotation_keeps_old_keys_until_retired(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    provider = LocalKeyProvider.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kid, wrapped = provider.wrap(b"k" * 32)
    rotated = provider.with_new_key(path)
    assert rotated.current_key_id != kid and rotated.unwrap(kid, wrapped) == b"k" * 32
    retired = rotated.retire_others(path)
    assert json.loads(path.read_text())["keys"].keys() == {retired.current_key_id}
    with pytest.raises(KeyUnavailable):
        retired.unwrap(kid, wrapped)


def test_bad_master_keys_are_configuration_errors(tmp_path: Path) -> None:
    from server.crypto import decode_master_key

    with pytest.raises(ConfigurationError):
        decode_master_key("not base64!")
    with pytest.raises(ConfigurationError):
        decode_master_key("c2hvcnQ=")
    (tmp_path / "bad.key").write_text("{}")
    with pytest.raises(ConfigurationError):
        LocalKeyProvider.from_file(tmp_path / "bad.key")


def _document(store: SqliteStore, text: bytes) -> str:
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:mrn", "value": "MRN-55501"}],
        "content": [{"attachment": {"contentType": "text/plain", "title": "Letter about Jane Doe"}}],
    }
    return store.create_document(resource, text, "text/plain", 1).id


def test_store_keeps_no_plaintext_and_still_finds_identifiers(tmp_path: Path) -> None:
    path = tmp_path / "paperchart.db"
    store = SqliteStore(path, LocalKeyProvider.from_key(new_data_key()))
    document_id = _document(store, b"Jane Doe has asthma")
    assert store.find_by_identifier("DocumentReference", "urn:mrn", "MRN-55501") == [document_id]
    assert store.find_by_identifier("DocumentReference", None, "MRN-55501") == [document_id]
    assert store.search_documents(patient="p1")[1] == 1
    assert store.get_document_content(document_id) == b"Jane Doe has asthma"
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in (b"Jane", b"asthma", b"MRN-55501", b"55501"):
        assert secret not in raw


def test_shredding_a_document_leaves_nothing_readable(tmp_path: Path) -> None:
    path = tmp_path / "paperchart.db"
    store = SqliteStore(path, LocalKeyProvider.from_key(new_data_key()))
    keep, shred = _document(store, b"keep me"), _document(store, b"shred me")
    assert store.shred_document(shred)
    assert store.get_document(shred) is None and store.get_document_content(shred) is None
    assert store.get_document_content(keep) == b"keep me"
    assert not store.shred_document(shred)
    owners = [r[0] for r in store.query("SELECT owner FROM data_keys")]
    assert f"document:{shred}" not in owners and f"document:{keep}" in owners
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert shred.encode() not in raw  # not even its id survives in freed pages or the WAL


def test_a_store_opened_with_another_master_key_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "paperchart.db"
    SqliteStore(path, LocalKeyProvider.from_key(new_data_key())).close()
    with pytest.raises(ConfigurationError, match="master key does not open"):
        SqliteStore(path, LocalKeyProvider.from_key(new_data_key()))
