"""``paperchart clients|users|token|keys|audit``: SMART clients and users, tokens, key rotation, audit checks."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from server.config import Settings, load_settings
from server.errors import ConfigurationError


def _registry(settings: Settings) -> Any:
    from server.auth.registry import AuthRegistry
    from server.services import build_key_provider

    return AuthRegistry(settings.database_path, build_key_provider(settings))


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _clients_add(args: argparse.Namespace) -> int:
    from server.auth.assertion import generate_client_key
    from server.auth.scopes import ScopeError, parse_scope

    scopes = args.scopes.split()
    try:
        for scope in scopes:
            parse_scope(scope)
    except ScopeError as exc:
        raise ConfigurationError(str(exc)) from None
    jwks: dict[str, Any] | None = None
    if args.kind == "backend":
        if args.jwks:
            jwks = json.loads(Path(args.jwks).read_text())
            if not isinstance(jwks, dict) or not jwks.get("keys"):
                raise ConfigurationError('--jwks must be a JWK Set file ({"keys": [...]})')
            if any("d" in key for key in jwks["keys"]):
                raise ConfigurationError("--jwks holds a private key; register only the public keys")
        elif args.generate_key:
            key = generate_client_key()
            _write_private(Path(args.generate_key), json.dumps(key.as_dict(private=True)))
            jwks = {"keys": [key.as_dict(private=False)]}
        else:
            raise ConfigurationError("a backend client needs --jwks FILE or --generate-key FILE")
    elif not args.redirect_uri:
        raise ConfigurationError("a public (browser/app) client needs at least one --redirect-uri")
    registry = _registry(load_settings())
    try:
        client = registry.add_client(
            name=args.name, kind=args.kind, scopes=scopes, jwks=jwks, redirect_uris=args.redirect_uri or []
        )
    finally:
        registry.close()
    print(json.dumps({"client_id": client.client_id, "name": client.name, "kind": client.kind, "scopes": scopes}))
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    registry = _registry(load_settings())
    try:
        for client in registry.list_clients():
            print(f"{client.client_id}\t{client.kind}\t{client.name}\t{' '.join(client.scopes)}")
    finally:
        registry.close()
    return 0


def _users_add(args: argparse.Namespace) -> int:
    password = os.environ.get("PAPERCHART_NEW_USER_PASSWORD") if args.password_from_env else None
    if password is None:
        password = getpass.getpass(f"password for {args.username}: ")
        if password != getpass.getpass("again: "):
            raise ConfigurationError("the passwords differ")
    if len(password) < 12:
        raise ConfigurationError("choose a password of at least 12 characters")
    registry = _registry(load_settings())
    try:
        registry.add_user(args.username, password, scopes=args.scopes.split(), fhir_user=args.fhir_user)
    finally:
        registry.close()
    print(f"paperchart: user {args.username} added", file=sys.stderr)
    return 0


def _token(args: argparse.Namespace) -> int:
    """Trade a client assertion for an access token at a running server (the real SMART flow)."""
    import httpx
    from joserfc.jwk import JWKRegistry

    from server.auth.assertion import token_request

    settings = load_settings()
    key: Any = JWKRegistry.import_key(json.loads(Path(args.key).read_text()))
    base = args.server.rstrip("/") if args.server else settings.issuer
    endpoint = f"{base}/auth/token"
    form = token_request(key, args.client_id, endpoint, args.scopes)
    if args.audience == "mcp":
        form["resource"] = f"{base}/mcp"  # RFC 8707: a token for the MCP endpoint only
    response = httpx.post(endpoint, data=form, timeout=30)
    body = response.json()
    if response.status_code != 200:
        print(f"paperchart: {body.get('error')}: {body.get('error_description')}", file=sys.stderr)
        return 1
    print(body["access_token"])
    return 0


def _keys_rotate_master(args: argparse.Namespace) -> int:
    """Add a master key, re-wrap every data key and signing key under it, then retire the old ones."""
    from server.auth.registry import AuthRegistry
    from server.crypto import LocalKeyProvider
    from server.store import SqliteStore

    settings = load_settings()
    if settings.master_key:
        raise ConfigurationError(
            "the master key comes from PAPERCHART_MASTER_KEY: rotate it in your secret store, or use a key file"
        )
    path = settings.master_key_path
    provider = LocalKeyProvider.from_file(path, create=False).with_new_key(path)
    store = SqliteStore(settings.database_path, provider)
    registry = AuthRegistry(settings.database_path, provider)
    try:
        data_keys = store.rewrap_data_keys()
        signing_keys = registry.rewrap_signing_keys()
    finally:
        store.close()
        registry.close()
    provider.retire_others(path)
    print(f"paperchart: re-wrapped {data_keys} data keys and {signing_keys} signing keys under a new master key")
    return 0


def _keys_rotate_signing(args: argparse.Namespace) -> int:
    registry = _registry(load_settings())
    try:
        kid = registry.rotate_signing_key()
        dropped = registry.drop_retired_signing_keys(older_than_seconds=24 * 3600)
    finally:
        registry.close()
    print(f"paperchart: new token signing key {kid}; {dropped} old keys dropped (restart servers to use it)")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Walk the hash chain of the audit log; exit 1 if any record was edited, removed or cut off."""
    from server.store.audit import AuditLog

    audit = AuditLog.open(load_settings().database_path)
    try:
        checked, problems = audit.verify()
    finally:
        audit.close()
    for problem in problems:
        print(f"paperchart: audit record {problem.seq} {problem.problem}", file=sys.stderr)
    print(f"paperchart: {checked} audit records checked, {'chain BROKEN' if problems else 'chain intact'}")
    return 1 if problems else 0


def add_commands(commands: Any) -> None:
    clients = commands.add_parser("clients", help="register SMART clients (backend services, apps)")
    actions = clients.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a client")
    add.add_argument("--name", required=True)
    add.add_argument("--kind", choices=["backend", "public"], default="backend")
    add.add_argument("--scopes", required=True, help='space-separated, e.g. "system/*.rs system/DocumentReference.c"')
    add.add_argument("--jwks", help="the client's public JWK Set (backend clients)")
    add.add_argument("--generate-key", metavar="FILE", help="generate an ES384 key pair; private key to FILE (0600)")
    add.add_argument("--redirect-uri", action="append", help="for public clients (repeatable)")
    add.set_defaults(handler=_clients_add)
    list_ = actions.add_parser("list", help="registered clients")
    list_.set_defaults(handler=_clients_list)

    users = commands.add_parser("users", help="local users who sign in to SMART apps and the review page")
    user_actions = users.add_subparsers(dest="action", required=True)
    add_user = user_actions.add_parser("add", help="add a user (asks for the password)")
    add_user.add_argument("username")
    add_user.add_argument("--scopes", required=True, help='e.g. "user/*.rs launch/patient openid fhirUser"')
    add_user.add_argument("--fhir-user", help="e.g. Practitioner/123")
    add_user.add_argument(
        "--password-from-env", action="store_true", help="read PAPERCHART_NEW_USER_PASSWORD (for scripts)"
    )
    add_user.set_defaults(handler=_users_add)

    token = commands.add_parser("token", help="get an access token for a backend client from a running server")
    token.add_argument("--client-id", required=True)
    token.add_argument("--key", required=True, help="the client's private JWK file")
    token.add_argument("--scopes", default="system/*.rs")
    token.add_argument("--server", help="server base URL (default: PAPERCHART_PUBLIC_BASE_URL)")
    token.add_argument("--audience", choices=["fhir", "mcp"], default="fhir", help="the API the token is for")
    token.set_defaults(handler=_token)

    keys = commands.add_parser("keys", help="rotate the master key or the token signing key")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("rotate-master", help="new master key; re-wrap all data keys").set_defaults(
        handler=_keys_rotate_master
    )
    key_actions.add_parser("rotate-signing", help="new token signing key").set_defaults(handler=_keys_rotate_signing)

    audit = commands.add_parser("audit", help="check the audit trail")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    audit_actions.add_parser("verify", help="detect edited or deleted audit records").set_defaults(
        handler=_audit_verify
    )
