"""SMART on FHIR authorization: scopes, tokens, the built-in authorization server and route guard."""

from server.auth.access import PUBLIC, QUIET_PUBLIC, Access, Caller, authorize, caller_from_token, needs, resolve_caller
from server.auth.registry import AuthRegistry, Client, User
from server.auth.scopes import Grant, Permission, ScopeError, parse_scope
from server.auth.tokens import AccessClaims, OAuthError, TokenService

__all__ = [
    "PUBLIC",
    "QUIET_PUBLIC",
    "Access",
    "AccessClaims",
    "AuthRegistry",
    "Caller",
    "Client",
    "Grant",
    "OAuthError",
    "Permission",
    "ScopeError",
    "TokenService",
    "User",
    "authorize",
    "caller_from_token",
    "needs",
    "parse_scope",
    "resolve_caller",
]
