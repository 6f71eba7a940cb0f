"""What the authorization server remembers: clients, users, signing keys and one-time values.

Kept in the same SQLite file as the clinical data (its own tables, its own connection). Secrets
are never stored in the clear: passwords as scrypt hashes, authorization codes and refresh
tokens as SHA-256 hashes, private signing keys sealed with a data key that the ``KeyProvider``
wraps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from joserfc.jwk import ECKey

from server.crypto import KeyProvider, new_data_key, open_sealed, seal
from server.store.database import Database

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS oauth_clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('backend', 'public')),
    jwks TEXT,
    scopes TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS oauth_users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    fhir_user TEXT,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    retired_at REAL,
    master_key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    sealed_jwk BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS used_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    username TEXT NOT NULL,
    scopes TEXT NOT NULL,
    patient TEXT,
    code_challenge TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    username TEXT,
    scopes TEXT NOT NULL,
    patient TEXT,
    expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
"""
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1}
_KEY_CONTEXT: Final = b"paperchart/signing-key"
ClientKind = Literal["backend", "public"]


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _instant() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hash_secret(value: str) -> str:
    """Codes and refresh tokens are looked up by hash: a copy of the table gives no usable token."""
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(candidate.hex(), digest)


class Client(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    name: str
    kind: ClientKind
    scopes: tuple[str, ...]
    jwks: dict[str, Any] | None = None
    redirect_uris: tuple[str, ...] = ()


class User(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    fhir_user: str | None
    scopes: tuple[str, ...]


class CodeGrant(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    redirect_uri: str
    username: str
    scopes: tuple[str, ...]
    patient: str | None
    code_challenge: str


class RefreshGrant(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    username: str | None
    scopes: tuple[str, ...]
    patient: str | None


def _refresh_grant(row: Sequence[Any]) -> RefreshGrant:
    """A refresh_tokens row (client_id, username, scopes, patient, ...) as a grant."""
    return RefreshGrant(client_id=row[0], username=row[1], scopes=tuple(row[2].split()), patient=row[3])


class AuthRegistry(Database):
    """Clients, users, signing keys and single-use values, on one SQLite connection."""

    def __init__(self, path: Path, keys: KeyProvider) -> None:
        self._keys = keys
        super().__init__(path, _SCHEMA)

    # --- clients and users ---------------------------------------------------------------

    def add_client(
        self,
        *,
        name: str,
        kind: ClientKind,
        scopes: Sequence[str],
        jwks: dict[str, Any] | None = None,
        redirect_uris: Sequence[str] = (),
        client_id: str | None = None,
    ) -> Client:
        client = Client(
            client_id=client_id or str(uuid.uuid4()),
            name=name,
            kind=kind,
            scopes=tuple(scopes),
            jwks=jwks,
            redirect_uris=tuple(redirect_uris),
        )
        with self.transaction() as db:
            db.execute(
                "INSERT INTO oauth_clients (client_id, name, kind, jwks, scopes, redirect_uris, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    client.client_id,
                    name,
                    kind,
                    json.dumps(jwks) if jwks is not None else None,
                    " ".join(scopes),
                    json.dumps(list(redirect_uris)),
                    _instant(),
                ),
            )
        return client

    def ensure_client(
        self, *, client_id: str, name: str, kind: ClientKind, scopes: Sequence[str], redirect_uris: Sequence[str]
    ) -> Client:
        """Register a built-in client, or bring its scopes and redirect URIs up to date."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO oauth_clients (client_id, name, kind, jwks, scopes, redirect_uris, created_at)"
                " VALUES (?, ?, ?, NULL, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET"
                " name = excluded.name, scopes = excluded.scopes, redirect_uris = excluded.redirect_uris",
                (client_id, name, kind, " ".join(scopes), json.dumps(list(redirect_uris)), _instant()),
            )
        client = self.get_client(client_id)
        if client is None:  # pragma: no cover - written above
            raise KeyError(client_id)
        return client

    def get_client(self, client_id: str) -> Client | None:
        rows = self.query(
            "SELECT client_id, name, kind, jwks, scopes, redirect_uris FROM oauth_clients WHERE client_id = ?",
            (client_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return Client(
            client_id=row[0],
            name=row[1],
            kind=row[2],
            jwks=json.loads(row[3]) if row[3] else None,
            scopes=tuple(row[4].split()),
            redirect_uris=tuple(json.loads(row[5])),
        )

    def list_clients(self) -> list[Client]:
        ids = [row[0] for row in self.query("SELECT client_id FROM oauth_clients ORDER BY created_at, client_id")]
        return [c for c in (self.get_client(i) for i in ids) if c is not None]

    def add_user(self, username: str, password: str, *, scopes: Sequence[str], fhir_user: str | None = None) -> User:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO oauth_users (username, password_hash, fhir_user, scopes, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, hash_password(password), fhir_user, " ".join(scopes), _instant()),
            )
        return User(username=username, fhir_user=fhir_user, scopes=tuple(scopes))

    def authenticate_user(self, username: str, password: str) -> User | None:
        rows = self.query(
            "SELECT username, password_hash, fhir_user, scopes FROM oauth_users WHERE username = ?", (username,)
        )
        if not rows:
            check_password(password, hash_password("timing-equaliser"))  # same cost for unknown users
            return None
        row = rows[0]
        if not check_password(password, row[1]):
            return None
        return User(username=row[0], fhir_user=row[2], scopes=tuple(row[3].split()))

    def get_user(self, username: str) -> User | None:
        rows = self.query("SELECT username, fhir_user, scopes FROM oauth_users WHERE username = ?", (username,))
        return User(username=rows[0][0], fhir_user=rows[0][1], scopes=tuple(rows[0][2].split())) if rows else None

    # --- signing keys --------------------------------------------------------------------

    def signing_keys(self) -> list[tuple[ECKey, bool]]:
        """Every signing key not yet dropped, newest first, with whether it is still the active one."""
        rows = self.query(
            "SELECT kid, master_key_id, wrapped_key, sealed_jwk, retired_at FROM signing_keys ORDER BY created_at DESC"
        )
        keys = []
        for kid, master_key_id, wrapped, sealed, retired_at in rows:
            data_key = self._keys.unwrap(master_key_id, bytes(wrapped))
            jwk = json.loads(open_sealed(data_key, bytes(sealed), _KEY_CONTEXT + kid.encode()))
            keys.append((ECKey.import_key(jwk), retired_at is None))
        return keys

    def rotate_signing_key(self) -> str:
        """Create a new ES384 key and make it the active one; older keys keep verifying until dropped."""
        kid = secrets.token_urlsafe(12)
        key = ECKey.generate_key("P-384", parameters={"kid": kid, "use": "sig", "alg": "ES384"}, private=True)
        data_key = new_data_key()
        master_key_id, wrapped = self._keys.wrap(data_key)
        sealed = seal(data_key, json.dumps(key.as_dict(private=True)).encode(), _KEY_CONTEXT + kid.encode())
        with self.transaction() as db:
            now = _now()
            db.execute("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL", (now,))
            db.execute(
                "INSERT INTO signing_keys (kid, created_at, master_key_id, wrapped_key, sealed_jwk)"
                " VALUES (?, ?, ?, ?, ?)",
                (kid, now, master_key_id, wrapped, sealed),
            )
        return kid

    def drop_retired_signing_keys(self, older_than_seconds: float) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?",
                (_now() - older_than_seconds,),
            )
            return int(cursor.rowcount)

    def rewrap_signing_keys(self) -> int:
        """Re-wrap each signing key's data key under the provider's current master key (key rotation)."""
        with self.transaction() as db:
            rows = db.execute("SELECT kid, master_key_id, wrapped_key FROM signing_keys").fetchall()
            for kid, master_key_id, wrapped in rows:
                new_master, new_wrapped = self._keys.wrap(self._keys.unwrap(master_key_id, bytes(wrapped)))
                db.execute(
                    "UPDATE signing_keys SET master_key_id = ?, wrapped_key = ? WHERE kid = ?",
                    (new_master, new_wrapped, kid),
                )
            return len(rows)

    # --- single-use values ---------------------------------------------------------------

    def use_assertion(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record a client assertion's ``jti``; False when it was seen before (a replay)."""
        with self.transaction() as db:
            db.execute("DELETE FROM used_assertions WHERE expires_at < ?", (_now(),))
            cursor = db.execute(
                "INSERT OR IGNORE INTO used_assertions (client_id, jti, expires_at) VALUES (?, ?, ?)",
                (client_id, jti, expires_at),
            )
            return bool(cursor.rowcount == 1)

    def issue_code(self, grant: CodeGrant, lifetime_seconds: float) -> str:
        code = secrets.token_urlsafe(32)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, username, scopes, patient,"
                " code_challenge, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hash_secret(code),
                    grant.client_id,
                    grant.redirect_uri,
                    grant.username,
                    " ".join(grant.scopes),
                    grant.patient,
                    grant.code_challenge,
                    _now() + lifetime_seconds,
                ),
            )
        return code

    def redeem_code(self, code: str) -> CodeGrant | None:
        """The grant behind an unexpired, unused code, marking it used (RFC 6749 §4.1.2: single use)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT client_id, redirect_uri, username, scopes, patient, code_challenge, expires_at, used"
                " FROM authorization_codes WHERE code_hash = ?",
                (hash_secret(code),),
            ).fetchone()
            if row is None or row[7] or row[6] < _now():
                return None
            db.execute("UPDATE authorization_codes SET used = 1 WHERE code_hash = ?", (hash_secret(code),))
            return CodeGrant(
                client_id=row[0],
                redirect_uri=row[1],
                username=row[2],
                scopes=tuple(row[3].split()),
                patient=row[4],
                code_challenge=row[5],
            )

    def issue_refresh_token(self, grant: RefreshGrant, lifetime_seconds: float) -> str:
        token = secrets.token_urlsafe(32)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, client_id, username, scopes, patient, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    hash_secret(token),
                    grant.client_id,
                    grant.username,
                    " ".join(grant.scopes),
                    grant.patient,
                    _now() + lifetime_seconds,
                ),
            )
        return token

    def rotate_refresh_token(self, token: str, client_id: str) -> RefreshGrant | None:
        """Spend a refresh token (it is revoked; the caller issues a new one)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT client_id, username, scopes, patient, expires_at, revoked FROM refresh_tokens"
                " WHERE token_hash = ?",
                (hash_secret(token),),
            ).fetchone()
            if row is None or row[0] != client_id or row[5] or row[4] < _now():
                return None
            db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE token_hash = ?", (hash_secret(token),))
            return _refresh_grant(row)

    def refresh_token_active(self, token: str) -> RefreshGrant | None:
        rows = self.query(
            "SELECT client_id, username, scopes, patient, expires_at, revoked FROM refresh_tokens WHERE token_hash = ?",
            (hash_secret(token),),
        )
        if not rows or rows[0][5] or rows[0][4] < _now():
            return None
        row = rows[0]
        return _refresh_grant(row)

    def revoke_refresh_token(self, token: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE token_hash = ?", (hash_secret(token),))
            return bool(cursor.rowcount)

    def revoke_access_token(self, jti: str, expires_at: float) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (_now(),))
            db.execute("INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?, ?)", (jti, expires_at))

    def is_revoked(self, jti: str) -> bool:
        return bool(self.query("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)))


__all__ = ["AuthRegistry", "Client", "CodeGrant", "RefreshGrant", "User", "check_password", "hash_password"]
