"""Operator commands for security: ``clients``, ``users``, ``keys rotate-*`` on a real data directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from server.auth.registry import AuthRegistry
from server.crypto import LocalKeyProvider
from server.store import SqliteStore
from tests.conftest import paperchart as run


def test_clients_add_generates_a_private_key_and_registers_only_the_public_half(tmp_path: Path) -> None:
    result = run(
        "clients",
        "add",
        "--name",
        "lab feed",
        "--scopes",
        "system/DocumentReference.c system/*.rs",
        "--generate-key",
        "feed.jwk",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    client_id = json.loads(result.stdout)["client_id"]
    key_file = tmp_path / "feed.jwk"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and "d" in json.loads(key_file.read_text())
    listed = run("clients", "list", cwd=tmp_path)
    assert client_id in listed.stdout and "lab feed" in listed.stdout
    registry = AuthRegistry(
        tmp_path / "data" / "paperchart.db", LocalKeyProvider.from_file(tmp_path / "data" / "master.key")
    )
    client = registry.get_client(client_id)
    assert client is not None and client.jwks is not None and all("d" not in k for k in client.jwks["keys"])

    (tmp_path / "private.json").write_text(json.dumps({"keys": [json.loads(key_file.read_text())]}))
    refused = run("clients", "add", "--name", "x", "--scopes", "system/*.rs", "--jwks", "private.json", cwd=tmp_path)
    assert refused.returncode == 1 and "private key" in refused.stderr
    bad_scope = run(
        "clients", "add", "--name", "x", "--scopes", "system/Patient.zz", "--generate-key", "k", cwd=tmp_path
    )
    assert bad_scope.returncode == 1 and "malformed" in bad_scope.stderr
    no_redirect = run("clients", "add", "--name", "app", "--kind", "public", "--scopes", "patient/*.rs", cwd=tmp_path)
    assert no_redirect.returncode == 1 and "redirect" in no_redirect.stderr


def test_users_add_never_stores_the_password(tmp_path: Path) -> None:
    password = "a long enough passphrase"
    result = run(
        "users",
        "add",
        "drjones",
        "--scopes",
        "user/*.rs launch/patient",
        "--fhir-user",
        "Practitioner/7",
        "--password-from-env",
        cwd=tmp_path,
        PAPERCHART_NEW_USER_PASSWORD=password,
    )
    assert result.returncode == 0, result.stderr
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir())
    assert password.encode() not in raw
    registry = AuthRegistry(
        tmp_path / "data" / "paperchart.db", LocalKeyProvider.from_file(tmp_path / "data" / "master.key")
    )
    user = registry.authenticate_user("drjones", password)
    assert user is not None and user.fhir_user == "Practitioner/7"
    assert registry.authenticate_user("drjones", "wrong") is None
    short = run(
        "users",
        "add",
        "x",
        "--scopes",
        "user/*.rs",
        "--password-from-env",
        cwd=tmp_path,
        PAPERCHART_NEW_USER_PASSWORD="short",
    )
    assert short.returncode == 1 and "12 characters" in short.stderr


def test_master_key_rotation_rewraps_everything_and_retires_the_old_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keyring = data / "master.key"
    provider = LocalKeyProvider.from_file(keyring)
    store = SqliteStore(data / "paperchart.db", provider)
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain"}}],
    }
    document_id = store.create_document(resource, b"note text", "text/plain", 1).id
    store.close()
    registry = AuthRegistry(data / "paperchart.db", provider)
    kid = registry.rotate_signing_key()
    registry.close()

    result = run("keys", "rotate-master", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rotated = LocalKeyProvider.from_file(keyring, create=False)
    assert rotated.key_ids == {rotated.current_key_id} and provider.current_key_id not in rotated.key_ids
    store = SqliteStore(data / "paperchart.db", rotated)
    assert store.get_document_content(document_id) == b"note text"
    store.close()
    assert [key.kid for key, _ in AuthRegistry(data / "paperchart.db", rotated).signing_keys()] == [kid]

    signing = run("keys", "rotate-signing", cwd=tmp_path)
    assert signing.returncode == 0 and "new token signing key" in signing.stdout
    keys = AuthRegistry(data / "paperchart.db", rotated).signing_keys()
    assert len(keys) == 2 and keys[0][1] and not keys[1][1]  # the new key signs; the old one still verifies
