"""Acting as a real SMART backend client in tests: register a key, sign assertions, get tokens.

Tokens come from the server's own token endpoint (a real ES384 client assertion in, a real
signed access token out); nothing is minted behind the server's back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from joserfc.jwk import ECKey
from litestar import Litestar
from litestar.testing import TestClient

from server.auth.assertion import generate_client_key, token_request

ALL_SCOPES = "system/*.cruds"


class BackendClient(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    key: ECKey
    token_endpoint: str


def register_backend(app: Litestar, scopes: str = ALL_SCOPES, name: str = "test backend") -> BackendClient:
    services = app.state.services
    key = generate_client_key()
    client = services.auth.registry.add_client(
        name=name, kind="backend", scopes=scopes.split(), jwks={"keys": [key.as_dict(private=False)]}
    )
    return BackendClient(client_id=client.client_id, key=key, token_endpoint=f"{services.settings.auth_base_url}/token")


def fetch_token(http: Any, backend: BackendClient, scopes: str = ALL_SCOPES) -> str:
    """POST a client_credentials request to /auth/token (``http``: a TestClient or httpx.Client)."""
    response = http.post(
        "/auth/token", data=token_request(backend.key, backend.client_id, backend.token_endpoint, scopes)
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def authorized_client(app: Litestar, scopes: str = ALL_SCOPES) -> Iterator[TestClient[Any]]:
    """A TestClient whose every request carries a token with ``scopes``."""
    with TestClient(app=app) as client:
        backend = register_backend(app, scopes)
        client.headers["Authorization"] = f"Bearer {fetch_token(client, backend, scopes)}"
        yield client


def register_with_cli(env: dict[str, str], key_file: Path, base_url: str, scopes: str = ALL_SCOPES) -> BackendClient:
    """Register a backend client the way an operator does: ``paperchart clients add --generate-key``."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "clients",
            "add",
            "--name",
            "cli test",
            "--scopes",
            scopes,
            "--generate-key",
            str(key_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    client_id = json.loads(result.stdout)["client_id"]
    key = ECKey.import_key(json.loads(key_file.read_text()))
    return BackendClient(client_id=client_id, key=key, token_endpoint=f"{base_url}/auth/token")
