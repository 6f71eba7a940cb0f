"""Access tokens (signed JWTs) and SMART Backend Services client assertions.

Access tokens are ES384 JWTs signed with the newest key in the registry and carry ``iss`` (this
server), ``aud`` (the FHIR base URL), ``sub``, ``client_id``, ``scope``, ``jti``, ``iat``, ``exp`` and,
when there is launch context, ``patient`` and ``fhirUser``. Keys are published at ``jwks_uri``
with their ``kid`` so a rotation does not break tokens already issued.

Tokens from an external identity provider (Keycloak, Epic, Azure AD) are accepted when their
``iss`` is the configured external issuer and their signature checks against its JWKS.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from server.auth.registry import AuthRegistry, Client
from server.errors import ConfigurationError, Unauthorized

ACCESS_TOKEN_ALGORITHM: Final = "ES384"  # noqa: S105 - an algorithm name, not a secret
# SMART Backend Services: RS384 and ES384 are required; nothing weaker, never "none"
ASSERTION_ALGORITHMS: Final = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_SECONDS: Final = 300
CLOCK_SKEW_SECONDS: Final = 60


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str
    subject: str
    client_id: str
    scopes: tuple[str, ...]
    jti: str
    expires_at: int
    patient: str | None = None
    fhir_user: str | None = None
    purpose: str | None = None


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answered by the token endpoint as ``{"error": ...}`` JSON."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def _string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


class ExternalIssuer(msgspec.Struct, frozen=True, kw_only=True):
    """A trusted identity provider: its ``iss`` and the JWKS its tokens are signed with."""

    issuer: str
    jwks_loader: Callable[[], dict[str, Any]]
    audience: str


def jwks_from_file(path: Path) -> Callable[[], dict[str, Any]]:
    def load() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    return load


def jwks_from_url(url: str, timeout: float = 10.0) -> Callable[[], dict[str, Any]]:
    def load() -> dict[str, Any]:
        import httpx

        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    return load


class TokenService:
    """Issues and verifies access tokens; verifies client assertions."""

    def __init__(
        self,
        registry: AuthRegistry,
        *,
        issuer: str,
        audience: str,
        token_endpoint: str,
        lifetime_seconds: int,
        external: ExternalIssuer | None = None,
    ) -> None:
        self._registry = registry
        self.issuer = issuer
        self.audience = audience
        self.token_endpoint = token_endpoint
        self.lifetime_seconds = lifetime_seconds
        self._external = external
        self._external_keys: KeySet | None = None
        self._lock = threading.Lock()
        if not registry.signing_keys():
            registry.rotate_signing_key()  # first start: generate the server's key
        self._load_keys()

    def _load_keys(self) -> None:
        keys = self._registry.signing_keys()
        self._active: ECKey = next(key for key, active in keys if active)
        self._verify_keys = KeySet([key for key, _ in keys])

    def reload_keys(self) -> None:
        """Pick up a key rotated by another process (``paperchart keys rotate-signing``)."""
        with self._lock:
            self._load_keys()

    def jwks(self) -> dict[str, Any]:
        """The public keys, for ``/.well-known/jwks.json`` (never the private parts)."""
        return {"keys": [key.as_dict(private=False) for key in self._verify_keys.keys]}

    # --- access tokens -------------------------------------------------------------------

    def issue(
        self,
        *,
        client_id: str,
        subject: str,
        scopes: Sequence[str],
        patient: str | None = None,
        fhir_user: str | None = None,
        audience: str | None = None,
    ) -> tuple[str, int]:
        now = _now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.audience,
            "sub": subject,
            "client_id": client_id,
            "scope": " ".join(scopes),
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + self.lifetime_seconds,
        }
        if patient is not None:
            claims["patient"] = patient
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
        header = {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self._active.kid, "typ": "at+jwt"}
        token = jwt.encode(header, claims, self._active, algorithms=[ACCESS_TOKEN_ALGORITHM])
        return token, self.lifetime_seconds

    def issue_id_token(self, *, client_id: str, subject: str, fhir_user: str) -> str:
        """OpenID Connect ID token with the SMART ``fhirUser`` claim (audience: the client)."""
        now = _now()
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": client_id,
            "iat": now,
            "exp": now + self.lifetime_seconds,
            "fhirUser": fhir_user,
        }
        header = {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self._active.kid}
        return jwt.encode(header, claims, self._active, algorithms=[ACCESS_TOKEN_ALGORITHM])

    def issue_login_ticket(self, username: str, client_id: str) -> str:
        """Proof, between the login and the consent step, that the password was checked (5 minutes)."""
        now = _now()
        claims = {"iss": self.issuer, "sub": username, "aud": f"login:{client_id}", "iat": now, "exp": now + 300}
        header = {"alg": ACCESS_TOKEN_ALGORITHM, "kid": self._active.kid}
        return jwt.encode(header, claims, self._active, algorithms=[ACCESS_TOKEN_ALGORITHM])

    def check_login_ticket(self, ticket: str, client_id: str) -> str | None:
        """The user name in a valid ticket for this client, else None."""
        try:
            claims = dict(jwt.decode(ticket, self._verify_keys, algorithms=[ACCESS_TOKEN_ALGORITHM]).claims)
        except (JoseError, ValueError):
            return None
        expires = claims.get("exp")
        if claims.get("aud") != f"login:{client_id}" or not isinstance(expires, int) or expires < _now():
            return None
        return _string(claims, "sub")

    def verify(self, token: str, audience: str | None = None) -> AccessClaims:
        """The claims of a valid access token; ``Unauthorized`` (with a reason, never the token) otherwise.

        ``audience``: the resource the token must be meant for (default: the FHIR base URL).
        """
        try:
            unverified = _peek_claims(token)
        except ValueError:
            raise Unauthorized("the access token is not a JWT") from None
        issuer = _string(unverified, "iss")
        if issuer == self.issuer:
            keys, expected, algorithms = self._verify_keys, audience or self.audience, [ACCESS_TOKEN_ALGORITHM]
        elif self._external is not None and issuer == self._external.issuer:
            keys, algorithms = self._external_key_set(), list(ASSERTION_ALGORITHMS)
            expected = audience or self._external.audience
            algorithms += ["RS256", "ES256", "PS256"]
        else:
            raise Unauthorized("the access token was not issued by a trusted issuer")
        try:
            claims = dict(jwt.decode(token, keys, algorithms=algorithms).claims)
        except JoseError:
            raise Unauthorized("the access token signature does not verify") from None
        now = _now()
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires + CLOCK_SKEW_SECONDS < now:
            raise Unauthorized("the access token has expired")
        audiences = claims.get("aud")
        if expected not in (audiences if isinstance(audiences, list) else [audiences]):
            raise Unauthorized("the access token is not meant for this server (audience)")
        jti = _string(claims, "jti") or ""
        if jti and self._registry.is_revoked(jti):
            raise Unauthorized("the access token has been revoked")
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = tuple(scope.split() if isinstance(scope, str) else [s for s in scope if isinstance(s, str)])
        subject = _string(claims, "sub")
        if subject is None:
            raise Unauthorized("the access token has no subject")
        return AccessClaims(
            issuer=issuer,
            subject=subject,
            client_id=_string(claims, "client_id") or _string(claims, "azp") or subject,
            scopes=scopes,
            jti=jti,
            expires_at=expires,
            patient=_string(claims, "patient"),
            fhir_user=_string(claims, "fhirUser"),
            purpose=_string(claims, "purpose_of_use"),
        )

    def _external_key_set(self) -> KeySet:
        external = self._external
        if external is None:
            raise Unauthorized("no external issuer is configured")
        with self._lock:
            if self._external_keys is None:
                try:
                    self._external_keys = KeySet.import_key_set(external.jwks_loader())  # type: ignore[arg-type]
                except Exception:
                    raise Unauthorized("the external issuer's keys are not available") from None
            return self._external_keys

    # --- client assertions (SMART Backend Services, RFC 7523) ------------------------------

    def verify_client_assertion(self, assertion: str) -> Client:
        """The registered client that signed this assertion; ``OAuthError(invalid_client)`` otherwise."""
        try:
            unverified = _peek_claims(assertion)
        except ValueError:
            raise OAuthError("invalid_client", "client_assertion is not a JWT", 401) from None
        client_id = _string(unverified, "iss")
        client = self._registry.get_client(client_id) if client_id else None
        if client is None or client.kind != "backend" or not client.jwks:
            raise OAuthError("invalid_client", "unknown client or client without registered keys", 401)
        try:
            keys = KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
            claims = dict(jwt.decode(assertion, keys, algorithms=list(ASSERTION_ALGORITHMS)).claims)
        except JoseError:
            raise OAuthError("invalid_client", "client_assertion signature does not verify", 401) from None
        now = _now()
        expires = claims.get("exp")
        if claims.get("sub") != client.client_id:
            raise OAuthError("invalid_client", "client_assertion iss and sub must both be the client_id", 401)
        audiences = claims.get("aud")
        if self.token_endpoint not in (audiences if isinstance(audiences, list) else [audiences]):
            raise OAuthError("invalid_client", "client_assertion aud must be the token endpoint URL", 401)
        if not isinstance(expires, int) or expires + CLOCK_SKEW_SECONDS < now:
            raise OAuthError("invalid_client", "client_assertion has expired", 401)
        if expires > now + MAX_ASSERTION_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
            raise OAuthError("invalid_client", "client_assertion exp must be at most 5 minutes ahead", 401)
        jti = _string(claims, "jti")
        if jti is None:
            raise OAuthError("invalid_client", "client_assertion has no jti", 401)
        if not self._registry.use_assertion(client.client_id, jti, float(expires + CLOCK_SKEW_SECONDS)):
            raise OAuthError("invalid_client", "client_assertion jti was already used", 401)
        return client


def _peek_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS before its signature is checked (only to choose the keys)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("payload is not a JSON object")
    return claims


def load_external_issuer(
    issuer: str | None, jwks_url: str | None, jwks_file: Path | None, audience: str
) -> ExternalIssuer | None:
    if issuer is None:
        return None
    if jwks_file is not None:
        loader = jwks_from_file(jwks_file)
    elif jwks_url is not None:
        loader = jwks_from_url(jwks_url)
    else:
        raise ConfigurationError("an external issuer needs PAPERCHART_EXTERNAL_JWKS_URL or _JWKS_FILE")
    return ExternalIssuer(issuer=issuer, jwks_loader=loader, audience=audience)


__all__ = [
    "ASSERTION_ALGORITHMS",
    "AccessClaims",
    "ExternalIssuer",
    "OAuthError",
    "TokenService",
    "load_external_issuer",
]
