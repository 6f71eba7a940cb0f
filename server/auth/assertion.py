"""Client side of SMART Backend Services: sign a client assertion and trade it for a token.

Used by ``paperchart token`` (the documented way for a developer to get a first token) and by
the tests, which act as a real backend client against a real server.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def generate_client_key(kid: str | None = None) -> ECKey:
    """A new ES384 key pair for a backend client (the private half never leaves the client)."""
    return ECKey.generate_key(
        "P-384", parameters={"kid": kid or secrets.token_urlsafe(8), "alg": "ES384", "use": "sig"}, private=True
    )


def sign_client_assertion(
    key: ECKey | RSAKey, client_id: str, token_endpoint: str, *, lifetime_seconds: int = 240, **extra: Any
) -> str:
    """RFC 7523 client assertion as SMART Backend Services requires (iss = sub = client_id, aud = token URL)."""
    algorithm = "ES384" if isinstance(key, ECKey) else "RS384"
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "exp": now + lifetime_seconds,
        "jti": secrets.token_urlsafe(16),
        **extra,
    }
    header = {"alg": algorithm, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[algorithm])


def token_request(key: ECKey | RSAKey, client_id: str, token_endpoint: str, scopes: str) -> dict[str, str]:
    """The form body of a ``client_credentials`` token request."""
    return {
        "grant_type": "client_credentials",
        "scope": scopes,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": sign_client_assertion(key, client_id, token_endpoint),
    }
