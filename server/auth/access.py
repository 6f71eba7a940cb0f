"""The resource server: who is calling (``Caller``) and what each route lets them do (``Access``).

Every route declares an ``Access`` rule in its ``opt``; one app-wide guard authenticates the
bearer token and checks the rule before the handler runs. A route without a rule is refused
(fail closed), so a new route cannot be published unprotected by forgetting a decorator.

Per-resource checks (the patient compartment of ``patient/`` scopes, query-constrained scopes)
happen where the resource is in hand, through ``Caller.permits`` and ``Caller.visible``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from fhir_profiles.compartment import patient_of
from server.auth.scopes import Context, Grant, ScopeError
from server.auth.session import REFRESH_COOKIE, SESSION_COOKIE, refresh_session
from server.auth.tokens import TokenService
from server.errors import Forbidden, LoginRequired, MissingToken, Unauthorized

ACCESS_OPT: Final = "access"
INTERACTION_NAMES: Final = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """What a route needs: one of ``interactions`` on ``resource_type`` (or the type in the path)."""

    resource_type: str | None = None  # None: the route's ``resource_type`` path parameter
    interactions: tuple[str, ...] = ()
    contexts: tuple[Context, ...] | None = None  # e.g. ("system",) for machine-only routes
    scope: str | None = None  # a non-resource scope the route needs as well (e.g. paperchart.reidentify)
    session: bool = False  # the token comes from the review page's session cookie, not a header
    public: bool = False

    def as_opt(self) -> dict[str, Any]:
        return {ACCESS_OPT: self}


PUBLIC: Final = Access(public=True)
# public and not worth an audit record: discovery documents, health, the login page itself
QUIET_PUBLIC: Final = {ACCESS_OPT: PUBLIC, "audit": False}


def needs(
    resource_type: str | None,
    *interactions: str,
    contexts: tuple[Context, ...] | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    """The ``opt`` for a route: ``@get(..., opt=needs("Observation", "r"))``."""
    return Access(resource_type=resource_type, interactions=interactions, contexts=contexts, scope=scope).as_opt()


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated client (and user, when a person launched it) with what its token grants."""

    subject: str
    client_id: str
    scopes: tuple[str, ...]
    grant: Grant
    token_id: str = ""
    fhir_user: str | None = None
    purpose: str | None = None  # purpose of use, when the token carries one (HL7 v3 ActReason code)

    @property
    def patient(self) -> str | None:
        return self.grant.patient

    def require(
        self,
        resource_type: str,
        *interactions: str,
        contexts: Iterable[Context] | None = None,
        identified: bool = False,
    ) -> None:
        if not any(self.grant.may(resource_type, i, contexts=contexts, identified=identified) for i in interactions):
            wanted = " or ".join(INTERACTION_NAMES.get(i, i) for i in interactions)
            kind = "identified " if identified else ""
            raise Forbidden(f"the access token does not allow {kind}{wanted} on {resource_type}")

    def permits(self, resource: Mapping[str, Any], interaction: str = "r") -> bool:
        return self.grant.permits(resource, interaction, patient_of(resource))

    def require_resource(self, resource: Mapping[str, Any], interaction: str = "r") -> None:
        if not self.permits(resource, interaction):
            raise Forbidden(
                f"the access token does not reach this {resource.get('resourceType', 'resource')}"
                " (patient compartment or scope constraint)"
            )

    def require_compartment(self, resource_type: str, patient: str | None, interaction: str = "r") -> None:
        """For types outside the compartment definition (Binary): judged by the owning resource's patient."""
        if not self.grant.permits({"resourceType": resource_type}, interaction, patient):
            raise Forbidden(f"the access token does not reach this {resource_type} (patient compartment)")

    def visible(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """A Bundle with only the entries this caller may read (a Provenance goes with its targets)."""
        kept = [
            e
            for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] == "Provenance" or self.permits(e["resource"])
        ]
        present = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in kept}
        present |= {e.get("fullUrl", "") for e in kept}
        entries = [
            e
            for e in kept
            if e["resource"]["resourceType"] != "Provenance"
            or (
                self.permits(e["resource"])
                and all(t.get("reference") in present for t in e["resource"].get("target", []))
            )
        ]
        return {**bundle, "entry": entries}


def caller_from_token(tokens: TokenService, authorization: str | None, audience: str | None = None) -> Caller:
    """Authenticate an ``Authorization: Bearer`` header (RFC 6750 §2.1) for ``audience`` (default FHIR)."""
    if not authorization:
        raise MissingToken("an access token is required (Authorization: Bearer)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be a Bearer token")
    claims = tokens.verify(token.strip(), audience)
    try:
        grant = Grant.from_scopes(claims.scopes, patient=claims.patient)
    except ScopeError:
        raise Unauthorized("the access token carries a malformed scope") from None
    return Caller(
        subject=claims.subject,
        client_id=claims.client_id,
        scopes=claims.scopes,
        grant=grant,
        token_id=claims.jti,
        fhir_user=claims.fhir_user,
        purpose=claims.purpose,
    )


def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app-wide guard: authenticate, then check the route's ``Access`` rule."""
    access = handler.opt.get(ACCESS_OPT)
    if not isinstance(access, Access):
        raise Forbidden("this endpoint has no access rule")  # fail closed: a route someone forgot
    if access.public:
        return
    if access.session:
        caller = _session_caller(connection)
    else:
        caller = caller_from_token(connection.app.state.services.auth.tokens, connection.headers.get("authorization"))
    connection.state.caller = caller
    resource_type = access.resource_type or str(connection.path_params.get("resource_type", ""))
    caller.require(resource_type, *access.interactions, contexts=access.contexts)
    if access.scope is not None and access.scope not in caller.grant.other:
        raise Forbidden(f"this operation needs the {access.scope} scope")


def _session_caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The signed-in reviewer, renewing an expired access token with the refresh token."""
    services = connection.app.state.services
    token = connection.cookies.get(SESSION_COOKIE)
    try:
        return caller_from_token(services.auth.tokens, f"Bearer {token}" if token else None)
    except Unauthorized:
        renewed = refresh_session(
            services.auth.registry,
            services.auth.tokens,
            connection.cookies.get(REFRESH_COOKIE),
            services.settings.refresh_token_lifetime_seconds,
        )
        if renewed is None:
            raise LoginRequired("sign in to review documents") from None
        connection.state.renewed_session = renewed  # the route's after_request sets the new cookies
        return caller_from_token(services.auth.tokens, f"Bearer {renewed.access}")


async def resolve_caller(request: Request[Any, Any, Any]) -> Caller:
    """The ``caller`` dependency: the identity the guard established for this request."""
    caller: Caller = request.state.caller
    return caller
