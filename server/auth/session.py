"""Browser sessions for the review page: the SMART tokens of a signed-in person, kept in cookies.

The review page is a SMART app of this server (public client ``paperchart-review``, code flow
with PKCE). Its access and refresh tokens live in HttpOnly, SameSite=Strict cookies scoped to
``/review``; when the access token expires the refresh token is rotated on the next request.
"""

from __future__ import annotations

from typing import Final

import msgspec

from server.auth.registry import AuthRegistry, RefreshGrant
from server.auth.tokens import TokenService

REVIEW_CLIENT_ID: Final = "paperchart-review"
# read and write asked for separately, so a user who may only read gets a read-only session
REVIEW_SCOPES: Final = ("openid", "fhirUser", "offline_access", "user/*.rs", "user/*.cu")
SESSION_COOKIE: Final = "pc_review"
REFRESH_COOKIE: Final = "pc_review_refresh"
CSRF_COOKIE: Final = "pc_review_csrf"
LOGIN_COOKIE: Final = "pc_review_login"
COOKIE_PATH: Final = "/review"


class SessionTokens(msgspec.Struct, frozen=True, kw_only=True):
    access: str
    refresh: str | None


def refresh_session(
    registry: AuthRegistry, tokens: TokenService, refresh_token: str | None, refresh_lifetime_seconds: float
) -> SessionTokens | None:
    """New tokens for a session whose access token expired; None when the refresh token is spent."""
    if not refresh_token:
        return None
    grant = registry.rotate_refresh_token(refresh_token, REVIEW_CLIENT_ID)
    if grant is None or grant.username is None:
        return None
    user = registry.get_user(grant.username)
    if user is None:
        return None
    access, _ = tokens.issue(
        client_id=REVIEW_CLIENT_ID, subject=user.username, scopes=grant.scopes, fhir_user=user.fhir_user
    )
    refresh = registry.issue_refresh_token(
        RefreshGrant(client_id=REVIEW_CLIENT_ID, username=user.username, scopes=grant.scopes, patient=None),
        refresh_lifetime_seconds,
    )
    return SessionTokens(access=access, refresh=refresh)
